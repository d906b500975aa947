"""One training run in one run folder: data, model, `fit` with resumable checkpoints, export.

The run folder follows `deepnoise_tf.workdir`: `config.json`, `split_index.json`, `metrics.csv`,
TensorBoard logs, `backup/` (Keras `BackupAndRestore`: a rerun resumes after a crash or kill),
`checkpoints/best.weights.h5` (by the per-well validation accuracy over treatments,
`deepnoise_tf.selection`) and `last.weights.h5`, `fit_finished.json`, `export/`, and `done.json`
last. A folder with `done.json` is finished and `run` returns its record
untouched; what a rerun of an unfinished folder does (resume, finish, or refuse) is
`deepnoise_tf.resume`'s.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os

from deepnoise_tf import resume
from deepnoise_tf import workdir as workdir_lib


def is_chief() -> bool:
    """Whether this process writes the run folder (worker 0, or the chief, of `TF_CONFIG`)."""
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    kind = task.get("type", "worker")
    return kind == "chief" or (kind == "worker" and task.get("index", 0) == 0)


def output_folder(workdir: str) -> str:
    """The chief writes `workdir`; other workers write `workdir/worker_<i>/`."""
    if is_chief():
        return workdir
    return os.path.join(workdir, f"worker_{json.loads(os.environ['TF_CONFIG'])['task']['index']}")


def resolve_data(config, workdir: str):
    """Fills in where a synthetic data set will be (`data_dir`, `builder`) without writing anything."""
    if not config.data.synthetic_preset:
        return config
    with config.unlocked():
        config.data.data_dir = config.data.data_dir or os.path.join(workdir, "data")
        config.data.builder = "rxrx1/" + (config.data.builder.partition("/")[2] or "native")
    return config


def prepare_data(config, workdir: str):
    """Generates the synthetic data set when the config asks for one; fills in its location."""
    config = resolve_data(config, workdir)
    if config.data.synthetic_preset:
        from deepnoise_tf import synthetic

        synthetic.prepare_tfds(
            config.data.data_dir,
            preset=config.data.synthetic_preset,
            builder_config=config.data.builder.partition("/")[2],
        )
    return config


def split_index(config, folder: str):
    """Counts of wells per role, cached in the run folder (a pass over identifiers only)."""
    from deepnoise_tf import data

    path = os.path.join(folder, "split_index.json")
    key = {
        "builder": config.data.builder,
        "data_dir": config.data.data_dir,
        "val": list(config.data.val_experiments),
        "cell_types": list(config.data.cell_types),
        "test_controls": bool(config.data.test_controls),
    }
    if os.path.exists(path):
        cached = workdir_lib.read_json(path)
        if cached.get("key") == key:
            fields = {k: tuple(v) if isinstance(v, list) else v for k, v in cached["index"].items()}
            return data.SplitIndex(**fields)
    index = data.index_splits(config.data)
    workdir_lib.write_json(path, {"key": key, "index": dataclasses.asdict(index)})
    return index


def steps_per_epoch(config, index, num_replicas: int) -> int:
    """One pass over the labelled wells (one site each) unless the config fixes it."""
    from deepnoise_tf import data

    if config.train.steps_per_epoch:
        return int(config.train.steps_per_epoch)
    share = config.mean_teacher.labelled_share if config.mean_teacher.enabled else 1.0
    per_batch = config.train.batch_size
    if share < 1:
        per_batch = data.labelled_batch_size(config.train.batch_size, share, num_replicas)
    return max(1, math.ceil(index.labelled_wells / per_batch))


def best_score_so_far(metrics_path: str, monitor: str) -> float | None:
    """The best `monitor` value logged before an interruption, so a resumed run keeps the old best."""
    if not os.path.exists(metrics_path):
        return None
    with open(metrics_path, newline="") as file:
        values = [row.get(monitor) for row in csv.DictReader(file)]
    scores = [float(value) for value in values if value not in (None, "")]
    scores = [score for score in scores if math.isfinite(score)]
    return max(scores) if scores else None


def _build_model(config, steps: int, strategy, initial_weights, initial_backbone):
    """The training wrapper inside the strategy's scope, started from the given weights."""
    from deepnoise_tf import factory

    if initial_weights and initial_backbone:
        raise ValueError("pass initial_weights or initial_backbone, not both")
    with strategy.scope():
        model = factory.build_model(config, steps)
        if initial_weights:
            model.load_weights(initial_weights)
        if initial_backbone:
            model.student_backbone.load_weights(initial_backbone)
            if model.has_teacher:
                model.copy_student_to_teacher()  # the teacher head too: both start from one fresh head
    return model


