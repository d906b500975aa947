"""GPU-hours of the paper's full training schedule, projected from the measured step rates.

Nothing is trained: the projection multiplies measured rates by the schedule's work. Assumptions,
each a flag (defaults are the numbers in BENCHMARKS.md):
- schedule (paper, SPEC 7): 160 epochs for each of 2 models, Xception and Xception-Wide, at 512 px;
  an epoch is one pass over RxRx1's 36,515 labelled train wells, one site per well;
- mean-teacher batches hold labelled and unlabelled (test) rows at a labelled share of 1/2, so an
  epoch carries 36,515 / (1/2) = 73,030 rows, each costing one DeepNoise step row;
- per-GPU plain-step rate: Xception 512 px batch 32 on an H100 (benchmarks/model.py, JAX backend):
  370 images/s float32, 644 mixed_bfloat16;
- the DeepNoise step (student on two views, teacher forward, EMA) costs `--deepnoise_cost` plain
  steps per row: the CPU ratio of benchmarks/train.py (same batch, both modes), taken to carry
  over to the GPU;
- Xception-Wide costs its convolution multiply-adds relative to Xception's (counted here from the
  layer shapes at 512 px; no H100 row of the wide model was measured), or `--wide_cost`;
- evaluation: the validation experiments' sites (`--validation_sites`) once per epoch at the H100
  forward rate (1488 images/s float32, 2732 bf16), without test-time augmentation;
- data parallelism over `--gpus` GPUs scales linearly (wall-clock = GPU-hours / GPUs) and the input
  pipeline keeps up (benchmarks/pipeline.py). Not included: pseudo-label refreshes, per-cell-type
  fine-tuning (SPEC 7), the ensemble's test-set inference.

    python benchmarks/projection.py --deepnoise_cost 2.7
"""

from __future__ import annotations

import argparse

import _report

RXRX1_TRAIN_WELLS = 36_515
H100_TRAIN = {"float32": 370.0, "mixed_bfloat16": 644.0}  # Xception 512 px, batch 32, plain step
H100_FORWARD = {"float32": 1488.0, "mixed_bfloat16": 2732.0}


def conv_multiply_adds(model) -> int:
    """Multiply-adds per image of the model's convolutions (regular, separable), from the shapes."""
    import keras

    total = 0
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Conv2D | keras.layers.SeparableConv2D):
            continue
        _, height, width, out_channels = layer.output.shape
        in_channels = layer.input.shape[-1]
        kernel = layer.kernel_size[0] * layer.kernel_size[1]
        if isinstance(layer, keras.layers.SeparableConv2D):
            per_pixel = kernel * in_channels + in_channels * out_channels
        else:
            per_pixel = kernel * in_channels * out_channels
        total += height * width * per_pixel
    return total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deepnoise_cost", type=float, required=True, help="DeepNoise/plain step")
    parser.add_argument(
        "--wide_cost",
        type=float,
        default=0.0,
        help="Xception-Wide step cost in Xception steps; 0 = their conv multiply-add ratio",
    )
    parser.add_argument("--epochs", type=int, default=160)
    parser.add_argument("--labelled_share", type=float, default=0.5)
    parser.add_argument("--validation_sites", type=int, default=4 * 4 * 308 * 2)
    parser.add_argument("--gpus", type=int, default=4)
    _report.add_output_arguments(parser)
    arguments = parser.parse_args(argv)

    from deepnoise_tf import models

    macs = {
        name: conv_multiply_adds(models.build(name, (512, 512, 6)))
        for name in ("xception", "xception_wide")
    }
    mac_ratio = macs["xception_wide"] / macs["xception"]
    wide_cost = arguments.wide_cost or mac_ratio
    rows_per_epoch = RXRX1_TRAIN_WELLS / arguments.labelled_share
    rows = []
    totals = {}
    for precision, plain_rate in H100_TRAIN.items():
        for name, model_cost in (("xception", 1.0), ("xception_wide", wide_cost)):
            rate = plain_rate / (arguments.deepnoise_cost * model_cost)
            train_hours = arguments.epochs * rows_per_epoch / rate / 3600
            eval_hours = (
                arguments.epochs
                * arguments.validation_sites
                * model_cost
                / H100_FORWARD[precision]
                / 3600
            )
            hours = train_hours + eval_hours
            totals[precision] = totals.get(precision, 0.0) + hours
            rows.append(
                (
                    name,
                    precision,
                    f"{model_cost:.2f}",
                    f"{rate:.0f}",
                    f"{train_hours:.1f}",
                    f"{eval_hours:.1f}",
                    f"{hours:.1f}",
                    f"{hours / arguments.gpus:.1f}",
                )
            )
    summary = (
        f"projection_summary epochs={arguments.epochs} rows_per_epoch={rows_per_epoch:.0f} "
        f"deepnoise_cost={arguments.deepnoise_cost:g} wide_cost={wide_cost:.2f} "
        + " ".join(
            f"both_models_{precision}_gpu_hours={hours:.0f}" for precision, hours in totals.items()
        )
    )
    for row in rows:
        print("projection " + " ".join(row), flush=True)
    print(summary, flush=True)
    bullets = [
        f"- schedule: {arguments.epochs} epochs x 2 models; an epoch = {RXRX1_TRAIN_WELLS:,} "
        f"labelled wells (one site each) at labelled share {arguments.labelled_share:g} = "
        f"{rows_per_epoch:,.0f} rows; DeepNoise step = {arguments.deepnoise_cost:g} plain steps "
        f"per row (CPU ratio, benchmarks/train.py); Xception-Wide = {wide_cost:.2f} x Xception "
        f"(conv multiply-adds at 512 px: {macs['xception_wide'] / 1e9:.1f} vs "
        f"{macs['xception'] / 1e9:.1f} G per image, ratio {mac_ratio:.2f})",
        "- per-GPU rates: H100 plain step, Xception 512 px batch 32 (benchmarks/model.py): "
        + ", ".join(f"{p} {r:.0f} img/s" for p, r in H100_TRAIN.items())
        + f"; evaluation: {arguments.validation_sites:,} validation sites per epoch at the H100 "
        "forward rate; linear scaling over "
        f"{arguments.gpus} GPUs; not included: pseudo-label refreshes, per-cell-type fine-tuning, "
        "test-set inference",
    ]
    body = _report.table(
        (
            "model",
            "precision",
            "cost vs Xception",
            "DeepNoise rows/s per GPU",
            "train GPU-h",
            "eval GPU-h",
            "GPU-h",
            f"wall-clock h on {arguments.gpus} GPUs",
        ),  # fmt: skip
        rows,
    )
    body += [
        "",
        "Both models: "
        + ", ".join(
            f"{precision} {hours:.0f} GPU-hours ({hours / arguments.gpus:.0f} h on "
            f"{arguments.gpus} H100s)"
            for precision, hours in totals.items()
        )
        + ".",
    ]
    title = f"Projection: the paper's schedule in H100 GPU-hours, benchmarks/projection.py ({_report.timestamp()})"
    _report.publish(arguments, title, bullets, body, script=__file__, argv=argv)


if __name__ == "__main__":
    main()
