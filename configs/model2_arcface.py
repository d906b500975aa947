"""Model 2 of the paper (Fig. 3B): Xception + ArcFace, supervised only, plate normalization.

Full scale (paper: 85.5% top-1 on RxRx1):
    python -m deepnoise_tf.train --config configs/model2_arcface.py \
        --config.data.data_dir=/path/to/tensorflow_datasets --workdir runs/model2
Variants (combine with a comma, e.g. `:cpu,wide`): `:wide` (Xception-Wide), `:cpu` (synthetic data,
64 px, narrow, a few minutes on 2 cores).
"""

from deepnoise_tf.config import cpu_scale, default_config, parse_variant


def get_config(variant: str = ""):
    arg = parse_variant(variant, ("cpu", "wide"))
    config = default_config()
    config.mean_teacher.enabled = False
    config.mean_teacher.labelled_share = 1.0
    if arg.wide:
        config.model.backbone = "xception_wide"
    if arg.cpu:
        cpu_scale(config)
    return config
