"""Charts: training curves (paper, Fig. 5), accuracy per cell type, the Fig. 3A/3B bars (with intervals).

Every function draws from tables the other modules compute and writes one PNG; matplotlib runs on
the file-only Agg backend (training machines have no display).
"""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd

from deepnoise_tf import workdir


def import_pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on training machines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def save_figure(figure, path) -> pathlib.Path:
    """Writes a matplotlib figure as a PNG (creating its folder) and releases it."""
    pyplot = import_pyplot()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
    return path


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
        kind = workdir.metric_kind(name)
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
        "accuracy": "accuracy (val_: held-out experiments; _well_: per well, treatments)",
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


def plot_ablation_figure(
    table: pd.DataFrame, steps, labels, paper_accuracy: dict, path, title: str
) -> pathlib.Path:
    """Bars of our accuracy next to the paper's (RxRx1), the linear floor as a dashed line.

    `table` has `step` and `accuracy` columns; `paper_accuracy` maps each step to its percentage.
    """
    pyplot = import_pyplot()
    indexed = table.set_index("step")
    ours = [100 * indexed["accuracy"].get(name, np.nan) for name in steps]
    paper = [paper_accuracy[name] for name in steps]
    figure, axis = pyplot.subplots(figsize=(1.5 * len(steps) + 2.5, 4.2))
    positions = np.arange(len(steps))
    bars = axis.bar(positions - 0.2, ours, 0.4, label="this run", color="#3a7dc9")
    axis.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.1f}" for v in ours], fontsize=8)
    reference = axis.bar(
        positions + 0.2, paper, 0.4, label="paper (RxRx1)", color="#cccccc", hatch="//"
    )
    axis.bar_label(reference, labels=[f"{v:.1f}" for v in paper], fontsize=8, color="#555555")
    if "linear_floor" in indexed.index:
        floor = 100 * indexed.loc["linear_floor", "accuracy"]
        axis.axhline(
            floor,
            color="#c0392b",
            linestyle="--",
            linewidth=1.2,
            label=f"linear floor ({floor:.1f})",
        )
    return _finish_percent_bars(figure, axis, positions, labels, path, title=title,
                                ylabel="top-1 accuracy (%)", legend_columns=3)  # fmt: skip


FLOOR_STYLES = {"linear_floor": ("#c0392b", "--"), "feature_baseline": ("#8e44ad", ":")}


def plot_interval_figure(summary: pd.DataFrame, steps, labels, path, title: str) -> pathlib.Path:
    """Bars of each step's mean over seeds with its interval as error bars; floors as lines and bands.

    `summary` has `step`, `mean`, `low`, `high` (fractions; `ablation_statistics.bootstrap_interval`).
    Floors (`FLOOR_STYLES`) in `summary` are drawn as a horizontal line at their mean with their
    interval shaded. Missing steps leave an empty slot.
    """
    pyplot = import_pyplot()
    indexed = summary.set_index("step")
    rows = indexed.reindex(list(steps))
    mean = 100 * rows["mean"].to_numpy(dtype=float)
    low, high = 100 * rows["low"].to_numpy(dtype=float), 100 * rows["high"].to_numpy(dtype=float)
    figure, axis = pyplot.subplots(figsize=(1.3 * len(steps) + 2.5, 4.2))
    positions = np.arange(len(steps))
    axis.bar(
        positions, np.nan_to_num(mean), 0.6, color="#3a7dc9", label="mean over seeds", zorder=2
    )
    axis.errorbar(positions, mean, yerr=[mean - low, high - mean], fmt="none", ecolor="black",
                  capsize=4, linewidth=1.2, label="95% bootstrap interval", zorder=3)  # fmt: skip
    for position, value, top in zip(positions, mean, high, strict=True):
        if not np.isnan(value):  # above the error bar, so the two never overlap
            axis.text(position, top + 1.5, f"{value:.1f}", ha="center", va="bottom", fontsize=8)
    for name, (color, linestyle) in FLOOR_STYLES.items():
        if name not in indexed.index:
            continue
        floor = 100 * indexed.loc[name, ["mean", "low", "high"]].to_numpy(dtype=float)
        axis.axhline(floor[0], color=color, linestyle=linestyle, linewidth=1.2, zorder=4,
                     label=f"{name.replace('_', ' ')} ({floor[0]:.1f})")  # fmt: skip
        axis.axhspan(floor[1], floor[2], color=color, alpha=0.12, linewidth=0, zorder=0)
    return _finish_percent_bars(figure, axis, positions, labels, path, title=title,
                                ylabel="treatment-well accuracy (%)", legend_columns=2)  # fmt: skip


def _finish_percent_bars(figure, axis, positions, labels, path, *, title, ylabel, legend_columns):
    """Ticks, a 0-100 % axis with room above the 100 % bars for the legend, title; saves."""
    axis.set_xticks(positions, labels)
    axis.set_ylabel(ylabel)
    axis.set_ylim(0, 125)
    axis.set_yticks(range(0, 101, 20))
    axis.set_title(title)
    axis.legend(fontsize=8, loc="upper left", ncol=legend_columns)
    figure.tight_layout()
    return save_figure(figure, path)
