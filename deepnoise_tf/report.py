"""`python -m deepnoise_tf.report --workdir DIR`: what one training run learned, as charts and tables.

From a `deepnoise_tf.train` workdir it draws the training curves of the paper's Figure 5 (student and
teacher accuracy per epoch, every loss term, the schedules) from `metrics.csv`, and evaluates the
trained model (`export/`, or the checkpoint when the run exported nothing) on the held-out
validation experiments of its config, per cell type, before and after the plate prior. Everything
goes to `DIR/report/`: `training_curves.png`, `cell_type_accuracy.png`, `cell_type_accuracy.csv`,
`metrics_summary.csv` and `summary.md`.

The validation experiments also selected the checkpoint (`train.py` keeps the best by validation
accuracy), so these accuracies are slightly optimistic, as in the authors' code.

Example:
    python -m deepnoise_tf.report --workdir runs/quickstart
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from deepnoise_tf import cli, evaluation, plots, quiet
from deepnoise_tf import workdir as workdir_lib

if TYPE_CHECKING:
    from deepnoise_tf import inference

REPORT_FOLDER = "report"
EXPORT_FROM_CHECKPOINT = "checkpoint_export"  # inside the workdir, when training wrote no export


def markdown_table(table: pd.DataFrame, float_format: str = "{:.4f}") -> str:
    """A GitHub markdown table (pandas' `to_markdown` needs `tabulate`, which we do not depend on)."""

    def cell(value):
        if value is pd.NA:
            return ""
        if isinstance(value, float | np.floating):
            return "" if np.isnan(value) else float_format.format(value)
        return str(value)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += [
        "| " + " | ".join(cell(value) for value in row) + " |"
        for row in table.itertuples(index=False)
    ]
    return "\n".join(lines)


def run_predictor(workdir: pathlib.Path) -> inference.Predictor:
    """The run's SavedModel (`DIR/export`); a run trained with `train.export=False` is exported once
    from its checkpoint to `DIR/checkpoint_export`."""
    from deepnoise_tf import export, inference  # TensorFlow: after quiet.configure

    path = workdir / "export"
    if not (path / "saved_model.pb").is_file():
        path = workdir / EXPORT_FROM_CHECKPOINT
        if not (path / "saved_model.pb").is_file():
            export.export_run_folders([workdir], path)
    return inference.load_export(path)


def validation_accuracy(workdir, config, *, split, experiments, method, progress) -> pd.DataFrame:
    """Accuracy per cell type, before and after the plate prior, on the held-out experiments.

    The siRNA groups come from the training experiments only: the scored labels must not feed it.
    """
    from deepnoise_tf import data, inference  # TensorFlow: after quiet.configure

    experiments = tuple(experiments or config.data.val_experiments)
    if not experiments:
        raise ValueError("no experiments to evaluate (config.data.val_experiments is empty)")
    data_dir = config.data.data_dir or None
    data.require_built(data_dir, config.data.builder)
    outputs = inference.predict_split(
        {"model": run_predictor(pathlib.Path(workdir))},
        data_dir,
        config.data.builder,
        split,
        experiments=experiments,
        cell_types=tuple(config.data.cell_types),
        progress=progress,
    )
    design = data.plate_design_from_split(
        data_dir,
        config.data.builder,
        "train",
        exclude_experiments=tuple(config.data.val_experiments),
    )
    predictions = evaluation.well_predictions(
        outputs.wells, outputs.logits["model"], method=method, plate_design=design
    )
    report = evaluation.accuracy_report(predictions, method)
    if report is None:
        raise ValueError("no evaluated well has a known label")
    return report


def write_report(
    workdir: str | pathlib.Path,
    *,
    output: str | pathlib.Path | None = None,
    evaluate: bool = True,
    split: str = "train",
    experiments=None,
    method: str = "assign",
    progress: bool = False,
) -> dict[str, pathlib.Path]:
    """Writes the report of `workdir` (see the module docstring); returns the written files by name.

    Curves need only `metrics.csv`; the per-cell-type evaluation needs `config.json` and a
    checkpoint or export, and is skipped (with a note) when they are missing.
    """
    workdir = pathlib.Path(workdir)
    output = pathlib.Path(output) if output else workdir / REPORT_FOLDER
    output.mkdir(parents=True, exist_ok=True)
    written: dict[str, pathlib.Path] = {}
    notes = []
    summary = None
    if (workdir / "metrics.csv").is_file():
        metrics = workdir_lib.read_metrics(workdir / "metrics.csv")
        written["training_curves"] = plots.plot_training_curves(
            metrics, output / "training_curves.png"
        )
        summary = workdir_lib.metrics_summary(metrics)
        summary.to_csv(output / "metrics_summary.csv", index=False)
        written["metrics_summary"] = output / "metrics_summary.csv"
        print(f"[report] {len(metrics)} epochs of {workdir / 'metrics.csv'} drawn", flush=True)
    else:
        notes.append(f"no metrics.csv in {workdir}: no training curves")

    accuracy = None
    can_evaluate = (workdir / "config.json").is_file() and (
        (workdir / "export" / "saved_model.pb").is_file() or (workdir / "checkpoints").is_dir()
    )
    if evaluate and can_evaluate:
        config = workdir_lib.read_config(workdir)
        accuracy = validation_accuracy(
            workdir, config, split=split, experiments=experiments, method=method, progress=progress
        )
        accuracy.to_csv(output / "cell_type_accuracy.csv", index=False)
        written["cell_type_accuracy"] = output / "cell_type_accuracy.csv"
        evaluated = ", ".join(experiments or config.data.val_experiments)
        written["cell_type_chart"] = plots.plot_cell_type_accuracy(
            accuracy, output / "cell_type_accuracy.png", title=f"{workdir.name}: {evaluated}"
        )
        print(
            f"[report] evaluated {int(accuracy['wells'].iloc[-1])} treatment wells of {evaluated}",
            flush=True,
        )
    elif evaluate:
        notes.append(
            f"no config.json and checkpoint/export in {workdir}: no per-cell-type accuracy"
        )

    lines = [f"# Report: `{workdir}`", ""]
    if summary is not None:
        lines += ["## Training curves", "", "![training curves](training_curves.png)", ""]
        lines += [markdown_table(summary), ""]
    if accuracy is not None:
        lines += ["## Validation accuracy per cell type (treatment wells)", ""]
        lines += ["![per cell type](cell_type_accuracy.png)", "", markdown_table(accuracy), ""]
        lines += [
            "`raw`: argmax over the siRNAs; the other stage adds the plate prior (plate design "
            "learned from the training experiments, each experiment's assignment of groups to "
            "plates inferred from the predictions). The validation "
            "experiments also chose the checkpoint, so these numbers are slightly optimistic.",
            "",
        ]
    lines += [f"- {note}" for note in notes]
    (output / "summary.md").write_text("\n".join(lines).rstrip() + "\n")
    written["summary"] = output / "summary.md"
    for note in notes:
        print(f"[report] {note}", flush=True)
    return written


def parse_arguments(argv):
    parser = cli.new_parser("python -m deepnoise_tf.report", __doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a deepnoise_tf.train workdir")
    parser.add_argument("--output", default="", help="the report folder (default: WORKDIR/report)")
    parser.add_argument(
        "--split", default="train", help="split holding the experiments to evaluate"
    )
    parser.add_argument(
        "--experiments", nargs="*", default=None, help="default: the config's val_experiments"
    )
    parser.add_argument(
        "--postprocess",
        choices=("assign", "balance", "none"),
        default="assign",
        help="the plate prior of the post-processed accuracy",
    )
    parser.add_argument(
        "--evaluate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="evaluate the model on the validation experiments (else only the training curves)",
    )
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=False, help="a progress bar"
    )
    return parser.parse_args(argv)


def main(argv=None) -> dict[str, pathlib.Path]:
    argv = sys.argv[1:] if argv is None else argv
    quiet.configure(argv)
    arguments = parse_arguments(argv)
    written = write_report(
        arguments.workdir,
        output=arguments.output or None,
        evaluate=arguments.evaluate,
        split=arguments.split,
        experiments=arguments.experiments or None,
        method=arguments.postprocess,
        progress=arguments.progress,
    )
    for name, path in written.items():
        print(f"[report] {name}: {path}", flush=True)
    return written


if __name__ == "__main__":
    main()
