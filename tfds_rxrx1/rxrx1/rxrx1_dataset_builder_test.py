"""TFDS's own builder checks (no plain open/os in the builder, keys, splits, reload) on dummy_data/.

dummy_data/ is synthetic RxRx1 in the release layout, made by the repository's synthetic generator:
    synthetic.write_dataset(DIR, layout="release", preset="tiny", seed=0,
                            cell_types=("RPE",), sirnas_per_group=2, positive_controls=1)
(1 train + 1 test experiment, 4 plates of 4 wells, 2 sites: 32 sites per split, 16x16 pixels.)
"""

import tensorflow_datasets as tfds

from tfds_rxrx1.rxrx1 import rxrx1_dataset_builder


class Rxrx1Test(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = rxrx1_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["native", "native_zlib"]
    SPLITS = {"train": 32, "test": 32}
    SKIP_CHECKSUMS = True


if __name__ == "__main__":
    tfds.testing.test_main()
