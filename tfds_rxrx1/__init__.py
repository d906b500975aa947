"""TFDS dataset builders of this project: `import tfds_rxrx1` registers `rxrx1`."""

from tfds_rxrx1.rxrx1 import rxrx1_dataset_builder  # noqa: F401  (registers the builder)
