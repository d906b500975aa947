"""GPU-hours of the paper's full training schedule, projected from the measured step rates.

Nothing is trained: the projection multiplies measured rates by the schedule's work. Assumptions,
each a flag (defaults are the numbers in BENCHMARKS.md):
- schedule (paper, "Training details": 160 epochs in all; configs/deepnoise.py): for each of 2
  models, Xception and Xception-Wide, at 512 px, `--epochs` (160) epochs across all rounds, of
  which the first `--consistency_start_fraction` (0.25: 40 epochs, the config's labelled-only
  quarter) have no consistency loss and the last `--pseudo_label_rounds` (8) x `--retrain_epochs`
  (10) are the pseudo-label rounds (round 0 is the first 80); an epoch is one pass over RxRx1's
  36,515 labelled train wells, one site per well;
- mean-teacher batches hold labelled and unlabelled (test) rows at a labelled share of 1/2, so an
  epoch carries 36,515 / (1/2) = 73,030 rows (the labelled-only epochs too: the mixed pipeline
  delivers them, the step skips the unlabelled rows' passes);
- per-GPU plain-step and forward rates at 512 px, batch 32, of the card named by `--card`
  (benchmarks/model.py, JAX backend; `MEASURED` below, as in BENCHMARKS.md): H100 Xception only,
  H200 both models;
- a row of the consistency epochs and the pseudo-label rounds costs `--deepnoise_cost` plain-step
  rows, a row of the labelled-only epochs `--labelled_only_cost`: the CPU ratios of
  benchmarks/train.py (same batch, modes interleaved), taken to carry over to the GPU;
- a model the card has no row of (Xception-Wide on the H100) runs at the Xception rate divided by
  the wide/Xception time ratio measured on a card that has both (H200: 1.70 float32, 1.54 bf16),
  or by `--wide_cost`; the conv multiply-add ratio (2.19, printed) overstates it;
- evaluation: the validation sites (`--validation_sites`) once per training epoch at the card's
  forward rate, without test-time augmentation; after round 0 and each pseudo-label round, the
  validation and test sites (`--test_sites`) with `--tta_views` (8) dihedral views each;
- data parallelism over `--gpus` GPUs scales linearly (wall-clock = GPU-hours / GPUs) and the input
  pipeline keeps up (benchmarks/pipeline.py). Not included: per-cell-type fine-tuning
  (docs/method.md §7), the ensemble's post-processing, checkpoints, start-up and compilation.

    python benchmarks/projection.py --deepnoise_cost 1.95 --labelled_only_cost 0.85 --card H100
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


def schedule_hours(
    plain_rate: float,
    forward_rate: float,
    *,
    rows_per_epoch: float,
    epochs: int,
    labelled_only_epochs: float,
    retrain_epochs: int,
    rounds: int,
    deepnoise_cost: float,
    labelled_only_cost: float,
    validation_sites: int,
    test_sites: int,
    tta_views: int,
) -> dict[str, float]:
    """GPU-hours of one model's schedule by part: labelled-only, consistency and retraining epochs,
    per-epoch validation, and the (TTA) evaluations after round 0 and each pseudo-label round.

    `epochs` counts every round's: round 0 trains the labelled-only epochs and then the consistency
    epochs, the `rounds` x `retrain_epochs` retraining epochs come last.
    """
    retraining_epochs = rounds * retrain_epochs
    consistency_epochs = epochs - labelled_only_epochs - retraining_epochs
    if consistency_epochs < 0:
        raise ValueError(
            f"{epochs} epochs cannot hold {labelled_only_epochs:g} labelled-only and "
            f"{retraining_epochs} retraining epochs"
        )
    row_seconds = rows_per_epoch / plain_rate
    parts = {
        "labelled_only": labelled_only_epochs * row_seconds * labelled_only_cost,
        "consistency": consistency_epochs * row_seconds * deepnoise_cost,
        "pseudo_label_rounds": retraining_epochs * row_seconds * deepnoise_cost,
        "validation": epochs * validation_sites / forward_rate,
        "round_evaluation": (rounds + 1)
        * (validation_sites + test_sites)
        * tta_views
        / forward_rate,
    }
    return {part: seconds / 3600 for part, seconds in parts.items()}


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deepnoise_cost", type=float, required=True, help="DeepNoise/plain step")
    parser.add_argument(
        "--labelled_only_cost", type=float, default=1.0, help="labelled-only/plain step"
    )
    parser.add_argument("--card", choices=sorted(MEASURED), default="H100")
    parser.add_argument(
        "--wide_cost",
        type=float,
        default=0.0,
        help="Xception-Wide time in Xception times where the card has no wide row; 0 = the ratio "
        "measured on a card with both",
    )
    parser.add_argument("--epochs", type=int, default=160, help="all rounds' epochs")
    parser.add_argument("--consistency_start_fraction", type=float, default=0.25)
    parser.add_argument("--pseudo_label_rounds", type=int, default=8)
    parser.add_argument("--retrain_epochs", type=int, default=10)
    parser.add_argument("--labelled_share", type=float, default=0.5)
    parser.add_argument("--validation_sites", type=int, default=4 * 4 * 308 * 2)
    parser.add_argument("--test_sites", type=int, default=2 * 19_897, help="RxRx1's test wells x 2")
    parser.add_argument("--tta_views", type=int, default=8)
    parser.add_argument("--gpus", type=int, default=4)
    _report.add_output_arguments(parser)
    return parser


def section(arguments, schedule: dict, rows: list, totals: dict, macs: dict):
    """(bullets, body) of the BENCHMARKS.md section: the assumptions, the table, the totals."""
    card, rows_per_epoch = arguments.card, schedule["rows_per_epoch"]
    mac_ratio = macs["xception_wide"] / macs["xception"]
    labelled_only = schedule["labelled_only_epochs"]
    retraining = arguments.pseudo_label_rounds * arguments.retrain_epochs
    bullets = [
        f"- schedule per model: {arguments.epochs} epochs in all: round 0 "
        f"{arguments.epochs - retraining:g} ({labelled_only:g} labelled-only at "
        f"{arguments.labelled_only_cost:g} plain steps per row, "
        f"{arguments.epochs - retraining - labelled_only:g} with consistency at "
        f"{arguments.deepnoise_cost:g}), then {arguments.pseudo_label_rounds} "
        f"pseudo-label rounds x {arguments.retrain_epochs} epochs at {arguments.deepnoise_cost:g}; "
        f"an epoch = {RXRX1_TRAIN_WELLS:,} labelled wells (one site each) at labelled share "
        f"{arguments.labelled_share:g} = {rows_per_epoch:,.0f} rows; step costs: CPU ratios of "
        "benchmarks/train.py, taken to carry over to the GPU",
        f"- per-GPU rates: {card} plain step and forward pass at 512 px, batch 32 "
        "(benchmarks/model.py); a model without a row on this card runs at Xception's rate over "
        "the wide/Xception time ratio measured on a card with both (conv multiply-adds would say "
        f"{mac_ratio:.2f}: {macs['xception_wide'] / 1e9:.1f} vs {macs['xception'] / 1e9:.1f} G per "
        f"image); validation: {arguments.validation_sites:,} sites per training epoch at the "
        f"forward rate; round evaluation: validation + {arguments.test_sites:,} test sites x "
        f"{arguments.tta_views} TTA views after each of {arguments.pseudo_label_rounds + 1} rounds; "
        f"linear scaling over {arguments.gpus} GPUs; not included: per-cell-type fine-tuning, "
        "post-processing, checkpoints, start-up and compilation",
    ]
    body = _report.table(
        (
            "model",
            "precision",
            "plain img/s per GPU",
            "rate source",
            "labelled-only GPU-h",
            "consistency GPU-h",
            "pseudo-label rounds GPU-h",
            "validation GPU-h",
            "round evaluation (TTA) GPU-h",
            "GPU-h",
            f"wall-clock h on {arguments.gpus} GPUs",
        ),  # fmt: skip
        rows,
    )
    body += [
        "",
        "Both models: "
        + ", ".join(
            f"{precision} {hours:.0f} GPU-hours ({hours / arguments.gpus:.1f} h on "
            f"{arguments.gpus} {card}s)"
            for precision, hours in totals.items()
        )
        + ".",
    ]
    return bullets, body


def main(argv=None):
    arguments = build_parser().parse_args(argv)

    from deepnoise_tf import models

    macs = {name: conv_multiply_adds(models.build(name, (512, 512, 6))) for name in MODELS}
    mac_ratio = macs["xception_wide"] / macs["xception"]
    card = arguments.card
    rows_per_epoch = RXRX1_TRAIN_WELLS / arguments.labelled_share
    schedule = dict(
        rows_per_epoch=rows_per_epoch,
        epochs=arguments.epochs,
        labelled_only_epochs=min(arguments.consistency_start_fraction, 1.0) * arguments.epochs,
        retrain_epochs=arguments.retrain_epochs,
        rounds=arguments.pseudo_label_rounds,
        deepnoise_cost=arguments.deepnoise_cost,
        labelled_only_cost=arguments.labelled_only_cost,
        validation_sites=arguments.validation_sites,
        test_sites=arguments.test_sites,
        tta_views=arguments.tta_views,
    )
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
            parts = schedule_hours(plain_rate, forward_rate, **schedule)
            hours = sum(parts.values())
            totals[precision] = totals.get(precision, 0.0) + hours
            source = "measured" if measured else f"Xception / {wide_costs['train']:.2f}"
            rows.append(
                (
                    name,
                    precision,
                    f"{plain_rate:.0f}",
                    source,
                    *(f"{value:.1f}" for value in parts.values()),
                    f"{hours:.1f}",
                    f"{hours / arguments.gpus:.1f}",
                )
            )
    summary = (
        f"projection_summary card={card} epochs={arguments.epochs} "
        f"rows_per_epoch={rows_per_epoch:.0f} deepnoise_cost={arguments.deepnoise_cost:g} "
        f"labelled_only_cost={arguments.labelled_only_cost:g} "
        + " ".join(
            f"both_models_{precision}_gpu_hours={hours:.1f} wall_h_on_{arguments.gpus}="
            f"{hours / arguments.gpus:.1f}"
            for precision, hours in totals.items()
        )
    )
    for row in rows:
        print("projection " + " ".join(row), flush=True)
    print(summary, flush=True)
    bullets, body = section(arguments, schedule, rows, totals, macs)
    title = (
        f"Projection: the paper's schedule in {card} GPU-hours, benchmarks/projection.py "
        f"({_report.timestamp()})"
    )
    _report.publish(arguments, title, bullets, body, script=__file__, argv=argv)


if __name__ == "__main__":
    main()
