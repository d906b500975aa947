"""Training images/s of the DeepNoise step and of a plain supervised step, beside the input pipeline's.

For each setting (image size, width multiplier, batch) and each mode:
- `deepnoise`: `MeanTeacher.train_step` with a teacher (paper Model 3): the student runs on two
  views (normal for ArcFace on the labelled rows, easy for consistency/pseudo labels on every row),
  the teacher on a third, then the EMA update; half of every batch is unlabelled rows
  (`mean_teacher.labelled_share` 0.5).
- `plain`: the same wrapper with `mean_teacher.enabled=False`: one view, the student only.
- `labelled_only`: the `deepnoise` model and batch in the labelled-only epochs that the paper starts
  with (before `mean_teacher.consistency_start_fraction`, no pseudo labels): consistency weight 0, so
  only the normal view of the labelled rows runs, then the EMA update.
The step is `model.train_step` in a `tf.function` (what `fit` compiles, specialised like it to the
phase of the steps timed: `step_phase.StepPhase`), timed on one fixed batch
read from the pipeline, so it measures the step alone. The modes of a setting are timed interleaved
(`_report.time_interleaved`: `--steps` rounds of one step of each mode, order rotating) and each
mode's rate is its median step: on shared cores, load then slows every mode alike. The pipeline is `data.training_dataset`
over synthetic TFDS data of the same size, iterated without the model (uint8 batches: normalization
and augmentation run inside the step). A pipeline/step ratio above 1 means the host keeps the step fed.

Data: `synthetic.prepare_tfds` presets `quickstart` (64 px) and `benchmark` (512 px) under
`--data_root` (default runs/benchmarks, ignored by git; made once, ~1 min). The `benchmark` preset has
no test split, so at 512 px the deepnoise mode's pipeline is the labelled stream alone (same per-image
work; the step's batch is then half relabelled as unlabelled).

    # CPU (2 cores, ~4 min): CPU scale and the paper's 512 px full-width Xception, tiny batch
    python benchmarks/train.py
    python benchmarks/train.py --settings 64:0.125:32 --modes plain --steps 2 --no_append  # quick look
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import _report

REPOSITORY = Path(__file__).resolve().parents[1]
PRESET_BY_SIZE = {64: "quickstart", 512: "benchmark"}
MODES = ("deepnoise", "plain", "labelled_only")
# Labelled wells of RxRx1's Kaggle train split (73,030 sites): one epoch of the paper's schedule.
RXRX1_TRAIN_WELLS = 36_515
# The model's epoch length: more steps than any run times, so every timed step is in epoch 0.
STEPS_PER_EPOCH = 100


def parse_setting(text: str) -> tuple[int, float, int]:
    """`size:width:batch`, e.g. `512:1.0:4`."""
    size, width, batch = text.split(":")
    return int(size), float(width), int(batch)


def configure_threads(intra: int, inter: int) -> None:
    """Fixes TensorFlow's thread pools (must run before TensorFlow executes anything)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)


def benchmark_config(data_dir: str, builder: str, size: int, width: float, batch: int, mode: str):
    """The paper's default config at this size/width/batch, reading the synthetic data."""
    from deepnoise_tf import config as config_lib

    config = config_lib.default_config()
    config.data.data_dir = data_dir
    config.data.builder = builder
    config.data.image_size = size
    config.data.val_experiments = ()  # the 512 px preset has a single experiment
    config.model.width = width
    config.train.batch_size = batch
    config.mean_teacher.enabled = mode != "plain"
    if mode == "labelled_only":  # every timed step lies before the consistency loss starts
        config.mean_teacher.consistency_start_fraction = 1.0  # the end of the schedule
    elif mode == "deepnoise":  # every timed step has the consistency loss (the paper's phase 2)
        config.mean_teacher.consistency_start_fraction = 0.0
    config = config_lib.validate(config)
    scale_shuffle_buffer(config)
    return config