def _training_data(config, num_replicas: int, pseudo_labels, skip_batches: int):
    """The training stream, started `skip_batches` in (validation: `selection.Validation`)."""
    import tensorflow as tf

    from deepnoise_tf import data

    table = data.pseudo_label_table(*pseudo_labels) if pseudo_labels is not None else None
    train_data = data.training_dataset(
        config, num_replicas=num_replicas, pseudo_labels=table, skip_batches=skip_batches
    )
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return train_data.with_options(options)


def _callbacks(config, folder: str, with_validation: bool) -> list:
    """Validation score, fit-finished marker, backup, NaN guard, best checkpoint, CSV and
    TensorBoard logs, in the order a kill needs; then the step's phase (mean teacher).

    The validation scores (`selection.Validation`) are computed first, so the backup of an
    epoch exists only once its scores are in the logs. The marker's `on_train_end` runs before the
    backup's deletes `backup/`. A backup of epoch k is written before epoch k's best checkpoint and
    its metrics.csv row, so the csv never repeats an epoch and every logged score that beat the best
    has its weights on disk. `double_checkpoint`: a kill while the backup is being written falls
    back to the previous one.
    """
    import keras

    from deepnoise_tf import selection, step_phase

    metrics_path = os.path.join(folder, workdir_lib.METRICS_FILE)
    callbacks = [selection.Validation(config)] if with_validation else []
    callbacks += [
        resume.fit_finished_callback(folder, config.train.epochs),
        keras.callbacks.BackupAndRestore(os.path.join(folder, "backup"), double_checkpoint=True),
        keras.callbacks.TerminateOnNaN(),
    ]
    best_path = os.path.join(folder, "checkpoints", "best.weights.h5")
    if with_validation:
        os.makedirs(os.path.dirname(best_path), exist_ok=True)
        # paper: checkpoints selected by validation accuracy; here per well over treatments
        monitor = selection.monitored_metric(config)
        best_so_far = (
            best_score_so_far(metrics_path, monitor) if os.path.exists(best_path) else None
        )
        callbacks.append(
            keras.callbacks.ModelCheckpoint(
                best_path,
                monitor=monitor,
                mode="max",
                save_best_only=True,
                save_weights_only=True,
                initial_value_threshold=best_so_far,
            )
        )
    callbacks += [
        keras.callbacks.CSVLogger(metrics_path, append=True),
        keras.callbacks.TensorBoard(os.path.join(folder, "tensorboard"), write_graph=False),
    ]
    if config.mean_teacher.enabled:  # acts at epoch begin, after the backup restored the step
        callbacks.append(step_phase.StepPhase())
    return callbacks


