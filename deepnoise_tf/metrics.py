"""Evaluation metrics and per-well aggregation for prediction: pure numpy (pandas for the table)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import pandas as pd

from deepnoise_tf.constants import UNKNOWN_LABEL


def _labelled(labels, predictions, ignore_label: int | None):
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} differ")
    keep = np.ones(labels.shape, dtype=bool) if ignore_label is None else labels != ignore_label
    return labels, predictions, keep


def accuracy(labels, predictions, ignore_label: int | None = UNKNOWN_LABEL) -> float:
    """Top-1 accuracy over the wells whose label is known (``labels != ignore_label``).

    Returns NaN when no well has a known label (e.g. the Kaggle test treatments).
    """
    labels, predictions, keep = _labelled(labels, predictions, ignore_label)
    if not keep.any():
        return float("nan")
    return float(np.mean(labels[keep] == predictions[keep]))


def accuracy_by_group(
    labels, predictions, groups, ignore_label: int | None = UNKNOWN_LABEL
) -> dict[Hashable, float]:
    """Accuracy per group (e.g. cell type or experiment), groups in sorted order.

    Groups whose wells all have unknown labels are left out.
    """
    labels, predictions, keep = _labelled(labels, predictions, ignore_label)
    groups = np.asarray(groups)
    result = {}
    for group in np.unique(groups[keep]):
        member = keep & (groups == group)
        result[group.item() if isinstance(group, np.generic) else group] = float(
            np.mean(labels[member] == predictions[member])
        )
    return result


def accuracy_table(
    labels, predictions, groups, ignore_label: int | None = UNKNOWN_LABEL, overall: str = "all"
) -> pd.DataFrame:
    """Accuracy per group and overall as a table (columns group, wells, correct, accuracy).

    ``wells`` counts the wells with a known label; the last row, named ``overall``, covers all groups.
    """
    labels, predictions, keep = _labelled(labels, predictions, ignore_label)
    groups = np.asarray(groups)
    rows = []
    for group in np.unique(groups[keep]):
        member = keep & (groups == group)
        rows.append((group, member.sum(), (labels[member] == predictions[member]).sum()))
    rows.append((overall, keep.sum(), (labels[keep] == predictions[keep]).sum()))
    table = pd.DataFrame(rows, columns=["group", "wells", "correct"])
    table["accuracy"] = table["correct"] / table["wells"].where(table["wells"] > 0)
    return table


def well_logits(
    site_logits: np.ndarray, well_ids: Sequence[Hashable] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Average the logits of a well's sites (or test-time views) in logit space (SPEC 8).

    Args:
      site_logits: ``[S, C]`` one row per site (or view).
      well_ids: ``[S]`` the well of each row (e.g. Kaggle ``id_code``).

    Returns:
      ``(wells, logits)``: the unique well ids in order of first appearance and ``[W, C]`` float64
      mean logits of each.
    """
    site_logits = np.asarray(site_logits, dtype=np.float64)
    well_ids = np.asarray(well_ids)
    if len(site_logits) != len(well_ids):
        raise ValueError(f"{len(site_logits)} logit rows but {len(well_ids)} well ids")
    unique, first, inverse = np.unique(well_ids, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # first-seen order
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    well_index = position[inverse.reshape(-1)]
    sums = np.zeros((len(unique),) + site_logits.shape[1:])
    np.add.at(sums, well_index, site_logits)
    counts = np.bincount(well_index, minlength=len(unique)).astype(np.float64)
    return unique[order], sums / counts.reshape((-1,) + (1,) * (site_logits.ndim - 1))