def scale_shuffle_buffer(config) -> None:
    """Shrinks `data.shuffle_buffer` by the synthetic data's size relative to RxRx1's train split.

    The pipeline refills its shuffle buffer at every epoch (one site per well is drawn anew), a
    stall that costs a few percent of an RxRx1 epoch. The synthetic epochs are a few hundred wells
    or fewer: with the full 2048-site buffer the whole epoch would be the stall.
    """
    import tensorflow_datasets as tfds

    from deepnoise_tf import constants

    info = tfds.builder(config.data.builder, data_dir=config.data.data_dir).info
    wells = info.splits["train"].num_examples // constants.SITES_PER_WELL
    buffer = max(2, round(config.data.shuffle_buffer * wells / RXRX1_TRAIN_WELLS))
    config.data.shuffle_buffer = min(buffer, config.data.shuffle_buffer)


def has_test_split(data_dir: str, builder: str) -> bool:
    import tensorflow_datasets as tfds

    return "test" in tfds.builder(builder, data_dir=data_dir).info.splits


def time_pipeline(config, batches: int, warmup: int) -> tuple[float, dict]:
    """(images/s of `data.training_dataset` after `warmup` batches, one batch to feed the step)."""
    from deepnoise_tf import data

    iterator = iter(data.training_dataset(config))
    first = next(iterator)
    for _ in range(max(warmup - 1, 0)):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        batch["image"].numpy()  # iteration already materializes it; be explicit
    seconds = time.perf_counter() - start
    return batches * config.train.batch_size / seconds, first


def as_mixed_batch(batch: dict, labelled_share: float = 0.5) -> dict:
    """Marks the rows after the labelled share unlabelled (what the mixed pipeline would deliver)."""
    import tensorflow as tf

    labels = batch["label"].numpy().copy()
    labels[round(len(labels) * labelled_share) :] = -1
    return {**batch, "label": tf.constant(labels)}


def build_step(config, batch: dict, jit_compile: bool):
    """(student parameters in M, a call that runs one `train_step` on `batch` and blocks)."""
    import keras
    import tensorflow as tf

    from deepnoise_tf import factory

    previous_policy = keras.config.dtype_policy()
    try:
        model = factory.build_model(config, steps_per_epoch=STEPS_PER_EPOCH)
    finally:
        keras.config.set_dtype_policy(previous_policy)  # build_model sets it globally
    # As `fit` compiles it (`step_phase.StepPhase`): for the phase of the epoch it times.
    model.specialise_step(0, STEPS_PER_EPOCH)
    step = tf.function(model.train_step, jit_compile=jit_compile, reduce_retracing=True)
    parameters = (model.student_backbone.count_params() + model.student_head.count_params()) / 1e6
    return parameters, lambda: step(batch)["loss"].numpy()


def prepare_mode(arguments, size: int, width: float, batch_size: int, mode: str):
    """(the mode's row without step timings, its step call): pipeline timed, model built."""
    from deepnoise_tf import precision, synthetic

    preset = PRESET_BY_SIZE[size]
    data_dir = str(Path(arguments.data_root) / preset)
    builder = synthetic.prepare_tfds(data_dir, preset=preset)
    config = benchmark_config(data_dir, builder, size, width, batch_size, mode)
    teacher = mode != "plain"
    mixed_pipeline = teacher and has_test_split(data_dir, builder)
    share = config.mean_teacher.labelled_share
    if teacher and not mixed_pipeline:
        with config.unlocked():
            config.mean_teacher.labelled_share = 1.0  # labelled stream only
    config.train.mixed_precision = arguments.mixed_precision
    resolved_precision = precision.resolve_for_devices(config.train).mixed_precision
    pipeline_rate, batch = time_pipeline(config, arguments.pipeline_batches, arguments.warmup)
    if teacher and not mixed_pipeline:
        batch = as_mixed_batch(batch, share)
        config.mean_teacher.labelled_share = share  # the step's layout: labelled rows first
    parameters, step = build_step(config, batch, arguments.jit_compile)
    row = {
        "mode": mode,
        "size": size,
        "width": width,
        "batch": batch_size,
        "precision": resolved_precision or "float32",
        "jit": "on" if arguments.jit_compile else "off",
        "params_m": parameters,
        "pipeline_images_per_s": pipeline_rate,
        "pipeline": "labelled+unlabelled" if mixed_pipeline else "labelled",
        "shuffle_buffer": config.data.shuffle_buffer,
    }
    return row, step


