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
import itertools
import os
import time

import _report
import keras
import numpy as np

from deepnoise_tf import constants, models

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
    return f"{_report.cpu_name()}, {os.cpu_count()} logical CPUs (cpu)"


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


def build_steps(architecture, size, width, batch, precision, xla, sync_batch_norm, seed=0):
    """(backbone, forward(), train()) on fixed random images: the two callables that are timed."""
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
        return (model, *_jax_steps(model, images, targets))
    return (model, *_tensorflow_steps(model, images, targets, xla))


def serve(model, forward, train) -> None:
    """Times one call per stdin line ("forward" or "train"), printing its seconds; until EOF.

    For benchmarks/torch_step.py, which alternates single steps of this process and of PyTorch
    so that both see the same share of a busy machine.
    """
    import sys

    trainable = sum(int(np.prod(variable.shape)) for variable in model.trainable_weights)
    print(f"ready params_m={trainable / 1e6:.4f}", flush=True)  # trainable, as torch counts
    calls = {"forward": forward, "train": train}
    for line in sys.stdin:
        call = calls[line.strip()]
        start = time.perf_counter()
        call()
        print(f"{time.perf_counter() - start:.6f}", flush=True)


def benchmark_one(
    architecture, size, width, batch, precision, xla, steps, warmup, sync_batch_norm, seed=0
):
    model, forward, train = build_steps(
        architecture, size, width, batch, precision, xla, sync_batch_norm, seed
    )
    forward_first, forward_seconds = _report.time_calls(forward, steps, warmup)
    train_first, train_seconds = _report.time_calls(train, steps, warmup)
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
        "load": _report.load_average(),
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


def section(rows, total_seconds, sync_batch_norm) -> tuple[str, list[str], list[str]]:
    """(title, bullets, table) of the BENCHMARKS.md section."""
    synchronized = sync_batch_norm and keras.backend.backend() == "tensorflow"
    bullets = [
        f"- backend: {keras.backend.backend()} {_backend_version()}",
        f"- device: {device_name()}",
        f"- total wall time: {total_seconds:.0f} s; 'first' columns include tracing and "
        "compilation; train = forward + backward + SGD update, no head; synchronized batch "
        f"norm: {'on' if synchronized else 'off'}; load = 1/5/15-min load average after the row",
    ]
    header = (
        "backbone", "size", "width", "batch", "precision", "XLA", "params (M)", "forward img/s",
        "train img/s", "first forward s", "first train s", "load",
    )  # fmt: skip
    body = _report.table(
        header,
        [
            (
                row["architecture"],
                row["size"],
                f"{row['width']:g}",
                row["batch"],
                row["precision"],
                row["xla"],
                f"{row['params_m']:.2f}",
                f"{row['forward_images_per_s']:.1f}",
                f"{row['train_images_per_s']:.1f}",
                f"{row['forward_first_call_s']:.1f}",
                f"{row['train_first_call_s']:.1f}",
                row["load"],
            )
            for row in rows
        ],
    )
    return f"Backbone throughput, benchmarks/model.py ({_report.timestamp()})", bullets, body


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
    parser.add_argument(
        "--architectures", type=comma_list(str), default=list(models.backbone_names())
    )
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
    parser.add_argument(
        "--intra_op_threads", type=int, default=0, help="TensorFlow's pools; 0 = its default"
    )
    parser.add_argument("--inter_op_threads", type=int, default=0)
    _report.add_output_arguments(parser)
    parser.add_argument(
        "--serve",
        action="store_true",
        help="build the first setting, then time one call per stdin line (see `serve`)",
    )
    arguments = parser.parse_args(argv)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # Before the first op: the pools are fixed once TensorFlow starts executing.
        tf.config.threading.set_intra_op_parallelism_threads(arguments.intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(arguments.inter_op_threads)

    print(f"backend={keras.backend.backend()} device={device_name()!r}", flush=True)
    if arguments.serve:
        serve(
            *build_steps(
                arguments.architectures[0],
                arguments.sizes[0],
                arguments.widths[0],
                arguments.batch,
                resolve_precisions(arguments.mixed_precision)[0],
                resolve_xla(arguments.xla)[0],
                arguments.sync_batch_norm == "on",
            )
        )
        return
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
    backend = keras.backend.backend()
    prefix = [f"KERAS_BACKEND={backend}"] if backend != "tensorflow" else []
    title, bullets, body = section(rows, total, arguments.sync_batch_norm == "on")
    versions = {"Keras": keras.__version__, "numpy": np.__version__}
    _report.publish(
        arguments,
        title,
        bullets,
        body,
        script=__file__,
        argv=argv,
        versions=versions,
        prefix=prefix,
    )


if __name__ == "__main__":
    main()
