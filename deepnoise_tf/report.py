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

import numpy as np
import pandas as pd

REPORT_FOLDER = "report"
EXPORT_FROM_CHECKPOINT = "checkpoint_export"  # inside the workdir, when training wrote no export

# ------------------------------------------------------------------------------------------------
# Training curves (metrics.csv)



def save_figure(figure, path) -> pathlib.Path:
    """Writes a matplotlib figure as a PNG (creating its folder) and releases it."""
    pyplot = import_pyplot()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
    return path

def read_metrics(path: str | pathlib.Path) -> pd.DataFrame:
    """`metrics.csv` of a run, one row per epoch in order.

    A resumed run appends to the file; an epoch logged twice (killed between the log line and the
    backup) keeps its last row.
    """
    metrics = pd.read_csv(path)
    if "epoch" not in metrics.columns:
        raise ValueError(f"{path} has no 'epoch' column (columns: {list(metrics.columns)})")
    metrics = metrics.drop_duplicates("epoch", keep="last").sort_values("epoch")
    return metrics.reset_index(drop=True)


def metric_kind(name: str) -> str:
    """`accuracy`, `loss` or `schedule` (learning rate, consistency weight, anything else)."""
    if name.endswith("accuracy"):
        return "accuracy"
    if name.endswith("loss"):
        return "loss"
    return "schedule"


def metrics_summary(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per metric: the last value, the best (max accuracy, min loss) and its 1-based epoch."""
    rows = []
    for name in metrics.columns:
        if name == "epoch":
            continue
        values = pd.to_numeric(metrics[name], errors="coerce")
        kind = metric_kind(name)
        if values.isna().all():
            continue
        if kind == "schedule":
            best, best_epoch = np.nan, np.nan
        else:
            index = values.idxmax() if kind == "accuracy" else values.idxmin()
            best, best_epoch = float(values[index]), int(metrics["epoch"][index]) + 1
        rows.append((name, kind, float(values.iloc[-1]), best, best_epoch))
    summary = pd.DataFrame(rows, columns=["metric", "kind", "last", "best", "best_epoch"])
    summary["best_epoch"] = summary["best_epoch"].astype("Int64")  # schedules have none
    return summary


def import_pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on training machines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def _style(name: str) -> dict:
    """Teacher solid, student dashed; validation thick, training thin (Fig. 5 reads the same way)."""
    style = {"linewidth": 2.0 if name.startswith("val_") else 1.2}
    if "student" in name:
        style["linestyle"] = "--"
    return style


def plot_training_curves(metrics: pd.DataFrame, path: str | pathlib.Path) -> pathlib.Path:
    """Accuracy, losses (log scale) and schedules against the 1-based epoch, one panel each."""
    pyplot = import_pyplot()
    kinds = {"accuracy": [], "loss": [], "schedule": []}
    for name in metrics.columns:
        values = pd.to_numeric(metrics[name], errors="coerce")
        kind = metric_kind(name)
        if name == "epoch" or values.isna().all():
            continue
        if kind != "accuracy" and not (values.fillna(0) != 0).any():
            continue  # an unused term (no teacher, no pseudo labels) is identically zero
        kinds[kind].append(name)
    panels = [kind for kind, names in kinds.items() if names]
    figure, axes = pyplot.subplots(1, max(1, len(panels)), figsize=(5.0 * max(1, len(panels)), 4.0))
    axes = np.atleast_1d(axes)
    epochs = metrics["epoch"].to_numpy() + 1
    titles = {
        "accuracy": "accuracy (val_ = held-out experiments)",
        "loss": "training losses",
        "schedule": "schedules",
    }
    for axis, kind in zip(axes, panels, strict=False):
        for name in kinds[kind]:
            values = pd.to_numeric(metrics[name], errors="coerce").to_numpy(dtype=float)
            axis.plot(epochs, values, marker="o", markersize=3, label=name, **_style(name))
        if kind == "loss":
            axis.set_yscale("log")
        if kind == "accuracy":
            axis.set_ylim(0, 1)
        axis.set_title(titles[kind])
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path)


# ------------------------------------------------------------------------------------------------
# Evaluation of a workdir on its validation experiments


def workdir_export(workdir: str | pathlib.Path):
    """The run's SavedModel as a `predict.LoadedExport`.

    Uses `DIR/export` (the best checkpoint, written at the end of training); a run trained with
    `train.export=False` is exported once from its checkpoint to `DIR/checkpoint_export`.
    """
    from deepnoise_tf import ensemble, predict

    workdir = pathlib.Path(workdir)
    path = workdir / "export"
    if not (path / "saved_model.pb").is_file():
        path = workdir / EXPORT_FROM_CHECKPOINT
        if not (path / "saved_model.pb").is_file():
            ensemble.build_ensemble([workdir], path)
    return predict.load_export(str(path))


def _data_dir(config) -> str | None:
    return config.data.data_dir or None  # "" = TFDS's default folder


def experiment_well_logits(
    export, config, *, split: str = "train", experiments=None, batch_size: int = 64, progress=False
) -> tuple[pd.DataFrame, np.ndarray]:
    """Site-averaged logits `[W, 1139]` of every well of `experiments` (default: the validation ones).

    Returns `(wells, logits)` as `predict.aggregate_wells` does (`label` -1 where unknown).
    """
    import tensorflow as tf

    from deepnoise_tf import data, predict

    experiments = tuple(config.data.val_experiments if experiments is None else experiments)
    if not experiments:
        raise ValueError("no experiments to evaluate (config.data.val_experiments is empty)")
    require_prepared(config)
    sites = predict.site_dataset(
        _data_dir(config), config.data.builder, split, export.normalization, batch_size
    )
    sites = data.select_experiments(
        sites.unbatch(), include=experiments, cell_types=tuple(config.data.cell_types)
    )
    sites = sites.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    table, site_logits, _ = predict.predict_sites(export, sites, progress=progress)
    return predict.aggregate_wells(table, site_logits)


def _register_builder() -> None:
    try:
        import tfds_rxrx1  # noqa: F401  (registers the rxrx1 builder; TFDS can read without it)
    except ImportError:
        pass


def require_prepared(config) -> None:
    """Fails unless the config's data set is built: `tfds.load` would otherwise start a download."""
    import tensorflow_datasets as tfds

    _register_builder()
    builder = tfds.builder(config.data.builder, data_dir=_data_dir(config))
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"{config.data.builder} is not built in {builder.data_dir}: build it first "
            "(`tfds build rxrx1 --imports tfds_rxrx1 --manual_dir ...`)"
        )


