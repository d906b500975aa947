"""Time forward and forward+backward images/s of the Xception and Xception-Wide backbones.

For every architecture x input size x width x precision x XLA setting, on random 6-channel
images: forward = `model(x, training=False)`; train = forward in training mode, a squared-error
loss on the embedding, gradients and a plain SGD update of the trainable weights (no head, no
loss scaling). Runs on the TensorFlow backend (XLA on or off, via `tf.function(jit_compile=...)`)
and on the JAX backend (always XLA: `jax.jit` of `stateless_call` and `jax.value_and_grad`).
Prints one line per configuration and a summary line, and appends a section to BENCHMARKS.md.

    # CPU (2 cores): narrow and full width at 128 px, both backbones
    python benchmarks/model.py --sizes 128 --widths 0.25,1.0 --batch 4 --steps 3 --xla off
    # GPU: both backbones at 512 px, float32 and mixed precision, XLA off and on
    python benchmarks/model.py --sizes 128,512 --widths 1.0 --batch 32 --steps 20
    KERAS_BACKEND=jax python benchmarks/model.py --sizes 512 --widths 1.0 --batch 32 --steps 20
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import keras
import numpy as np

from deepnoise_tf import constants, models

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
LEARNING_RATE = 1e-3


def device_name() -> str:
    """Accelerator name when there is one, else the CPU model."""
    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            return f"{device.device_kind} ({device.platform})"
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return f"{details.get('device_name', 'GPU')} (gpu)"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs (cpu)"


def has_accelerator() -> bool:
    return not device_name().endswith("(cpu)")


def _tensorflow_steps(model, images, targets, xla: bool):
    """Forward and train-step callables for the TensorFlow backend."""
    import tensorflow as tf

    images, targets = tf.constant(images), tf.constant(targets)
    variables = model.trainable_variables

    def forward():
        return model(images, training=False)

    def train():
        with tf.GradientTape() as tape:
            embeddings = tf.cast(model(images, training=True), tf.float32)
            loss = tf.reduce_mean(tf.square(embeddings - targets))
        gradients = tape.gradient(loss, variables)
        for variable, gradient in zip(variables, gradients, strict=True):
            variable.assign_sub(LEARNING_RATE * tf.cast(gradient, variable.dtype))
        return loss

    forward = tf.function(forward, jit_compile=xla, autograph=False)
    train = tf.function(train, jit_compile=xla, autograph=False)
    return (lambda: forward().numpy()), (lambda: train().numpy())


def _jax_steps(model, images, targets):
    """Forward and train-step callables for the JAX backend (jitted, state threaded through)."""
    import jax
    import jax.numpy as jnp

    images, targets = jnp.asarray(images), jnp.asarray(targets)
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    @jax.jit
    def forward(trainable, non_trainable, images):
        embeddings, _ = model.stateless_call(trainable, non_trainable, images, training=False)
        return embeddings

    def loss_function(trainable, non_trainable, images, targets):
        embeddings, non_trainable = model.stateless_call(
            trainable, non_trainable, images, training=True
        )
        loss = jnp.mean(jnp.square(embeddings.astype(jnp.float32) - targets))
        return loss, non_trainable

    @jax.jit
    def train(trainable, non_trainable, images, targets):
        (loss, non_trainable), gradients = jax.value_and_grad(loss_function, has_aux=True)(
            trainable, non_trainable, images, targets
        )
        trainable = [
            w - LEARNING_RATE * g.astype(w.dtype) for w, g in zip(trainable, gradients, strict=True)
        ]
        return loss, trainable, non_trainable

    state = {"trainable": trainable, "non_trainable": non_trainable}

    def run_forward():
        return forward(state["trainable"], state["non_trainable"], images).block_until_ready()

    def run_train():
        loss, state["trainable"], state["non_trainable"] = train(
            state["trainable"], state["non_trainable"], images, targets
        )
        return loss.block_until_ready()

    return run_forward, run_train


def measure(step, steps: int, warmup: int) -> tuple[float, float]:
    """(seconds of the first call, which includes tracing/compilation; seconds per later call)."""
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return first, (time.perf_counter() - start) / steps


def benchmark_one(
    architecture, size, width, batch, precision, xla, steps, warmup, sync_batch_norm, seed=0
):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        model = models.build(
            architecture,
            (size, size, constants.NUM_CHANNELS),
            width=width,
            sync_batch_norm=sync_batch_norm,
        )
    finally:
        keras.config.set_dtype_policy(previous)
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch, size, size, constants.NUM_CHANNELS)).astype("float32")
    targets = rng.normal(size=(batch, models.embedding_dim(model))).astype("float32")
    if keras.backend.backend() == "jax":
        forward, train = _jax_steps(model, images, targets)
    else:
        forward, train = _tensorflow_steps(model, images, targets, xla)
    forward_first, forward_seconds = measure(forward, steps, warmup)
    train_first, train_seconds = measure(train, steps, warmup)
    return {
        "architecture": architecture,
        "size": size,
        "width": width,
        "batch": batch,
        "precision": precision,
        "xla": "on" if xla else "off",
        "params_m": model.count_params() / 1e6,
        "forward_images_per_s": batch / forward_seconds,
        "train_images_per_s": batch / train_seconds,
        "forward_first_call_s": forward_first,
        "train_first_call_s": train_first,
    }


def comma_list(kind):
    return lambda text: [kind(item) for item in text.split(",") if item]


def resolve_precisions(names: list[str]) -> list[str]:
    """'auto' = float32, plus mixed_float16 and mixed_bfloat16 when an accelerator is present."""
    resolved = []
    for name in names:
        if name == "auto":
            resolved += ["float32"] + (
                ["mixed_float16", "mixed_bfloat16"] if has_accelerator() else []
            )
        else:
            resolved.append(name)
    return list(dict.fromkeys(resolved))


def resolve_xla(names: list[str]) -> list[bool]:
    if keras.backend.backend() == "jax":
        return [True]  # JAX always compiles with XLA (jax.jit); "off" has no meaning there
    return list(dict.fromkeys(name in ("on", "true", "1") for name in names))


def markdown_section(rows, command, total_seconds, sync_batch_norm) -> str:
    header = (
        "| backbone | size | width | batch | precision | XLA | params (M) | forward img/s "
        "| train img/s | first forward s | first train s |"
    )
    lines = [
        f"## Backbone throughput, benchmarks/model.py "
        f"({datetime.datetime.now().strftime('%Y-%m-%d %H:%M')})",
        "",
        f"- machine: {platform.node() or 'unknown'}, {platform.machine()}, "
        f"{os.cpu_count()} logical CPUs; Python {platform.python_version()}, "
        f"Keras {keras.__version__}, numpy {np.__version__}",
        f"- backend: {keras.backend.backend()} {_backend_version()}",
        f"- device: {device_name()}",
        f"- command: `{command}`",
        f"- total wall time: {total_seconds:.0f} s; 'first' columns include tracing and "
        "compilation; train = forward + backward + SGD update, no head; synchronized batch "
        f"norm: {'on' if sync_batch_norm and keras.backend.backend() == 'tensorflow' else 'off'}",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for row in rows:
        lines.append(
            f"| {row['architecture']} | {row['size']} | {row['width']:g} | {row['batch']} "
            f"| {row['precision']} | {row['xla']} | {row['params_m']:.2f} "
            f"| {row['forward_images_per_s']:.1f} | {row['train_images_per_s']:.1f} "
            f"| {row['forward_first_call_s']:.1f} | {row['train_first_call_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _backend_version() -> str:
    if keras.backend.backend() == "jax":
        import jax

        return jax.__version__
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.__version__
    return ""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architectures", type=comma_list(str), default=list(models.ARCHITECTURES))
    parser.add_argument("--sizes", type=comma_list(int), default=[128, 512])
    parser.add_argument("--widths", type=comma_list(float), default=[1.0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls (the first compiles)")
    parser.add_argument(
        "--mixed_precision",
        type=comma_list(str),
        default=["auto"],
        help="dtype policies, e.g. float32,mixed_float16,mixed_bfloat16; 'auto' adds the mixed "
        "ones only when a GPU is present",
    )
    parser.add_argument("--xla", type=comma_list(str), default=["off", "on"], help="off,on")
    parser.add_argument(
        "--sync_batch_norm",
        choices=("on", "off"),
        default="on",
        help="models.xception(sync_batch_norm=...), on as in training (TensorFlow only)",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--no_append", action="store_true", help="print only")
    arguments = parser.parse_args(argv)

    command = shlex.join(
        (
            [f"KERAS_BACKEND={keras.backend.backend()}"]
            if keras.backend.backend() != "tensorflow"
            else []
        )
        + ["python", "benchmarks/model.py", *(sys.argv[1:] if argv is None else argv)]
    )
    print(f"backend={keras.backend.backend()} device={device_name()!r}", flush=True)
    start = time.perf_counter()
    rows = []
    for architecture, size, width, precision, xla in itertools.product(
        arguments.architectures,
        arguments.sizes,
        arguments.widths,
        resolve_precisions(arguments.mixed_precision),
        resolve_xla(arguments.xla),
    ):
        row = benchmark_one(
            architecture,
            size,
            width,
            arguments.batch,
            precision,
            xla,
            arguments.steps,
            arguments.warmup,
            arguments.sync_batch_norm == "on",
        )
        rows.append(row)
        print(
            "model_benchmark "
            + " ".join(
                f"{key}={value:g}"
                if key == "width"
                else f"{key}={value:.2f}"
                if isinstance(value, float)
                else f"{key}={value}"
                for key, value in row.items()
            ),
            flush=True,
        )
    total = time.perf_counter() - start
    best = max(rows, key=lambda row: row["train_images_per_s"])
    print(
        f"model_benchmark_summary backend={keras.backend.backend()} configurations={len(rows)} "
        f"total_s={total:.0f} best_train_images_per_s={best['train_images_per_s']:.1f} "
        f"({best['architecture']} {best['size']}px width={best['width']:g} "
        f"{best['precision']} xla={best['xla']})",
        flush=True,
    )
    if not arguments.no_append:
        with open(arguments.output, "a") as output:
            output.write(
                "\n" + markdown_section(rows, command, total, arguments.sync_batch_norm == "on")
            )
        print(f"appended to {arguments.output}")


if __name__ == "__main__":
    main()
