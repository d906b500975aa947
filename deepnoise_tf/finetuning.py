"""Per-cell-type fine-tuning (paper, "Fine-tuning"; DeepNoise's code), as a library.

For each cell type, start from a pretrained run's inference backbone (the teacher when mean teacher
is on, else the student) with a *fresh* head, and train on that cell type's wells only with SGD
under cosine annealing with warm restarts (`config.finetune`: `cycles` cycles of
`cycle_epochs * cycle_scale[cell type]` epochs, then `final_epochs` at `final_learning_rate`).
Everything else is `training.run`: each cell type's folder `OUT/<cell type>/` is a training folder,
finished when its `done.json` exists. Given pseudo labels (the pipeline's, `stages.finetune_stage`),
the cell type's unlabelled test wells carry them as in a pseudo-label round (paper Fig. 5B: the
cell type's training data and pseudo-labelled test data).
"""

from __future__ import annotations

import copy
import math
import os

from deepnoise_tf import constants, training
from deepnoise_tf import workdir as workdir_lib

BACKBONE_FILE = "pretrained_backbone.weights.h5"
# Fields that fix the shapes of the backbone's weights: they must match the pretrained run.
_BACKBONE_FIELDS = ("backbone", "width", "stem")


def cell_type_of(experiment: str) -> str:
    """RxRx1 experiments are named `<cell type>-<number>`, e.g. HUVEC-16."""
    cell_type = experiment.split("-")[0]
    if cell_type not in constants.CELL_TYPES:
        raise ValueError(
            f"experiment {experiment!r} does not start with one of {list(constants.CELL_TYPES)}"
        )
    return cell_type


def finetune_epochs(finetune_config, cell_type: str) -> int:
    """cycles x cycle_epochs x r + final_epochs, rounded up to whole epochs (paper, "Fine-tuning")."""
    scale = float(dict(finetune_config.cycle_scale)[cell_type])
    return math.ceil(
        finetune_config.cycles * finetune_config.cycle_epochs * scale + finetune_config.final_epochs
    )


def resolve_cell_types(config, cell_types=None) -> tuple[str, ...]:
    """The cell types to fine-tune: the argument, else config.data.cell_types, else all four."""
    if isinstance(cell_types, str):
        cell_types = [name for name in cell_types.split(",") if name]
    chosen = tuple(cell_types or config.data.cell_types or constants.CELL_TYPES)
    scales = dict(config.finetune.cycle_scale)
    for cell_type in chosen:
        if cell_type not in constants.CELL_TYPES:
            raise ValueError(f"cell type {cell_type!r} is not one of {list(constants.CELL_TYPES)}")
        if cell_type not in scales:
            raise ValueError(
                f"config.finetune.cycle_scale has no entry for {cell_type!r}: {scales}"
            )
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"cell types listed twice: {list(chosen)}")
    return chosen


def _like(current, values):
    """A list where a config read back from JSON holds lists (ConfigDict refuses a type change)."""
    return list(values) if isinstance(current, list) else tuple(values)


def cell_type_config(config, cell_type: str):
    """The training config of one cell type's fine-tuning: its data only, SGD + cosine restarts.

    It keeps the pretraining's schedule length (`train.schedule_epochs`), so the consistency ramp
    and the EMA steps last as many epochs as in pretraining, whatever the fine-tuning's epochs.
    """
    from deepnoise_tf import schedules

    result = copy.deepcopy(config)
    # Validation experiments of other cell types hold none of this cell type's wells.
    validation = [
        experiment
        for experiment in config.data.val_experiments
        if cell_type_of(experiment) == cell_type
    ]
    with result.unlocked():
        result.data.cell_types = _like(config.data.cell_types, [cell_type])
        result.data.val_experiments = _like(config.data.val_experiments, validation)
        result.train.optimizer = "sgd_cosine"
        result.train.schedule_epochs = schedules.run_schedule(config).length
        result.train.epochs = finetune_epochs(config.finetune, cell_type)
        result.train.export = True  # run() returns the exports
        result.model.imagenet_weights = ""  # the backbone comes from the pretrained run
        # The teacher is pretrained: no labelled-only phase (that is for a teacher trained afresh).
        result.mean_teacher.consistency_start_fraction = 0.0
    return result


