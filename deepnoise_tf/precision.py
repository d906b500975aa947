"""`train.mixed_precision` and `train.jit_compile` set to "auto": chosen from the GPUs in sight.

The paper trained in float32 on 4 P40s (docs/method.md §6); numerics aside, precision and XLA are
speed settings, so paper-scale configs pick them from the hardware and CPU configs pin float32
without XLA (XLA is 5-15x slower on CPU, BENCHMARKS.md). `resolve` is pure: it takes the compute
capabilities of the visible GPUs, so the rules are testable without one.

- no GPU: float32, no XLA;
- every GPU at compute capability >= 8.0 (Ampere, Hopper: bfloat16 tensor cores): mixed_bfloat16;
- every GPU at >= 7.0 (Volta, Turing: float16 tensor cores): mixed_float16. Keras's `compile`
  wraps the optimizer in a `LossScaleOptimizer` under that policy and `MeanTeacher.train_step`
  scales its loss with `optimizer.scale_loss`, so the float16 gradients do not underflow;
- older GPUs (Pascal, e.g. the paper's P40 at 6.1, whose float16 arithmetic is slow): float32;
- any GPU: XLA on. With several GPUs the weakest decides (one policy for all replicas).

An explicit value ("", "mixed_float16", "mixed_bfloat16"; True, False) is kept as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

AUTO = "auto"
BFLOAT16_CAPABILITY = (8, 0)
FLOAT16_CAPABILITY = (7, 0)


class Resolution(NamedTuple):
    mixed_precision: str  # "" = float32
    jit_compile: bool
    reason: str


def resolve(
    mixed_precision: str, jit_compile, gpu_capabilities: Sequence[tuple[int, int] | None]
) -> Resolution:
    """The precision policy and XLA switch that "auto" stands for on these GPUs.

    Args:
      mixed_precision: `config.train.mixed_precision` ("auto" or an explicit policy).
      jit_compile: `config.train.jit_compile` ("auto", True or False).
      gpu_capabilities: (major, minor) compute capability of each visible GPU; None where unknown
        (read as too old for mixed precision). Empty: no GPU.
    """
    if not gpu_capabilities:
        device, auto_precision, auto_jit = "no GPU", "", False
    else:
        weakest = min(capability or (0, 0) for capability in gpu_capabilities)
        device = (
            f"{len(gpu_capabilities)} GPU(s), lowest compute capability {weakest[0]}.{weakest[1]}"
        )
        auto_jit = True
        if weakest >= BFLOAT16_CAPABILITY:
            auto_precision = "mixed_bfloat16"
        elif weakest >= FLOAT16_CAPABILITY:
            auto_precision = "mixed_float16"
        else:
            auto_precision = ""
    precision = auto_precision if mixed_precision == AUTO else mixed_precision
    jit = auto_jit if jit_compile == AUTO else bool(jit_compile)
    sources = (
        "auto" if mixed_precision == AUTO else "set",
        "auto" if jit_compile == AUTO else "set",
    )
    reason = (
        f"precision {precision or 'float32'} ({sources[0]}), XLA {'on' if jit else 'off'} "
        f"({sources[1]}); {device}"
    )
    return Resolution(precision, jit, reason)


def visible_gpu_capabilities() -> list[tuple[int, int] | None]:
    """Compute capability of each GPU TensorFlow sees (None where it does not say)."""
    import tensorflow as tf

    return [
        tf.config.experimental.get_device_details(gpu).get("compute_capability")
        for gpu in tf.config.list_physical_devices("GPU")
    ]


def resolve_for_devices(train_config) -> Resolution:
    """`resolve` for `config.train` on the GPUs of this process."""
    return resolve(
        train_config.mixed_precision, train_config.jit_compile, visible_gpu_capabilities()
    )
