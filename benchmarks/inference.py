"""SavedModel inference throughput (batch sizes 1..64, with and without 8-view TTA) and the
post-processing time of a full RxRx1-sized test set (18 experiments x 4 plates x 277 wells x 1108).

The model is an untrained export (throughput does not depend on the weights) built with
`factory.build_network` at a CPU-sized image size and width, exported with `export.export_saved_model`
and run exactly as `deepnoise_tf.predict` runs it (`inference.batch_function`: uint8 images in, the
views stacked into one signature call). Images/s counts sites: with TTA each site costs 8 views.

    python benchmarks/inference.py                     # prints a summary and appends to BENCHMARKS.md
    python benchmarks/inference.py --size 32 --batch_sizes 1,8 --experiments 2 --no-append   # quick look
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from pathlib import Path

import _report
import keras
import numpy as np
import tensorflow as tf

from deepnoise_tf import config as config_lib
from deepnoise_tf import constants, export, factory, inference, models, postprocess


def build_export(backbone: str, size: int, width: float, directory: str) -> str:
    """An untrained single-model SavedModel of the given backbone, size and width."""
    config = config_lib.default_config()
    config.model.backbone = backbone
    config.model.width = width
    keras.utils.set_random_seed(0)
    network = factory.build_network(config.model, size, "benchmark")
    return export.export_saved_model(
        [(network["backbone"], network["head"])],
        os.path.join(directory, "export"),
        image_size=size,
        normalization="plate",
    )


def time_inference(
    loaded, size: int, batch_size: int, tta: bool, steps: int
) -> tuple[float, float]:
    """(sites/s over `steps` timed calls, seconds of the first call including tracing)."""
    outputs = inference.batch_function({"model": loaded}, tta=tta)

    def predictor(image, mean, std):
        return outputs(image, mean, std)["model"]

    rng = np.random.default_rng(0)
    image = tf.constant(
        rng.integers(0, 256, (batch_size, size, size, constants.NUM_CHANNELS), dtype=np.uint8)
    )
    mean = tf.fill([batch_size, constants.NUM_CHANNELS], 40.0)
    std = tf.fill([batch_size, constants.NUM_CHANNELS], 15.0)
    start = time.perf_counter()
    predictor(image, mean, std)[0].numpy()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        predictor(image, mean, std)[0].numpy()
    return batch_size * steps / (time.perf_counter() - start), first


def postprocess_benchmark_module():
    """benchmarks/postprocess.py (its synthetic RxRx1-sized test set), loaded by path."""
    path = Path(__file__).resolve().with_name("postprocess.py")
    spec = importlib.util.spec_from_file_location("deepnoise_postprocess_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_postprocessing(experiments: int, methods, seed: int = 0) -> list[tuple[str, float, float]]:
    """(method, seconds, accuracy) of `postprocess_predictions` with the plate restriction on."""
    module = postprocess_benchmark_module()
    rng = np.random.default_rng(seed)
    table, logits, truth, design, _ = module.synthetic_test_set(rng, experiments, 4.0, 5.0)
    results = [("argmax (no post-processing)", 0.0, float(np.mean(logits.argmax(1) == truth)))]
    for method in methods:
        start = time.perf_counter()
        prediction = postprocess.postprocess_predictions(table, logits, method, design)
        seconds = time.perf_counter() - start
        results.append(
            (f"postprocess_predictions({method})", seconds, float(np.mean(prediction == truth)))
        )
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=models.backbone_names(), default="xception")
    parser.add_argument("--size", type=int, default=64, help="image size the model is exported at")
    parser.add_argument("--width", type=float, default=0.125, help="backbone width multiplier")
    parser.add_argument("--batch_sizes", default="1,2,4,8,16,32,64")
    parser.add_argument("--steps", type=int, default=3, help="timed calls per setting")
    parser.add_argument("--experiments", type=int, default=18, help="post-processing test set size")
    parser.add_argument(
        "--methods", default="assign,balance", help="post-processing methods to time"
    )
    _report.add_output_arguments(parser)
    args = parser.parse_args(argv)
    batch_sizes = [int(value) for value in args.batch_sizes.split(",")]
    methods = [value for value in args.methods.split(",") if value]
    started = time.perf_counter()
    load = _report.load_average()

    rows = []
    with tempfile.TemporaryDirectory() as directory:
        loaded = inference.load_export(
            build_export(args.backbone, args.size, args.width, directory)
        )
        for batch_size in batch_sizes:
            plain, plain_first = time_inference(loaded, args.size, batch_size, False, args.steps)
            views, views_first = time_inference(loaded, args.size, batch_size, True, args.steps)
            rows.append((batch_size, plain, views, plain_first, views_first))
            print(
                f"batch {batch_size}: {plain:.1f} sites/s, TTA {views:.1f} sites/s",
                flush=True,
            )
    post = time_postprocessing(args.experiments, methods)
    for name, seconds, accuracy in post:
        print(f"{name}: {seconds:.2f} s, accuracy {accuracy:.4f}", flush=True)
    total = time.perf_counter() - started

    best = max(rows, key=lambda row: row[1])
    summary = (
        f"inference: {args.backbone} {args.size}px width {args.width}: best {best[1]:.1f} sites/s "
        f"(batch {best[0]}), TTA {max(row[2] for row in rows):.1f} sites/s; post-processing "
        f"{args.experiments}x4x277 wells: "
        + ", ".join(f"{name} {seconds:.2f}s" for name, seconds, _ in post[1:])
    )
    wells = args.experiments * constants.PLATES_PER_EXPERIMENT * constants.SIRNAS_PER_PLATE
    bullets = [
        f"- devices: {', '.join(device.name for device in tf.config.list_logical_devices())}",
        f"- load average {load} (1/5/15 min, at start; 2 shared cores)",
        f"- model: untrained {args.backbone}, {args.size}x{args.size}x6 input, width {args.width}, "
        f"float32; {args.steps} timed calls per row after one warm-up call ('first' includes "
        f"tracing); sites/s with TTA counts sites (8 views each); total wall time {total:.0f} s",
    ]
    body = _report.table(
        ("batch", "sites/s", "TTA sites/s", "first call s", "first TTA call s"),
        [
            (batch, f"{plain:.1f}", f"{views:.1f}", f"{first:.2f}", f"{views_first:.2f}")
            for batch, plain, views, first, views_first in rows
        ],
    )
    body += [
        "",
        f"Post-processing of {args.experiments} experiments x 4 plates x 277 wells "
        f"({wells} wells) x {constants.NUM_SIRNAS} siRNAs, synthetic log-probs of "
        "benchmarks/postprocess.py, plate restriction on, rotation inferred:",
        "",
        *_report.table(
            ("step", "seconds", "accuracy"),
            [(name, f"{seconds:.2f}", f"{accuracy:.4f}") for name, seconds, accuracy in post],
        ),
    ]
    title = (
        f"SavedModel inference and post-processing, benchmarks/inference.py ({_report.timestamp()})"
    )
    versions = {"TensorFlow": tf.__version__, "Keras": keras.__version__, "numpy": np.__version__}
    _report.publish(args, title, bullets, body, script=__file__, argv=argv, versions=versions)
    print(summary)


if __name__ == "__main__":
    main()