def training_sirna_groups(config, split: str = "train") -> np.ndarray | None:
    """The siRNA groups of the plate design, from the labels of the *training* experiments only.

    The validation experiments' labels are what gets scored, so they must not feed the plate prior.
    """
    import tensorflow_datasets as tfds

    from deepnoise_tf import postprocess

    require_prepared(config)
    dataset = tfds.load(
        config.data.builder,
        split=split,
        data_dir=_data_dir(config),
        download=False,
        decoders=tfds.decode.PartialDecoding({"experiment": True, "plate": True, "sirna": True}),
    )
    held_out = set(config.data.val_experiments)
    experiments, plates, sirnas = [], [], []
    for batch in dataset.batch(8192).as_numpy_iterator():
        names = np.asarray([name.decode() for name in batch["experiment"]])
        keep = ~np.isin(names, list(held_out))
        experiments.append(names[keep])
        plates.append(batch["plate"][keep])
        sirnas.append(batch["sirna"][keep])
    if not experiments:
        return None
    groups = postprocess.sirna_groups_from_labels(
        np.concatenate(experiments), np.concatenate(plates), np.concatenate(sirnas)
    )
    return groups if (groups >= 0).any() else None


def well_predictions(
    wells: pd.DataFrame, logits: np.ndarray, *, method: str = "assign", sirna_groups=None
) -> pd.DataFrame:
    """The treatment wells with `raw_prediction` (argmax over the siRNAs) and `sirna` (plate prior).

    Without `sirna_groups` the plate prior still balances each plate over all siRNAs.
    """
    from deepnoise_tf import postprocess

    treatment = (wells["well_type"] == "treatment").to_numpy()
    table = wells[treatment].reset_index(drop=True)
    log_probs = postprocess.sirna_log_probs(np.asarray(logits)[treatment])
    table["raw_prediction"] = np.argmax(log_probs, axis=1)
    table["sirna"] = postprocess.postprocess_predictions(
        table, log_probs, method=method, sirna_groups=sirna_groups
    )
    return table


