"""`python -m deepnoise_tf.train --config configs/<name>.py[:variant] --workdir DIR [--config.a.b=v]`.

Trains one DeepNoise model. The workdir receives `config.json`, `split_index.json`, checkpoints
(`backup/` for resuming after a crash or kill, `checkpoints/best.weights.h5` by validation accuracy),
TensorBoard logs, `metrics.csv` (one row per epoch) and, at the end, the SavedModel `export/`.
Rerunning the same command resumes from the last finished epoch.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys

from deepnoise_tf import config as config_lib

DONE_FILE = "train_done.json"  # written last: the run finished, checkpoints and export are complete


def config_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The `--config FILE[:variant]` and `--workdir DIR` arguments shared by the training CLIs."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help="configs/<name>.py[:variant]")
    parser.add_argument("--workdir", required=True, help="where checkpoints, logs and the export go")
    return parser


def parse_config_arguments(parser: argparse.ArgumentParser, argv):
    """(parsed arguments, validated config): the parser's own arguments plus `--config.path=value`s."""
    known, rest = parser.parse_known_args(argv)
    overrides = {}
    for argument in rest:
        if not argument.startswith("--config.") or "=" not in argument:
            parser.error(f"unrecognized argument {argument!r} (overrides look like --config.train.epochs=3)")
        path, _, value = argument[len("--config.") :].partition("=")
        overrides[path] = value
    config = config_lib.load(known.config)
    config = config_lib.validate(config_lib.apply_overrides(config, overrides))
    return known, config


def parse_command_line(argv):
    """`--config FILE[:variant]`, `--workdir DIR` and any number of `--config.path=value`."""
    parser = config_parser("python -m deepnoise_tf.train", __doc__.split("\n")[0])
    known, config = parse_config_arguments(parser, argv)
    return config, os.path.abspath(known.workdir)


def _is_chief() -> bool:
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    return task.get("type", "worker") in ("chief",) or (task.get("type", "worker") == "worker" and task.get("index", 0) == 0)


def prepare_data(config, workdir: str):
    """Generates the synthetic data set when the config asks for one; fills in its location."""
    if not config.data.synthetic_preset:
        return config
    from deepnoise_tf import synthetic

    data_dir = config.data.data_dir or os.path.join(workdir, "data")
    builder_config = config.data.builder.partition("/")[2] or "native"
    name = synthetic.prepare_tfds(data_dir, preset=config.data.synthetic_preset, builder_config=builder_config)
    with config.unlocked():
        config.data.data_dir = data_dir
        config.data.builder = name
    return config


def split_index(config, workdir: str):
    """Counts of wells per role, cached in the workdir (a pass over identifiers only)."""
    from deepnoise_tf import data

    path = os.path.join(workdir, "split_index.json")
    key = {"builder": config.data.builder, "data_dir": config.data.data_dir,
           "val": list(config.data.val_experiments), "cell_types": list(config.data.cell_types)}
    if os.path.exists(path):
        with open(path) as file:
            cached = json.load(file)
        if cached.get("key") == key:
            return data.SplitIndex(**{k: tuple(v) if isinstance(v, list) else v for k, v in cached["index"].items()})
    index = data.index_splits(config.data)
    with open(path, "w") as file:
        json.dump({"key": key, "index": dataclasses.asdict(index)}, file, indent=2)
    return index


def steps_per_epoch(config, index, num_replicas: int) -> int:
    """One pass over the labelled wells (one site each) unless the config fixes it."""
    from deepnoise_tf import data

    if config.train.steps_per_epoch:
        return int(config.train.steps_per_epoch)
    share = config.mean_teacher.labelled_share if config.mean_teacher.enabled else 1.0
    per_batch = data.labelled_batch_size(config.train.batch_size, share, num_replicas) if share < 1 else config.train.batch_size
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


