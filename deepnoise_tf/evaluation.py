"""From per-site model outputs to scored well predictions: pure numpy and pandas.

Paper, "Model ensemble and test-time augmentation": a well's sites (and test-time views) are
averaged in logit space, and an ensemble averages its members' logits the same way. Then the plate
prior ("Post-processing") turns the treatment wells' logits into predictions, and accuracy is the
share of treatment wells whose prediction equals the label, overall and per cell type.

Well tables carry `WELL_COLUMNS`: `label` is the truth (-1 where unknown), `raw_prediction` the
argmax over the treatment siRNAs, `prediction` the output after the plate prior.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import pandas as pd

from deepnoise_tf import constants, postprocess

SITE_COLUMNS = ("id_code", "site", "experiment", "plate", "well", "cell_type", "well_type", "label")
WELL_COLUMNS = ("id_code", "experiment", "plate", "well", "cell_type", "well_type", "label")
ENSEMBLE = "ensemble"


def well_means(
    site_values: np.ndarray, well_ids: Sequence[Hashable] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The mean of each well's rows (sites or views), wells in order of first appearance.

    Args:
      site_values: `[S, ...]` one row per site (or view).
      well_ids: `[S]` the well of each row (e.g. Kaggle `id_code`).

    Returns:
      `(wells, values)`: the unique well ids and `[W, ...]` float64 means.
    """
    site_values = np.asarray(site_values, dtype=np.float64)
    well_ids = np.asarray(well_ids)
    if len(site_values) != len(well_ids):
        raise ValueError(f"{len(site_values)} rows but {len(well_ids)} well ids")
    unique, first, inverse = np.unique(well_ids, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # first-seen order
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    well_index = position[inverse.reshape(-1)]
    sums = np.zeros((len(unique),) + site_values.shape[1:])
    np.add.at(sums, well_index, site_values)
    counts = np.bincount(well_index, minlength=len(unique)).astype(np.float64)
    return unique[order], sums / counts.reshape((-1,) + (1,) * (site_values.ndim - 1))


def aggregate_wells(
    sites: pd.DataFrame, site_values: np.ndarray
) -> tuple[pd.DataFrame, np.ndarray]:
    """One row per well (`WELL_COLUMNS`, first-seen order) and the mean of its sites' values."""
    wells, values = well_means(site_values, sites["id_code"].to_numpy())
    first = sites.drop_duplicates("id_code").set_index("id_code").loc[wells].reset_index()
    table = first[list(WELL_COLUMNS)].copy()
    table["plate"] = table["plate"].astype(np.int64)
    table["label"] = table["label"].astype(np.int64)
    return table, values


def treatment_wells(wells: pd.DataFrame, *arrays):
    """The treatment rows of a well table and of each row-aligned array (controls have known labels)."""
    keep = (wells["well_type"] == "treatment").to_numpy()
    return (wells[keep].reset_index(drop=True), *(np.asarray(array)[keep] for array in arrays))


def ensemble_logits(members: Sequence[np.ndarray]) -> np.ndarray:
    """The members' logits averaged in logit space (paper, "Model ensemble")."""
    if not len(members):
        raise ValueError("an ensemble needs at least one member")
    return np.mean([np.asarray(logits, np.float64) for logits in members], axis=0)


def align_wells(reference: pd.DataFrame, wells: pd.DataFrame, values: np.ndarray) -> np.ndarray:
    """`values` (rows aligned with `wells`) reordered to the rows of `reference` by `id_code`."""
    position = pd.Series(np.arange(len(wells)), index=wells["id_code"].to_numpy())
    missing = set(reference["id_code"]) - set(position.index)
    if missing:
        raise ValueError(f"{len(missing)} wells are missing, e.g. {sorted(missing)[:3]}")
    return np.asarray(values)[position.loc[reference["id_code"]].to_numpy()]


def sirna_logits(treatment_logits: np.ndarray) -> np.ndarray:
    """The siRNA columns of treatment-well logits (control columns dropped, not renormalised)."""
    return np.asarray(treatment_logits, dtype=np.float64)[:, : constants.NUM_SIRNAS]


def well_predictions(
    wells: pd.DataFrame, logits: np.ndarray, *, method: str = "assign", plate_design=None
) -> pd.DataFrame:
    """The treatment wells with `raw_prediction` (argmax over the siRNAs) and `prediction`.

    `prediction` is `postprocess.postprocess_predictions` with `method`: "assign"/"balance" use the
    plate prior (each plate restricted to its group when a consistent `plate_design`, learned from
    labelled plates, is given; each siRNA once per plate); "none" is the argmax, restricted to the
    plate's group when the design is known. The siRNA logits go in as they are (control columns
    dropped, not renormalised): greedy balancing softmaxes them over the wells, as the paper does.
    """
    if method not in postprocess.METHODS:
        raise ValueError(f"method must be one of {postprocess.METHODS}, got {method!r}")
    table, treatment_logits = treatment_wells(wells, logits)
    treatment_sirna_logits = sirna_logits(treatment_logits)
    table["raw_prediction"] = np.argmax(treatment_sirna_logits, axis=1)
    table["prediction"] = postprocess.postprocess_predictions(
        table, treatment_sirna_logits, method=method, plate_design=plate_design
    )
    return table


def accuracy_table(
    labels,
    predictions,
    groups,
    ignore_label: int | None = constants.UNKNOWN_LABEL,
    overall: str = "all",
) -> pd.DataFrame:
    """Accuracy per group and overall (columns group, wells, correct, accuracy).

    `wells` counts the wells with a known label (`labels != ignore_label`); the last row, named
    `overall`, covers all groups. A group without a known label gets NaN accuracy.
    """
    labels, predictions, groups = np.asarray(labels), np.asarray(predictions), np.asarray(groups)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} differ")
    keep = np.ones(labels.shape, dtype=bool) if ignore_label is None else labels != ignore_label
    rows = []
    for group in np.unique(groups[keep]):
        member = keep & (groups == group)
        rows.append((group, member.sum(), (labels[member] == predictions[member]).sum()))
    rows.append((overall, keep.sum(), (labels[keep] == predictions[keep]).sum()))
    table = pd.DataFrame(rows, columns=["group", "wells", "correct"])
    table["accuracy"] = table["correct"] / table["wells"].where(table["wells"] > 0)
    return table


def accuracy_report(predictions: pd.DataFrame, method: str) -> pd.DataFrame | None:
    """Accuracy per cell type and overall, before (`raw`) and after post-processing (`method`).

    `predictions` is a `well_predictions` table. The stage of `method="none"` is called
    `plate_group`: the argmax within the plate's siRNA group. None when no well has a known label.
    """
    labels = predictions["label"].to_numpy()
    if not (labels != constants.UNKNOWN_LABEL).any():
        return None
    stages = (
        ("raw", "raw_prediction"),
        (method if method != "none" else "plate_group", "prediction"),
    )
    tables = []
    for stage, column in stages:
        table = accuracy_table(
            labels, predictions[column].to_numpy(), predictions["cell_type"].to_numpy()
        )
        table.insert(0, "stage", stage)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)
