"""Model 3 of the paper (Fig. 3B): Xception + ArcFace (s=30, m=0.1) + mean teacher, plate normalization.

Full scale (4 GPUs, batch 64, 160 epochs, 512x512; paper: 90.1% top-1 on RxRx1):
    python -m deepnoise_tf.train --config configs/model3_mean_teacher.py \
        --config.data.data_dir=/path/to/tensorflow_datasets --workdir runs/model3
Variants (combine with a comma, e.g. `:cpu,wide`; `:cpu_wide` is the same): `:wide` (Xception-Wide),
`:cpu` (synthetic data, 64 px, width 1/8, a few minutes on 2 cores).
"""

from deepnoise_tf.config import cpu_scale, default_config, parse_variant


def get_config(variant: str = ""):
    arg = parse_variant(variant, ("cpu", "wide"))
    config = default_config()
    if arg.wide:
        config.model.backbone = "xception_wide"
    if arg.cpu:
        cpu_scale(config)
    return config
