"""The `pipeline` block of `configs/deepnoise.py`: validation, each model's training config, and
which fields a finished run folder may change (paper, Algorithm 1)."""

from __future__ import annotations

import copy
import hashlib
import json
import pathlib

from deepnoise_tf import config as config_lib
from deepnoise_tf import config_renames, constants, postprocess
from deepnoise_tf import workdir as workdir_lib

CONFIG_FILE = "pipeline_config.json"
# Fields a rerun may change on a finished workdir: they add stages without invalidating done ones
# (fine-tuning settings name their own folder, `finetune_settings_key`).
EXTENDABLE_FIELDS = (
    "pipeline.pseudo_label_rounds",
    "pipeline.finetune",
    "pipeline.finetune_cell_types",
    "pipeline.eval_batch_size",
    "finetune.",
)


def validate(config):
    """Checks the `pipeline` block (and what it needs of the rest); raises ValueError naming the field."""
    from deepnoise_tf import models  # keras: imported only when a pipeline config is checked

    config_lib.validate(config)
    if "pipeline" not in config:
        raise ValueError("the config has no `pipeline` block: use configs/deepnoise.py")
    pipeline = config.pipeline
    backbones = tuple(pipeline.backbones)
    if not backbones or len(set(backbones)) != len(backbones):
        raise ValueError(
            f"config.pipeline.backbones={list(backbones)} must name distinct backbones"
        )
    for backbone in backbones:
        if backbone not in models.backbone_names():
            raise ValueError(
                f"config.pipeline.backbones: {backbone!r} is not one of {list(models.backbone_names())}"
            )
    if pipeline.postprocess not in postprocess.METHODS:
        raise ValueError(
            f"config.pipeline.postprocess={pipeline.postprocess!r} is not one of {list(postprocess.METHODS)}"
        )
    for field in ("pseudo_label_rounds", "train_epochs", "retrain_epochs"):
        if int(pipeline[field]) < 0:
            raise ValueError(f"config.pipeline.{field}={pipeline[field]} must be >= 0")
    if not 0.0 < pipeline.pseudo_label_bank_weight <= 1.0:
        raise ValueError(
            f"config.pipeline.pseudo_label_bank_weight={pipeline.pseudo_label_bank_weight} must be in (0, 1]"
        )
    if pipeline.pseudo_label_rounds and not config.mean_teacher.enabled:
        raise ValueError(
            "pseudo-label rounds need config.mean_teacher.enabled (the pseudo-label loss is the student's)"
        )
    if not config.data.val_experiments:
        raise ValueError(
            "config.data.val_experiments is empty: rounds are scored and selected on them"
        )
    for cell_type in pipeline.finetune_cell_types:
        if cell_type not in constants.CELL_TYPES:
            raise ValueError(
                f"config.pipeline.finetune_cell_types: {cell_type!r} is not one of {list(constants.CELL_TYPES)}"
            )
    return config


def member_config(config, backbone: str, round_index: int):
    """The `training.run` config of one model in one round: the shared config minus `pipeline`.

    Round 0 trains `pipeline.train_epochs` (0 = `train.epochs`). Later rounds start from the previous
    round's checkpoint, whose optimizer state (step counter included) comes with it, so the
    schedules continue; they train `pipeline.retrain_epochs` at the constant
    `pipeline.retrain_learning_rate` (0 = the continued `train` schedule). Every round keeps round
    0's schedule length (`train.schedule_epochs`, else round 0's epochs): the schedules follow
    round 0's length (`--config.pipeline.train_epochs=96` moves the learning-rate steps with it,
    unless `train.schedule_epochs` is set, as the paper-scale config sets it to its 160 epochs in
    all) and sit at the same epochs whatever a later round's own `train.epochs`.
    """
    from deepnoise_tf import models  # keras, as validate (which imports it anyway)

    pipeline = config.pipeline
    result = copy.deepcopy(config)
    with result.unlocked():
        del result["pipeline"]
        result.model.backbone = backbone
        if backbone not in models.IMAGENET_BACKBONES:
            result.model.imagenet_weights = ""  # Xception-Wide trains from scratch (method.md §4)
        first_round_epochs = int(pipeline.train_epochs or config.train.epochs)
        result.train.schedule_epochs = int(config.train.schedule_epochs or first_round_epochs)
        if round_index == 0:
            result.train.epochs = first_round_epochs
        else:
            result.train.epochs = int(pipeline.retrain_epochs or config.train.epochs)
            if pipeline.retrain_learning_rate:
                result.train.learning_rates = (float(pipeline.retrain_learning_rate),)
                result.train.lr_boundary_fractions = ()
    return config_lib.validate(result)


def finetune_settings_key(config) -> str:
    """8 hex digits of the fine-tuning settings (and of its pseudo labels' rounds): other settings
    fine-tune into another folder."""
    settings = {
        "finetune": config.finetune.to_dict(),
        "cell_types": list(config.pipeline.finetune_cell_types),
        # Pseudo labels from every round (stages.finetune_stage): more rounds, other labels.
        "pseudo_labels_after_round": (
            int(config.pipeline.pseudo_label_rounds) if config.mean_teacher.enabled else None
        ),
    }
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:8]


def check_run_config(config, workdir) -> None:
    """Refuses to continue a workdir made with another config (finished stages would be stale);
    records the config otherwise. Only `EXTENDABLE_FIELDS` may change between runs."""
    stored = pathlib.Path(workdir) / CONFIG_FILE
    renamed = (
        config_renames.renamed_fields_in(workdir_lib.read_json(stored)) if stored.is_file() else {}
    )
    if renamed:
        message = config_renames.renamed_field_message(next(iter(renamed)))
        raise ValueError(f"{stored} was written before a rename ({message}); use a new --workdir")
    drift = workdir_lib.config_drift(workdir, config, name=CONFIG_FILE, allowed=EXTENDABLE_FIELDS)
    if drift:
        raise ValueError(
            f"{workdir} was made with another config (differs in {drift}); use a new --workdir "
            f"(only {list(EXTENDABLE_FIELDS)} may change between runs)"
        )
    workdir_lib.write_config(workdir, config, name=CONFIG_FILE)
