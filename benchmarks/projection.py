"""GPU-hours of the paper's full training schedule, projected from the measured step rates.

Nothing is trained: the projection multiplies measured rates by the schedule's work. Assumptions,
each a flag (defaults are the numbers in BENCHMARKS.md):
- schedule (paper, "Training details"): 160 epochs for each of 2 models, Xception and
  Xception-Wide, at 512 px;
  an epoch is one pass over RxRx1's 36,515 labelled train wells, one site per well;
- mean-teacher batches hold labelled and unlabelled (test) rows at a labelled share of 1/2, so an
  epoch carries 36,515 / (1/2) = 73,030 rows, each costing one DeepNoise step row;
- per-GPU plain-step and forward rates at 512 px, batch 32, of the card named by `--card`
  (benchmarks/model.py, JAX backend; `MEASURED` below, as in BENCHMARKS.md): H100 Xception only,
  H200 both models;
- the DeepNoise step (student on two views, teacher forward, EMA) costs `--deepnoise_cost` plain
  steps per row: the CPU ratio of benchmarks/train.py (same batch, both modes), taken to carry
  over to the GPU;
- a model the card has no row of (Xception-Wide on the H100) runs at the Xception rate divided by
  the wide/Xception time ratio measured on a card that has both (H200: 1.70 float32, 1.54 bf16),
  or by `--wide_cost`; the conv multiply-add ratio (2.19, printed) overstates it;
- evaluation: the validation experiments' sites (`--validation_sites`) once per epoch at the card's
  forward rate, without test-time augmentation;
- data parallelism over `--gpus` GPUs scales linearly (wall-clock = GPU-hours / GPUs) and the input
  pipeline keeps up (benchmarks/pipeline.py). Not included: pseudo-label refreshes, per-cell-type
  fine-tuning (docs/method.md §7), the ensemble's test-set inference.

    python benchmarks/projection.py --deepnoise_cost 2.9 --card H100
    python benchmarks/projection.py --deepnoise_cost 2.9 --card H200
"""

from __future__ import annotations

import argparse

import _report

RXRX1_TRAIN_WELLS = 36_515
MODELS = ("xception", "xception_wide")
PRECISIONS = ("float32", "mixed_bfloat16")
# images/s per GPU, 512 px, batch 32, benchmarks/model.py on the JAX backend (BENCHMARKS.md):
# "train" = plain step (forward + backward + update), "forward" = inference.
MEASURED = {
    "H100": {  # 2026-11-25, NVIDIA H100 80GB HBM3; the run ended before the wide rows
        "train": {"xception": {"float32": 370.0, "mixed_bfloat16": 644.0}},
        "forward": {"xception": {"float32": 1488.0, "mixed_bfloat16": 2732.0}},
    },
    "H200": {  # 2026-11-26, NVIDIA H200
        "train": {
            "xception": {"float32": 489.2, "mixed_bfloat16": 771.2},
            "xception_wide": {"float32": 288.6, "mixed_bfloat16": 502.4},
        },
        "forward": {
            "xception": {"float32": 2055.9, "mixed_bfloat16": 2973.8},
            "xception_wide": {"float32": 1231.2, "mixed_bfloat16": 2002.5},
        },
    },
}


def measured_wide_cost(kind: str, precision: str) -> float | None:
    """Xception-Wide / Xception time per image from a card that has rows of both, else None."""
    for card in MEASURED.values():
        rates = card[kind]
        if all(name in rates for name in MODELS):
            return rates["xception"][precision] / rates["xception_wide"][precision]
    return None


def model_rate(card: str, kind: str, model: str, precision: str, wide_cost: float) -> float:
    """The card's measured rate, or Xception's divided by `wide_cost` where the wide row is missing."""
    rates = MEASURED[card][kind]
    if model in rates:
        return rates[model][precision]
    return rates["xception"][precision] / wide_cost


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
    parser.add_argument("--card", choices=sorted(MEASURED), default="H100")
    parser.add_argument(
        "--wide_cost",
        type=float,
        default=0.0,
        help="Xception-Wide time in Xception times where the card has no wide row; 0 = the ratio "
        "measured on a card with both",
    )
    parser.add_argument("--epochs", type=int, default=160)
    parser.add_argument("--labelled_share", type=float, default=0.5)
    parser.add_argument("--validation_sites", type=int, default=4 * 4 * 308 * 2)
    parser.add_argument("--gpus", type=int, default=4)
    _report.add_output_arguments(parser)
    arguments = parser.parse_args(argv)

    from deepnoise_tf import models

    macs = {name: conv_multiply_adds(models.build(name, (512, 512, 6))) for name in MODELS}
    mac_ratio = macs["xception_wide"] / macs["xception"]
    card = arguments.card
    rows_per_epoch = RXRX1_TRAIN_WELLS / arguments.labelled_share
    rows, totals = [], {}
    for precision in PRECISIONS:
        wide_costs = {
            kind: arguments.wide_cost or measured_wide_cost(kind, precision) or mac_ratio
            for kind in ("train", "forward")
        }
        for name in MODELS:
            measured = name in MEASURED[card]["train"]
            plain_rate = model_rate(card, "train", name, precision, wide_costs["train"])
            forward_rate = model_rate(card, "forward", name, precision, wide_costs["forward"])
            rate = plain_rate / arguments.deepnoise_cost
            train_hours = arguments.epochs * rows_per_epoch / rate / 3600
            eval_hours = arguments.epochs * arguments.validation_sites / forward_rate / 3600
            hours = train_hours + eval_hours
            totals[precision] = totals.get(precision, 0.0) + hours
            source = "measured" if measured else f"Xception / {wide_costs['train']:.2f}"
            rows.append(
                (
                    name,
                    precision,
                    f"{plain_rate:.0f}",
                    source,
                    f"{rate:.0f}",
                    f"{train_hours:.1f}",
                    f"{eval_hours:.1f}",
                    f"{hours:.1f}",
                    f"{hours / arguments.gpus:.1f}",
                )
            )
    summary = (
        f"projection_summary card={card} epochs={arguments.epochs} "
        f"rows_per_epoch={rows_per_epoch:.0f} deepnoise_cost={arguments.deepnoise_cost:g} "
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
        "per row (CPU ratio, benchmarks/train.py)",
        f"- per-GPU rates: {card} plain step and forward pass at 512 px, batch 32 "
        "(benchmarks/model.py); a model without a row on this card runs at Xception's rate over "
        "the wide/Xception time ratio measured on a card with both (conv multiply-adds would say "
        f"{mac_ratio:.2f}: {macs['xception_wide'] / 1e9:.1f} vs {macs['xception'] / 1e9:.1f} G per "
        f"image); evaluation: {arguments.validation_sites:,} validation sites per epoch at the "
        f"forward rate; linear scaling over {arguments.gpus} GPUs; not included: pseudo-label "
        "refreshes, per-cell-type fine-tuning, test-set inference",
    ]
    body = _report.table(
        (
            "model",
            "precision",
            "plain img/s per GPU",
            "rate source",
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
            f"{arguments.gpus} {card}s)"
            for precision, hours in totals.items()
        )
        + ".",
    ]
    title = (
        f"Projection: the paper's schedule in {card} GPU-hours, benchmarks/projection.py "
        f"({_report.timestamp()})"
    )
    _report.publish(arguments, title, bullets, body, script=__file__, argv=argv)


if __name__ == "__main__":
    main()