def run(
    config,
    workdir: str,
    *,
    pseudo_labels=None,
    initial_weights: str | None = None,
    initial_backbone: str | None = None,
    record: dict | None = None,
) -> dict:
    """Trains `config` in `workdir` (resuming, or returning at once when it is finished).

    Args:
      pseudo_labels: optional (id_codes, labels) for the unlabelled wells (paper, "Pseudo labels").
      initial_weights: a `.weights.h5` of the whole wrapper to start from.
      initial_backbone: a `.weights.h5` of one backbone (a pretrained inference backbone), loaded
        into the student and the teacher while the heads keep their fresh initialization: the start
        of per-cell-type fine-tuning (paper, "Fine-tuning").
      record: extra fields for the folder's `done.json`.
    Either start is overridden by `backup/` when the run resumes after an interruption. A rerun
    with another config, or one that finds a damaged file, raises before writing anything
    (`deepnoise_tf.resume`); a rerun after `fit` ended only finishes the run.

    Returns:
      The `done.json` record: epochs, whether a best checkpoint exists, the checkpoint used, plus
      `record`.
    """
    from deepnoise_tf import data, factory

    done = workdir_lib.read_done(workdir)
    if done is not None:
        return done
    folder = output_folder(workdir)
    config = resolve_data(config, workdir)
    resume.refuse_config_drift(folder, config)
    state = resume.inspect(folder)
    factory.configure_devices(config.train)
    strategy = factory.strategy_for(config.train)
    os.makedirs(folder, exist_ok=True)
    config = prepare_data(config, workdir)
    data.require_built(config.data.data_dir, config.data.builder)
    workdir_lib.write_config(folder, config)
    index = split_index(config, folder)
    replicas = strategy.num_replicas_in_sync
    steps = steps_per_epoch(config, index, replicas)
    print(
        f"[deepnoise] {replicas} replica(s) ({type(strategy).__name__}); "
        f"{index.labelled_wells} labelled wells, {index.unlabelled_wells} unlabelled, "
        f"{index.validation_sites} validation sites; {steps} steps/epoch x {config.train.epochs} epochs",
        flush=True,
    )
    if state.fit_finished:
        print(f"[deepnoise] training had finished in {folder}; exporting only", flush=True)
        model = _build_model(config, steps, strategy, None, None)
        remedy = f"delete {folder} to train again"
        resume.load_weights(model, os.path.join(folder, resume.LAST_WEIGHTS), remedy)
    else:
        model = _build_model(config, steps, strategy, initial_weights, initial_backbone)
        _fit(config, folder, model, (index, replicas, steps), pseudo_labels, state.epoch)
    return _finish(config, folder, model, bool(index.validation_sites), record)


def _fit(config, folder: str, model, layout, pseudo_labels, resumed_epoch: int) -> None:
    """`model.fit` from `resumed_epoch` (what `backup/` holds), on the stream from that epoch on.

    The stream is a function of `train.seed` alone, so skipping the batches of the finished epochs
    gives a resumed run the batches an uninterrupted one trains on: the two log the same losses.
    """
    import sys

    index, replicas, steps = layout
    if resumed_epoch:
        print(f"[deepnoise] resuming after epoch {resumed_epoch} (from backup/)", flush=True)
    train_data = _training_data(config, replicas, pseudo_labels, resumed_epoch * steps)
    model.fit(
        train_data,
        epochs=config.train.epochs,
        steps_per_epoch=steps,
        # no validation_data: `selection.Validation` scores the validation sites in one pass
        callbacks=_callbacks(config, folder, bool(index.validation_sites)),
        shuffle=False,  # the stream is shuffled by `data.training_dataset`; Keras would warn and ignore it
        verbose=1 if sys.stdout.isatty() else 2,
    )


def _finish(config, folder: str, model, with_validation: bool, record: dict | None) -> dict:
    """Best weights, export, `done.json`: what follows `fit`, safe to redo after a failure here."""
    import shutil

    from deepnoise_tf import export

    best_path = os.path.join(folder, resume.BEST_WEIGHTS)
    if with_validation and os.path.exists(best_path):
        # paper: checkpoints selected by validation accuracy
        remedy = f"delete it to export {resume.LAST_WEIGHTS} instead"
        resume.load_weights(model, best_path, remedy)
    if config.train.export and is_chief():
        export_dir = os.path.join(folder, "export")
        export.export_saved_model(
            [model.inference_network()],
            export_dir,
            image_size=config.data.image_size,
            normalization=config.data.normalization,
        )
        print(f"[deepnoise] exported SavedModel to {export_dir}", flush=True)
    shutil.rmtree(os.path.join(folder, resume.BACKUP_DIR), ignore_errors=True)  # killed mid-cleanup
    summary = {
        "epochs": config.train.epochs,
        "best_checkpoint": os.path.exists(best_path),
        "checkpoint": str(workdir_lib.checkpoint(folder)),
        **(record or {}),
    }
    return workdir_lib.mark_done(folder, summary)