def step_rows(prepared: dict, first: dict, seconds: dict, load: str) -> list[dict]:
    """Each mode's row completed from its interleaved step times: the median step's rate.

    `plain_ratio` is the median over rounds of (mode step / plain step in the same round), the
    mode's cost in plain steps, when the plain mode was timed too.
    """
    rows = []
    for mode, row in prepared.items():
        step_rate = row["batch"] / _report.median(seconds[mode])
        ratio = None
        if "plain" in seconds:
            ratio = _report.median(
                [ours / plain for ours, plain in zip(seconds[mode], seconds["plain"], strict=True)]
            )
        rows.append(
            {
                **row,
                "step_images_per_s": step_rate,
                "first_step_s": first[mode],
                "feed_ratio": row["pipeline_images_per_s"] / step_rate,
                "plain_ratio": ratio,
                "load": load,
            }
        )
    return rows


def section(arguments, rows, total_seconds) -> tuple[str, list[str], list[str]]:
    bullets = [
        f"- threads: TensorFlow intra-op {arguments.intra_op_threads}, inter-op "
        f"{arguments.inter_op_threads or 'default'}; tf.data: its own pool (AUTOTUNE); shuffle buffer scaled "
        f"to the data ({', '.join(sorted({str(r['shuffle_buffer']) for r in rows}))} sites, "
        f"as 2048 is to RxRx1's {RXRX1_TRAIN_WELLS} train wells)",
        f"- {arguments.steps} rounds of one timed step per mode, interleaved (order rotating), "
        f"after {arguments.warmup} untimed (the first traces); step img/s = batch / median step "
        f"time; pipeline: {arguments.pipeline_batches} batches after {arguments.warmup}; step = "
        "`MeanTeacher.train_step` on one fixed batch; total wall time "
        f"{total_seconds:.0f} s; load = 1/5/15-min load average after the setting's rounds (2 "
        "shared cores: other jobs slow rows down)",
    ]
    header = (
        "mode", "size", "width", "batch", "precision", "jit", "student params (M)", "step img/s",
        "first step s", "pipeline img/s", "pipeline/step", "pipeline", "load",
    )  # fmt: skip
    body = _report.table(
        header,
        [
            (
                row["mode"],
                row["size"],
                f"{row['width']:g}",
                row["batch"],
                row["precision"],
                row["jit"],
                f"{row['params_m']:.2f}",
                f"{row['step_images_per_s']:.2f}",
                f"{row['first_step_s']:.1f}",
                f"{row['pipeline_images_per_s']:.0f}",
                f"{row['feed_ratio']:.0f}x",
                row["pipeline"],
                row["load"],
            )
            for row in rows
        ],
    )
    ratios = []
    for size, width, batch in {(r["size"], r["width"], r["batch"]) for r in rows}:
        by_mode = {
            r["mode"]: r["plain_ratio"]
            for r in rows
            if (r["size"], r["width"], r["batch"]) == (size, width, batch)
            and r["mode"] != "plain"
            and r["plain_ratio"] is not None
        }
        if by_mode:
            ratios.append(
                f"{size} px width {width:g} batch {batch}: "
                + ", ".join(f"{mode} {ratio:.2f}" for mode, ratio in by_mode.items())
            )
    if ratios:
        body += [
            "",
            "Step cost in plain steps (median over rounds of mode/plain step time in the same "
            "round): " + "; ".join(sorted(ratios)) + ".",
        ]
    title = f"Training step and input pipeline, benchmarks/train.py ({_report.timestamp()})"
    return title, bullets, body


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--settings",
        type=lambda text: [parse_setting(item) for item in text.split(",") if item],
        default=[parse_setting("64:0.125:32"), parse_setting("512:1.0:4")],
        help="size:width:batch,... (sizes: 64 or 512, the synthetic presets)",
    )
    parser.add_argument("--modes", default=",".join(MODES), help=",".join(MODES))
    parser.add_argument(
        "--steps", type=int, default=2, help="timed steps per mode (rounds, interleaved)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls (the first traces)")
    parser.add_argument("--pipeline_batches", type=int, default=20)
    parser.add_argument(
        "--mixed_precision", default="", help="'' | mixed_bfloat16 | mixed_float16 | auto"
    )
    parser.add_argument("--jit_compile", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--intra_op_threads", type=int, default=os.cpu_count())
    parser.add_argument(
        "--inter_op_threads",
        type=int,
        default=0,
        help="0 = TensorFlow's default, as training runs (independent passes overlap); before "
        "2026-12-06 the default was 1",
    )
    parser.add_argument("--data_root", default=str(REPOSITORY / "runs" / "benchmarks"))
    _report.add_output_arguments(parser)
    arguments = parser.parse_args(argv)
    modes = _report.names(parser, arguments.modes, MODES, "modes")
    if unknown := {size for size, _, _ in arguments.settings} - set(PRESET_BY_SIZE):
        parser.error(f"sizes {sorted(unknown)} have no synthetic preset; use {set(PRESET_BY_SIZE)}")

    configure_threads(arguments.intra_op_threads, arguments.inter_op_threads)
    print(
        f"threads: intra-op {arguments.intra_op_threads}, inter-op {arguments.inter_op_threads}",
        flush=True,
    )
    start = time.perf_counter()
    rows = []
    for size, width, batch in arguments.settings:
        prepared, steps = {}, {}
        for mode in modes:
            prepared[mode], steps[mode] = prepare_mode(arguments, size, width, batch, mode)
        first, seconds = _report.time_interleaved(steps, arguments.steps, arguments.warmup)
        for row in step_rows(prepared, first, seconds, _report.load_average()):
            rows.append(row)
            ratio = "" if row["plain_ratio"] is None else f" plain_ratio={row['plain_ratio']:.2f}"
            print(
                f"train_benchmark mode={row['mode']} size={size} width={width:g} batch={batch} "
                f"step_images_per_s={row['step_images_per_s']:.2f}{ratio} "
                f"first_step_s={row['first_step_s']:.1f} "
                f"pipeline_images_per_s={row['pipeline_images_per_s']:.0f} "
                f"feed_ratio={row['feed_ratio']:.1f} load={row['load']}",
                flush=True,
            )
    total = time.perf_counter() - start
    title, bullets, body = section(arguments, rows, total)
    print(
        "train_benchmark_summary "
        + " ".join(
            f"{r['mode']}@{r['size']}px/w{r['width']:g}/b{r['batch']}="
            f"{r['step_images_per_s']:.2f}img/s(pipeline {r['pipeline_images_per_s']:.0f})"
            for r in rows
        )
        + "".join(
            f" plain_ratio({r['mode']}@{r['size']}px/w{r['width']:g}/b{r['batch']})="
            f"{r['plain_ratio']:.2f}"
            for r in rows
            if r["mode"] != "plain" and r["plain_ratio"] is not None
        )
        + f" total_s={total:.0f}",
        flush=True,
    )
    import keras
    import tensorflow as tf

    versions = {"TensorFlow": tf.__version__, "Keras": keras.__version__}
    _report.publish(arguments, title, bullets, body, script=__file__, argv=argv, versions=versions)


if __name__ == "__main__":
    main()
