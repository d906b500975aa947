"""The ablation's default trainer and evaluator of one step (tests hand in stand-ins for both).

The trainer is `training.run` (checkpoint selection on `config.data.val_experiments`, method.md §7);
the evaluator scores the selected model on the wells of `report_split`: the validation experiments
("val", the single ablation) or the test split ("test", the protocol: other wells than the ones
that chose the checkpoint; the synthetic release layout carries its labels).
"""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd

from deepnoise_tf import baselines, plots
from deepnoise_tf import workdir as workdir_lib

REPORT_FOLDER = "report"  # in each training step's folder: its training curves


def write_training_curves(step_folder) -> None:
    """`<step>/report/`: `training_curves.png`, `metrics_summary.csv` and `summary.md` (Fig. 5)."""
    step_folder = pathlib.Path(step_folder)
    metrics_path = step_folder / workdir_lib.METRICS_FILE
    if not metrics_path.is_file():
        return
    output = step_folder / REPORT_FOLDER
    metrics = workdir_lib.read_metrics(metrics_path)
    plots.plot_training_curves(metrics, output / "training_curves.png")
    summary = workdir_lib.metrics_summary(metrics)
    workdir_lib.write_csv(summary, output / "metrics_summary.csv")
    workdir_lib.write_text(
        output / "summary.md",
        f"# Report: `{step_folder}`\n\n## Training curves\n\n![training curves](training_curves.png)\n\n"
        f"```\n{summary.to_string(index=False)}\n```\n",
    )


def default_trainer(config, step_folder: str) -> None:
    import keras

    from deepnoise_tf import training

    training.run(config, step_folder)
    keras.backend.clear_session()  # six trainings in one process: free the last one's graphs


def report_wells(config, report_split: str) -> tuple[str, tuple[str, ...]]:
    """`(TFDS split, experiments)` that `report_split` scores (experiments () = all of the split)."""
    if baselines.check_report_split(report_split) == "test":
        return "test", ()
    experiments = tuple(config.data.val_experiments)
    if not experiments:
        raise ValueError("no experiments to evaluate (config.data.val_experiments is empty)")
    return "train", experiments


def default_evaluator(
    config, step_folder: str, report_split: str = "val"
) -> tuple[pd.DataFrame, np.ndarray]:
    """The wells of `report_split` (the config's cell types) and their site-averaged logits.

    Uses the step's export when it has one, else its checkpoint; also draws its training curves.
    """
    from deepnoise_tf import inference

    split, experiments = report_wells(config, report_split)
    write_training_curves(step_folder)
    export_dir = pathlib.Path(step_folder) / "export"
    if (export_dir / "saved_model.pb").is_file():
        predictor = inference.load_export(export_dir)
    else:
        predictor = inference.from_run_folder(step_folder)
    outputs = inference.predict_split(
        {"model": predictor}, config.data.data_dir or None, config.data.builder, split,
        experiments=experiments, cell_types=tuple(config.data.cell_types),
    )  # fmt: skip
    return outputs.wells, outputs.logits["model"]