def cell_type_accuracy(
    wells: pd.DataFrame, logits: np.ndarray, *, method: str = "assign", sirna_groups=None
) -> pd.DataFrame:
    """Accuracy per cell type and overall (`group`), before (`raw`) and after the plate prior.

    Columns: stage, group, wells, correct, accuracy (`predict.accuracy_report`).
    """
    from deepnoise_tf import predict

    table = well_predictions(wells, logits, method=method, sirna_groups=sirna_groups)
    report = predict.accuracy_report(table, method)
    if report is None:
        raise ValueError("no evaluated well has a known label")
    return report


def plot_cell_type_accuracy(
    table: pd.DataFrame, path: str | pathlib.Path, title: str = ""
) -> pathlib.Path:
    """Grouped bars: one group per cell type (and overall), one bar per stage."""
    pyplot = import_pyplot()
    stages = list(dict.fromkeys(table["stage"]))
    groups = list(dict.fromkeys(table["group"]))
    figure, axis = pyplot.subplots(figsize=(1.6 * len(groups) + 2.0, 4.0))
    width = 0.8 / len(stages)
    positions = np.arange(len(groups))
    for index, stage in enumerate(stages):
        part = table[table["stage"] == stage].set_index("group").reindex(groups)
        values = 100.0 * part["accuracy"].to_numpy(dtype=float)
        bars = axis.bar(
            positions + (index - (len(stages) - 1) / 2) * width, values, width, label=stage
        )
        axis.bar_label(bars, labels=[f"{value:.1f}" for value in values], fontsize=7)
    axis.set_xticks(positions, groups)
    axis.set_ylabel("top-1 accuracy (%)")
    axis.set_ylim(0, 105)
    axis.set_title(title or "validation accuracy per cell type")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path)


# ------------------------------------------------------------------------------------------------
# The report


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
    from deepnoise_tf import ensemble

    workdir = pathlib.Path(workdir)
    output = pathlib.Path(output) if output else workdir / REPORT_FOLDER
    output.mkdir(parents=True, exist_ok=True)
    written: dict[str, pathlib.Path] = {}
    notes = []
    summary = None
    if (workdir / "metrics.csv").is_file():
        metrics = read_metrics(workdir / "metrics.csv")
        written["training_curves"] = plot_training_curves(metrics, output / "training_curves.png")
        summary = metrics_summary(metrics)
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
        config = ensemble.workdir_config(workdir)
        export = workdir_export(workdir)
        wells, logits = experiment_well_logits(
            export, config, split=split, experiments=experiments, progress=progress
        )
        groups = training_sirna_groups(config)
        accuracy = cell_type_accuracy(wells, logits, method=method, sirna_groups=groups)
        accuracy.to_csv(output / "cell_type_accuracy.csv", index=False)
        written["cell_type_accuracy"] = output / "cell_type_accuracy.csv"
        evaluated = ", ".join(experiments or config.data.val_experiments)
        written["cell_type_chart"] = plot_cell_type_accuracy(
            accuracy, output / "cell_type_accuracy.png", title=f"{workdir.name}: {evaluated}"
        )
        print(f"[report] evaluated {len(wells)} wells of {evaluated}", flush=True)
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
            "`raw`: argmax over the siRNAs; the other stage adds the plate prior (siRNA groups from "
            "the training experiments, plate rotation inferred from the predictions). The validation "
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
    parser = argparse.ArgumentParser(
        prog="python -m deepnoise_tf.report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--workdir", required=True, help="a deepnoise_tf.train workdir")
    parser.add_argument("--output", default="", help="default: WORKDIR/report")
    parser.add_argument(
        "--split", default="train", help="split holding the experiments to evaluate"
    )
    parser.add_argument(
        "--experiments", nargs="*", default=None, help="default: the config's val_experiments"
    )
    parser.add_argument("--postprocess", choices=("assign", "balance", "none"), default="assign")
    parser.add_argument("--evaluate", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)
    return parser.parse_args(argv)


def main(argv=None) -> dict[str, pathlib.Path]:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
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
