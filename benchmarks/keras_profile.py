"""Where the Keras Xception training step spends its time on CPU: variants timed, ops profiled.

The step is `benchmarks/model.py`'s (forward in training mode, MSE on the embedding, backward, SGD),
so its rows compare with `benchmarks/torch_step.py`. Variants, each built afresh and timed:
- `sync BN`: as trained (`models.xception(sync_batch_norm=True)`, the config default);
- `plain BN`: `sync_batch_norm=False`;
- `no BN`: every batch norm replaced by an identity (patched in this process only), so the
  difference to `plain BN` is what batch norm costs;
- `XLA`: the `sync BN` step compiled with `jit_compile=True`;
- `forward (training)`: the forward pass alone, in training mode (batch statistics).
Then the `--profile` variants' steps run under `tf.profiler`; op events are summed by phase
(forward / backward / update) and by layer kind (depthwise conv, pointwise and other convs, batch
norm, ReLU, max pool, add, other) from the op names, e.g.
`gradient_tape/xception/block5_sepconv1_bn/...` = backward, batch norm.

    python benchmarks/keras_profile.py --size 128 --width 1.0 --batch 4
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import tempfile
import time
from pathlib import Path

import _report
import keras
import model as model_benchmark
import numpy as np
import tensorflow as tf

from deepnoise_tf import constants, models

VARIANTS = ("sync BN", "plain BN", "no BN", "XLA", "forward (training)")
KINDS = ("depthwise conv", "pointwise conv", "other conv", "batch norm", "ReLU", "max pool", "add")


def build(size: int, width: float, variant: str) -> keras.Model:
    shape = (size, size, constants.NUM_CHANNELS)
    if variant != "no BN":
        return models.build("xception", shape, width=width, sync_batch_norm=variant != "plain BN")
    original = models._batch_norm
    models._batch_norm = lambda name, settings: keras.layers.Identity(name=name)
    try:
        return models.build("xception", shape, width=width)
    finally:
        models._batch_norm = original


def variant_step(size: int, width: float, batch: int, variant: str):
    network = build(size, width, variant)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(batch, size, size, constants.NUM_CHANNELS)).astype("float32")
    targets = rng.normal(size=(batch, models.embedding_dim(network))).astype("float32")
    if variant == "forward (training)":
        inputs = tf.constant(images)
        forward = tf.function(lambda: network(inputs, training=True), autograph=False)
        return lambda: forward().numpy()
    _, train = model_benchmark._tensorflow_steps(network, images, targets, variant == "XLA")
    return train


def kind_of(op_name: str, op_type: str) -> str:
    """Layer kind of a TensorFlow op from its scope (layer names follow models.py)."""
    scope = op_name.lower()
    if "_bn" in scope:
        return "batch norm"
    if "depthwise" in op_type.lower():
        return "depthwise conv"
    if "sepconv" in scope and "conv2d" in op_type.lower():
        return "pointwise conv"
    if "conv2d" in op_type.lower():
        return "other conv"
    if "_act" in scope or "relu" in op_type.lower():
        return "ReLU"
    if "pool" in scope:
        return "max pool"
    if "_add" in scope:
        return "add"
    return "other"


def profile_ops(step, steps: int) -> dict[tuple[str, str], float]:
    """Seconds per step of every (phase, kind), summed over the op events of `steps` steps."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with tempfile.TemporaryDirectory() as directory:
        tf.profiler.experimental.start(directory)
        for _ in range(steps):
            step()
        tf.profiler.experimental.stop()
        (path,) = glob.glob(os.path.join(directory, "plugins", "profile", "*", "*.xplane.pb"))
        space = xplane_pb2.XSpace()
        space.ParseFromString(Path(path).read_bytes())
    totals = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                # Op events are "<op name>:<op type>"; skip the thread-pool bookkeeping and the
                # enclosing function call ("EagerLocalExecute: ...", "KernelAndDeviceFunc::Run").
                if ":" not in name or " " in name or "::" in name:
                    continue
                op_name, op_type = name.rsplit(":", 1)
                if op_name.startswith("gradient_tape/") or op_type == "AddN":
                    phase = "backward"  # AddN: gradients of a tensor used twice (residuals)
                elif "/block" in op_name or "/embedding" in op_name:
                    phase = "forward"
                else:
                    phase = "update"  # the SGD update, loss and bookkeeping
                totals[phase, kind_of(op_name, op_type)] += event.duration_ps * 1e-12 / steps
    return dict(totals)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--profile", default="sync BN,plain BN", help="variants whose ops are profiled"
    )
    parser.add_argument("--intra_op_threads", type=int, default=os.cpu_count())
    parser.add_argument("--inter_op_threads", type=int, default=1)
    _report.add_output_arguments(parser)
    arguments = parser.parse_args(argv)
    variants = _report.names(parser, arguments.variants, VARIANTS, "variants")
    profiled = _report.names(parser, arguments.profile, variants, "variants to profile")
    tf.config.threading.set_intra_op_parallelism_threads(arguments.intra_op_threads)
    tf.config.threading.set_inter_op_parallelism_threads(arguments.inter_op_threads)

    started = time.perf_counter()
    rows, profiles = [], {}
    for variant in variants:
        step = variant_step(arguments.size, arguments.width, arguments.batch, variant)
        first, seconds = _report.time_calls(step, arguments.steps, arguments.warmup)
        rows.append((variant, arguments.batch / seconds, 1e3 * seconds, _report.load_average()))
        print(
            f"keras_profile variant={variant!r} images_per_s={rows[-1][1]:.2f} "
            f"ms_per_step={rows[-1][2]:.0f} first_s={first:.1f} load={rows[-1][3]}",
            flush=True,
        )
        if variant in profiled:
            profiles[variant] = profile_ops(step, arguments.steps)
    total = time.perf_counter() - started
    summary = "keras_profile_summary " + " ".join(
        f"{variant.replace(' ', '_')}={rate:.2f}img/s" for variant, rate, _, _ in rows
    )
    for variant, ops in profiles.items():
        op_total = sum(ops.values())
        summary += f" | {variant} ops {1e3 * op_total:.0f} ms:"
        for phase in ("forward", "backward", "update"):
            share = sum(v for (p, _), v in ops.items() if p == phase) / op_total
            summary += f" {phase}={share:.0%}"
        for kind in (*KINDS, "other"):
            share = sum(v for (_, k), v in ops.items() if k == kind) / op_total
            summary += f" {kind.replace(' ', '_')}={share:.0%}"
    print(summary + f" total_s={total:.0f}", flush=True)
    bullets = [
        f"- xception (7x7 stem) {arguments.size}x{arguments.size}x6, width {arguments.width:g}, "
        f"batch {arguments.batch}, float32, NHWC; threads intra-op {arguments.intra_op_threads}, "
        f"inter-op {arguments.inter_op_threads}; oneDNN on (TF's x86 default); {arguments.steps} "
        f"timed steps after {arguments.warmup}; total wall time {total:.0f} s; load = 1/5/15-min "
        "load average after the row (2 shared cores)",
    ]
    body = _report.table(
        ("variant", "img/s", "ms/step", "load"),
        [(variant, f"{rate:.2f}", f"{ms:.0f}", load) for variant, rate, ms, load in rows],
    )
    kinds = (*KINDS, "other")
    for variant, ops in profiles.items():
        op_total = sum(ops.values())
        body += [
            "",
            f"Op time of the `{variant}` step under tf.profiler, ms per step (share of all op time; "
            f"op events summed over threads: {1e3 * op_total:.0f} ms):",
            "",
            *_report.table(
                ("phase", *kinds, "total"),
                [
                    (
                        phase,
                        *(f"{1e3 * ops.get((phase, kind), 0.0):.0f}" for kind in kinds),
                        f"{1e3 * sum(v for (p, _), v in ops.items() if p == phase):.0f} "
                        f"({sum(v for (p, _), v in ops.items() if p == phase) / op_total:.0%})",
                    )
                    for phase in ("forward", "backward", "update")
                ],
            ),
        ]
    title = f"Keras Xception step on CPU, where the time goes, benchmarks/keras_profile.py ({_report.timestamp()})"
    versions = {"TensorFlow": tf.__version__, "Keras": keras.__version__}
    _report.publish(arguments, title, bullets, body, script=__file__, argv=argv, versions=versions)


if __name__ == "__main__":
    main()
