"""Model 1 of the paper (Fig. 3A/B): Xception + softmax (dropout 0.5), supervised only.

The normalization ablation of Fig. 3A is this config with `--config.data.normalization=` cell_type,
experiment or plate (default; paper: 51.5 / 62.9 / 74.6% top-1 on RxRx1):
    python -m deepnoise_tf.train --config configs/model1_softmax.py \
        --config.data.data_dir=/path/to/tensorflow_datasets --workdir runs/model1
Variants (combine with a comma, e.g. `:cpu,wide`): `:wide` (Xception-Wide), `:cpu` (synthetic data,
64 px, narrow, a few minutes on 2 cores).
"""

from deepnoise_tf.config import cpu_scale, default_config, parse_variant


def get_config(variant: str = ""):
    arg = parse_variant(variant, ("cpu", "wide"))
    config = default_config()
    config.model.head = "softmax"
    config.mean_teacher.enabled = False
    config.mean_teacher.labelled_share = 1.0
    if arg.wide:
        config.model.backbone = "xception_wide"
    if arg.cpu:
        cpu_scale(config)
    return config
