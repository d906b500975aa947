"""A step's cached result: `DIR/<step>/evaluation/{logits.npz, done.json}`, and which split it scores.

The logits are written atomically before the marker, so an interrupted write never looks finished.
The marker records the split the logits cover (`report_split`, "val" or "test"): logits of the
validation wells never stand in for the test wells, or the other way round (docs/ablation.md,
"Protocol").
"""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd

from deepnoise_tf import evaluation
from deepnoise_tf import workdir as workdir_lib
from deepnoise_tf.baselines import check_report_split

EVALUATION_FOLDER = "evaluation"  # in each step's folder: logits.npz, then done.json
LOGITS_FILE = "logits.npz"


def cached_split(step_folder) -> str | None:
    """The split whose logits the step has cached, or None (markers before the field: "val")."""
    record = workdir_lib.read_done(pathlib.Path(step_folder) / EVALUATION_FOLDER)
    return None if record is None else record.get("report_split", "val")


def is_cached(step_folder, report_split: str = "val") -> bool:
    """Whether the step's logits of `report_split` are complete (its evaluation marker says so)."""
    return cached_split(step_folder) == check_report_split(report_split)


def save_step_logits(
    step_folder, wells: pd.DataFrame, logits: np.ndarray, seconds: float, report_split: str = "val"
) -> None:
    """Writes the logits atomically, then the marker: an interrupted write never looks finished."""
    folder = pathlib.Path(step_folder) / EVALUATION_FOLDER
    arrays = {name: wells[name].to_numpy() for name in evaluation.WELL_COLUMNS}
    workdir_lib.write_npz(folder / LOGITS_FILE, logits=np.asarray(logits, np.float32), **arrays)
    record = {"seconds": float(seconds), "wells": len(wells)}
    workdir_lib.mark_done(folder, {**record, "report_split": check_report_split(report_split)})


def load_step_logits(step_folder) -> tuple[pd.DataFrame, np.ndarray, float]:
    """`(wells, logits [W, 1139] float64, seconds the step took)` of a cached step."""
    folder = pathlib.Path(step_folder) / EVALUATION_FOLDER
    record = workdir_lib.read_done(folder)
    if record is None:
        raise FileNotFoundError(f"{folder} holds no finished evaluation")
    with np.load(folder / LOGITS_FILE) as stored:
        wells = pd.DataFrame({name: stored[name] for name in evaluation.WELL_COLUMNS})
        return wells, stored["logits"].astype(np.float64), float(record["seconds"])


def unmark(step_folder) -> None:
    """Removes the evaluation marker: a refit killed half way must not look finished."""
    (pathlib.Path(step_folder) / EVALUATION_FOLDER / workdir_lib.DONE_FILE).unlink(missing_ok=True)