def check_compatible(config, pretrained) -> None:
    """Raises ValueError when the pretrained backbone cannot be loaded into `config`'s backbone."""
    different = [
        f"model.{field}: pretrained {pretrained.model[field]!r}, fine-tuning {config.model[field]!r}"
        for field in _BACKBONE_FIELDS
        if pretrained.model[field] != config.model[field]
    ]
    if different:
        raise ValueError(
            "the pretrained run's backbone does not fit this config: " + "; ".join(different)
        )


def save_pretrained_backbone(init_workdir: str, path: str) -> str:
    """Writes the pretrained run's inference backbone (teacher if any, else student) to `path`;
    returns the checkpoint it came from."""
    from deepnoise_tf import factory

    _, (backbone, _) = factory.load_inference_network(init_workdir)
    backbone.save_weights(path)
    return str(workdir_lib.checkpoint(init_workdir))


def run(
    config, workdir: str, *, init_workdir: str, cell_types=None, pseudo_labels=None
) -> dict[str, str]:
    """Fine-tunes one model per cell type under `workdir`; returns {cell type: its SavedModel path}.

    Args:
      config: the fine-tuning config (its `finetune` block sets the schedule; data and model as in
        pretraining). An empty `data.data_dir` means the pretrained run's data.
      workdir: gets one train.py workdir per cell type, `<workdir>/<cell type>/`.
      init_workdir: the pretrained train.py workdir.
      cell_types: names or "A,B"; default config.data.cell_types, else all four.
      pseudo_labels: optional (id_codes, labels) of unlabelled test wells, as `training.run` takes
        them (wells of other cell types are never read).
    """
    from deepnoise_tf import factory

    factory.configure_devices(config.train)  # before loading the pretrained run starts TensorFlow
    workdir = os.path.abspath(workdir)
    init_workdir = os.path.abspath(init_workdir)
    pretrained = workdir_lib.read_config(init_workdir)
    check_compatible(config, pretrained)
    chosen = resolve_cell_types(config, cell_types)
    config = copy.deepcopy(config)
    if not config.data.data_dir and pretrained.data.data_dir:
        with config.unlocked():  # fine-tune on the data the model was pretrained on
            config.data.data_dir = pretrained.data.data_dir
    os.makedirs(workdir, exist_ok=True)

    exports = {}
    backbone_path = os.path.join(workdir, BACKBONE_FILE)
    checkpoint = None
    for number, cell_type in enumerate(chosen, 1):
        cell_dir = os.path.join(workdir, cell_type)
        exports[cell_type] = os.path.join(cell_dir, "export")
        if workdir_lib.read_done(cell_dir) is not None:
            print(
                f"[deepnoise] fine-tuning {number}/{len(chosen)} {cell_type}: done before, skipped",
                flush=True,
            )
            continue
        if checkpoint is None:  # once per call, and only when something is left to train
            checkpoint = save_pretrained_backbone(init_workdir, backbone_path)
        cell_config = cell_type_config(config, cell_type)
        resuming = os.path.isdir(os.path.join(cell_dir, "backup"))
        print(
            f"[deepnoise] fine-tuning {number}/{len(chosen)} {cell_type}: {cell_config.train.epochs} epochs, "
            f"backbone from {checkpoint}, fresh head"
            + (" (resuming from backup/)" if resuming else ""),
            flush=True,
        )
        record = {
            "cell_type": cell_type,
            "init_workdir": init_workdir,
            "init_checkpoint": checkpoint,
            "pseudo_label_wells": 0 if pseudo_labels is None else len(pseudo_labels[0]),
        }
        training.run(
            cell_config,
            cell_dir,
            initial_backbone=backbone_path,
            record=record,
            pseudo_labels=pseudo_labels,
        )
        print(f"[deepnoise] fine-tuned {cell_type}: {exports[cell_type]}", flush=True)
    return exports
