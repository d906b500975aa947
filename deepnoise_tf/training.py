"""One training run in one run folder: data, model, `fit` with resumable checkpoints, export.

The run folder follows `deepnoise_tf.workdir`: `config.json`, `split_index.json`, `metrics.csv`,
TensorBoard logs, `backup/` (Keras `BackupAndRestore`: a rerun resumes after a crash or kill),
`checkpoints/best.weights.h5` (by validation accuracy) and `last.weights.h5`, `export/`, and
`done.json` last. A folder with `done.json` is finished and `run` returns its record untouched.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os

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


def prepare_data(config, workdir: str):
    """Generates the synthetic data set when the config asks for one; fills in its location."""
    if not config.data.synthetic_preset:
        return config
    from deepnoise_tf import synthetic

    data_dir = config.data.data_dir or os.path.join(workdir, "data")
    builder_config = config.data.builder.partition("/")[2] or "native"
    name = synthetic.prepare_tfds(
        data_dir, preset=config.data.synthetic_preset, builder_config=builder_config
    )
    with config.unlocked():
        config.data.data_dir = data_dir
        config.data.builder = name
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


def monitored_metric(config) -> str:
    """The validation accuracy that selects the checkpoint: the teacher's when there is one."""
    return "val_teacher_accuracy" if config.mean_teacher.enabled else "val_student_accuracy"


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


def _datasets(config, index, num_replicas: int, pseudo_labels):
    """(training stream, validation batches or None)."""
    import tensorflow as tf

    from deepnoise_tf import data

    table = data.pseudo_label_table(*pseudo_labels) if pseudo_labels is not None else None
    train_data = data.training_dataset(config, num_replicas=num_replicas, pseudo_labels=table)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train_data = train_data.with_options(options)
    validation = None
    if index.validation_sites:
        validation = data.evaluation_dataset(config).map(
            lambda batch: {key: batch[key] for key in ("image", "mean", "std", "label")}
        )
    return train_data, validation


def _callbacks(config, folder: str, with_validation: bool) -> list:
    """Backup, NaN guard, best checkpoint, CSV and TensorBoard logs, in the order a kill needs.

    A backup of epoch k is written before epoch k's best checkpoint and its metrics.csv row, so the
    csv never repeats an epoch and every logged score that beat the best has its weights on disk.
    `double_checkpoint`: a kill while the backup is being written falls back to the previous one.
    """
    import keras

    metrics_path = os.path.join(folder, workdir_lib.METRICS_FILE)
    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(folder, "backup"), double_checkpoint=True),
        keras.callbacks.TerminateOnNaN(),
    ]
    best_path = os.path.join(folder, "checkpoints", "best.weights.h5")
    if with_validation:
        os.makedirs(os.path.dirname(best_path), exist_ok=True)
        monitor = monitored_metric(config)
        best_so_far = best_score_so_far(metrics_path, monitor) if os.path.exists(best_path) else None
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
    Either start is overridden by `backup/` when the run resumes after an interruption.

    Returns:
      The `done.json` record: epochs, whether a best checkpoint exists, the checkpoint used, plus
      `record`.
    """
    import sys

    from deepnoise_tf import export, factory

    done = workdir_lib.read_done(workdir)
    if done is not None:
        return done
    factory.configure_devices(config.train)
    strategy = factory.strategy_for(config.train)
    folder = output_folder(workdir)
    os.makedirs(folder, exist_ok=True)
    config = prepare_data(config, workdir)
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
    model = _build_model(config, steps, strategy, initial_weights, initial_backbone)
    train_data, validation = _datasets(config, index, replicas, pseudo_labels)
    model.fit(
        train_data,
        epochs=config.train.epochs,
        steps_per_epoch=steps,
        validation_data=validation,
        validation_freq=config.train.eval_every_epochs,
        callbacks=_callbacks(config, folder, validation is not None),
        verbose=1 if sys.stdout.isatty() else 2,
    )
    os.makedirs(os.path.join(folder, "checkpoints"), exist_ok=True)
    model.save_weights(os.path.join(folder, "checkpoints", "last.weights.h5"))
    best_path = os.path.join(folder, "checkpoints", "best.weights.h5")
    if validation is not None and os.path.exists(best_path):
        model.load_weights(best_path)  # paper: checkpoints selected by validation accuracy
    if config.train.export and is_chief():
        export_dir = os.path.join(folder, "export")
        export.export_saved_model(
            [model.inference_network()],
            export_dir,
            image_size=config.data.image_size,
            normalization=config.data.normalization,
        )
        print(f"[deepnoise] exported SavedModel to {export_dir}", flush=True)
    summary = {
        "epochs": config.train.epochs,
        "best_checkpoint": os.path.exists(best_path),
        "checkpoint": str(workdir_lib.checkpoint(folder)),
        **(record or {}),
    }
    return workdir_lib.mark_done(folder, summary)
