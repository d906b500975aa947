"""The embedded default: generates a small synthetic RxRx1 (64 px, 4 cell types) and trains Model 3 on it.

    python -m deepnoise_tf.train --config configs/quickstart.py --workdir runs/quickstart

Needs no download: the data set is written under `<workdir>/data` on the first run (PNGs in the
RxRx1 layout, then `tfds` records). A few minutes on 2 CPU cores; the teacher's validation accuracy
ends far above chance (see README for the measured numbers). Takes no variant.
"""

from deepnoise_tf.config import cpu_scale, default_config, parse_variant


def get_config(variant: str = ""):
    parse_variant(variant, ())  # no variants: `quickstart.py:anything` is an error
    return cpu_scale(default_config())
