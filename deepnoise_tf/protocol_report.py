"""The ablation protocol's report: `protocol.md` (tables ready for docs/ablation.md) and its figures.

Pure formatting of `ablation_protocol.summarize`'s tables. Every title names the data it shows (the
synthetic design, the training seeds, the split): generated data are never called "rxrx1".
"""

from __future__ import annotations

import pathlib

import pandas as pd

from deepnoise_tf import ablation_statistics as statistics
from deepnoise_tf import ablation_steps, plots
from deepnoise_tf import workdir as workdir_lib

REPORT_FILE = "protocol.md"
FIGURE_3B_LABELS = ["Model 1\nsoftmax", "Model 2\nArcFace", "Model 3\nmean teacher",
                    "Model 4\nensemble", "+ plate\nprior"]  # fmt: skip


def data_title(design: str, seeds, split: str) -> str:
    """`"synthetic design family_heldout_1, seeds 0,1,2, test split"`."""
    return f"synthetic design {design}, seeds {','.join(map(str, seeds))}, {split} split"


def figure_paths(design: str) -> dict[str, str]:
    return {"3A": f"{design}_figure_3a.png", "3B": f"{design}_figure_3b.png"}


def plot_design(root: pathlib.Path, summary: pd.DataFrame, design: str, seeds, split: str) -> list:
    """The design's Fig. 3A and 3B bars with intervals, the floors as lines (`plots`)."""
    paths, subtitle = figure_paths(design), data_title(design, seeds, split)
    return [
        plots.plot_interval_figure(summary, ablation_steps.FIGURE_3A,
                                   ["cell type", "experiment", "plate"], root / paths["3A"],
                                   f"Fig. 3A: normalization (softmax Xception)\n{subtitle}"),
        plots.plot_interval_figure(summary, ablation_steps.FIGURE_3B, FIGURE_3B_LABELS,
                                   root / paths["3B"], f"Fig. 3B: components\n{subtitle}"),
    ]  # fmt: skip


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def step_table(summary: pd.DataFrame) -> list[str]:
    """Markdown rows: step, its figure, mean and interval over seeds (%), seeds, wells."""
    lines = [
        "| step | figure | mean (%) | 95% interval (%) | seeds | wells |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary.itertuples(index=False):
        figure = ablation_steps.STEPS_BY_NAME[row.step].figure
        lines.append(f"| {row.step} | {figure} | {_percent(row.mean)} | "
                     f"[{_percent(row.low)}, {_percent(row.high)}] | {row.seeds} | {row.wells} |")  # fmt: skip
    return lines


def ordering_table(orderings: pd.DataFrame) -> list[str]:
    """Markdown rows: ordering, difference and its interval (points), verdict."""
    lines = ["| ordering | group | difference (points) | 95% interval (points) | verdict |",
             "|---|---|---|---|---|"]  # fmt: skip
    for row in orderings.itertuples(index=False):
        verdict = f"**{row.verdict}**" if row.verdict == "fails clearly" else row.verdict
        lines.append(f"| {row.ordering} | {row.group} | {100 * row.mean_difference:+.1f} | "
                     f"[{100 * row.low:+.1f}, {100 * row.high:+.1f}] | {verdict} |")  # fmt: skip
    return lines


def floor_sentence(summary: pd.DataFrame) -> str:
    floors = summary[summary["step"].isin(ablation_steps.FLOOR_STEPS)]
    parts = [f"{row.step} {_percent(row.mean)} % [{_percent(row.low)}, {_percent(row.high)}]"
             for row in floors.itertuples(index=False)]  # fmt: skip
    return (
        ("Floors (fitted once, the same for every seed): " + "; ".join(parts) + ".")
        if parts
        else ""
    )


def design_section(design: str, summary: pd.DataFrame, orderings: pd.DataFrame, seeds, split: str) -> str:  # fmt: skip
    """One design's section: steps with intervals, the floors, the orderings, the figures."""
    counts = orderings["verdict"].value_counts()
    tally = ", ".join(f"{counts.get(v, 0)} {v}" for v in statistics.VERDICTS)
    paths = figure_paths(design)
    return "\n".join([
        f"### {data_title(design, seeds, split)}", "",
        *step_table(summary), "", floor_sentence(summary), "",
        f"Orderings ({tally}):", "", *ordering_table(orderings), "",
        f"![Fig. 3A, {design}]({paths['3A']})", f"![Fig. 3B, {design}]({paths['3B']})", "",
    ])  # fmt: skip


def method_note(samples: int) -> str:
    """How to read the tables (docs/ablation.md, "Protocol")."""
    return (
        "Per-well treatment accuracy on the test split; checkpoints chosen on the validation "
        f"experiments. Mean over training seeds; 95% percentile bootstrap ({samples} draws) "
        "resampling the wells and the seeds. An ordering *holds clearly* when the interval of the "
        "paired difference is above 0, *holds in the mean* when only its mean is (a tie counts for "
        "`>=`), *fails clearly* when the interval is below 0, and *fails in the mean* in between: "
        "the middle two are undecided at this number of seeds and wells."
    )


def report_markdown(summary: pd.DataFrame, orderings: pd.DataFrame, *, seeds, split: str,
                    samples: int) -> str:  # fmt: skip
    sections = [method_note(samples), ""]
    for design in summary["design"].unique():
        sections.append(design_section(
            design, summary[summary["design"] == design], orderings[orderings["design"] == design],
            seeds, split,
        ))  # fmt: skip
    return "\n".join(sections)


def write_report(root, summary: pd.DataFrame, orderings: pd.DataFrame, *, seeds, split: str,
                 samples: int) -> list:  # fmt: skip
    """`root/protocol.md` and each design's two figures; returns the paths written."""
    root = pathlib.Path(root)
    text = report_markdown(summary, orderings, seeds=seeds, split=split, samples=samples)
    written = [workdir_lib.write_text(root / REPORT_FILE, text)]
    for design in summary["design"].unique():
        written += plot_design(root, summary[summary["design"] == design], design, seeds, split)
    return written