def train(
    config,
    workdir: str,
    *,
    pseudo_labels=None,
    initial_weights: str | None = None,
    initial_backbone: str | None = None,
):
    """Runs training for `config` in `workdir`; returns the trained wrapper and the fit history.

    Args:
      pseudo_labels: optional (id_codes, labels) for the unlabelled wells (SPEC 5).
      initial_weights: a `.weights.h5` of the whole wrapper to start from.
      initial_backbone: a `.weights.h5` of one backbone (the pretrained inference backbone), loaded
        into the student and the teacher while the heads keep their fresh initialization: the start
        of per-cell-type fine-tuning (SPEC 7).
    Either start is overridden by `backup/` when the run resumes after an interruption.
    """
    import keras
    import tensorflow as tf

    from deepnoise_tf import data, export, factory

    factory.configure_devices(config.train)
    strategy = factory.strategy_for(config.train)
    chief = _is_chief()
    outdir = workdir if chief else os.path.join(workdir, f"worker_{json.loads(os.environ['TF_CONFIG'])['task']['index']}")
    os.makedirs(outdir, exist_ok=True)
    config = prepare_data(config, workdir)
    with open(os.path.join(outdir, "config.json"), "w") as file:
        file.write(config_lib.to_json(config))

    index = split_index(config, outdir)
    steps = steps_per_epoch(config, index, strategy.num_replicas_in_sync)
    print(
        f"[deepnoise] {strategy.num_replicas_in_sync} replica(s) ({type(strategy).__name__}); "
        f"{index.labelled_wells} labelled wells, {index.unlabelled_wells} unlabelled, "
        f"{index.validation_sites} validation sites; {steps} steps/epoch x {config.train.epochs} epochs",
        flush=True,
    )
    with strategy.scope():
        model = factory.build_model(config, steps)
        if initial_weights and initial_backbone:
            raise ValueError("pass initial_weights or initial_backbone, not both")
        if initial_weights:
            model.load_weights(initial_weights)
        if initial_backbone:
            model.student_backbone.load_weights(initial_backbone)
            if model.has_teacher:
                model.copy_student_to_teacher()  # the teacher head too: both start from one fresh head

    table = None
    if pseudo_labels is not None:
        table = data.pseudo_label_table(*pseudo_labels)
    train_data = data.training_dataset(config, num_replicas=strategy.num_replicas_in_sync, pseudo_labels=table)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train_data = train_data.with_options(options)
    validation = None
    if index.validation_sites:
        validation = data.evaluation_dataset(config).map(
            lambda batch: {key: batch[key] for key in ("image", "mean", "std", "label")}
        )

    monitor = "val_teacher_accuracy" if config.mean_teacher.enabled else "val_student_accuracy"
    metrics_path = os.path.join(outdir, "metrics.csv")
    # Order matters after a kill: a backup of epoch k is written before epoch k's best checkpoint
    # and its metrics.csv row, so the csv never repeats an epoch and every logged score that beat
    # the best has its weights on disk.
    # double_checkpoint: a kill while the backup is being written falls back to the previous one.
    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(outdir, "backup"), double_checkpoint=True),
        keras.callbacks.TerminateOnNaN(),
    ]
    best_path = os.path.join(outdir, "checkpoints", "best.weights.h5")
    if validation is not None:
        os.makedirs(os.path.dirname(best_path), exist_ok=True)
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
        keras.callbacks.TensorBoard(os.path.join(outdir, "tensorboard"), write_graph=False),
    ]
    history = model.fit(
        train_data,
        epochs=config.train.epochs,
        steps_per_epoch=steps,
        validation_data=validation,
        validation_freq=config.train.eval_every_epochs,
        callbacks=callbacks,
        verbose=1 if sys.stdout.isatty() else 2,
    )
    last_path = os.path.join(outdir, "checkpoints", "last.weights.h5")
    os.makedirs(os.path.dirname(last_path), exist_ok=True)
    model.save_weights(last_path)
    if validation is not None and os.path.exists(best_path):
        model.load_weights(best_path)  # SPEC 7: select checkpoints by validation accuracy
    if config.train.export and chief:
        export.export_saved_model(
            [model.inference_network()],
            os.path.join(outdir, "export"),
            image_size=config.data.image_size,
            normalization=config.data.normalization,
        )
        print(f"[deepnoise] exported SavedModel to {os.path.join(outdir, 'export')}", flush=True)
    with open(os.path.join(outdir, DONE_FILE), "w") as file:
        json.dump({"epochs": config.train.epochs, "best_checkpoint": os.path.exists(best_path)}, file)
    return model, history


def main(argv=None):
    config, workdir = parse_command_line(sys.argv[1:] if argv is None else argv)
    done = os.path.join(workdir, DONE_FILE)
    if os.path.exists(done):
        # Keras deletes backup/ once fit() ends: without this a rerun would train again from epoch 0.
        print(f"[deepnoise] {workdir} holds a finished run ({done}); nothing to do. "
              "Use another --workdir, or delete that file to train again.", flush=True)
        return
    train(config, workdir)


if __name__ == "__main__":
    main()
