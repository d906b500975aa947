"""Pseudo-label bookkeeping between rounds (paper, "Pseudo labels" and Algorithm 1): pure functions.

Which predictions label the unlabelled test wells, which round they come from (the best validation
score so far, changed only on a strict improvement), and the running bank of logits behind them.
"""

from __future__ import annotations

import numpy as np

from deepnoise_tf import evaluation


def source_score(rows: list[dict], source: str, method: str) -> tuple[float, float]:
    """(post-processed, plain) overall validation accuracy of a source's predictions.

    Compared in that order: the plain accuracy decides while the post-processed one ties, which it
    does once the plate prior saturates (100% on easy data).
    """

    def overall(post: str) -> float:
        for row in rows:
            if row["model"] == source and row["postprocess"] == post and row["cell_type"] == "all":
                return row["accuracy"]
        raise KeyError(f"no overall row for {source} / {post}")

    return overall(method), overall("none")


def best_round(scores) -> int:
    """The first round with the highest score (numbers or tuples compared in order): pseudo labels
    change, and a later round is selected, only on a strict improvement."""

    def key(score):
        values = score if isinstance(score, (tuple, list)) else (score,)
        return tuple(-np.inf if value is None or np.isnan(value) else value for value in values)

    keys = [key(score) for score in scores]
    return keys.index(max(keys))


def blend_bank(previous: np.ndarray | None, new: np.ndarray, weight: float) -> np.ndarray:
    """The running logit bank (paper, "Pseudo labels"; authors' code): the first refresh takes the new logits, later ones blend."""
    if previous is None:
        return np.asarray(new, np.float64)
    return weight * np.asarray(new, np.float64) + (1.0 - weight) * np.asarray(previous, np.float64)


def pseudo_label_sources(config) -> dict[str, str]:
    """Which predictions label the unlabelled wells of each member: the ensemble or its own teacher."""
    members = tuple(config.pipeline.backbones)
    if config.mean_teacher.pseudo_label_source == "own_teacher":
        return {member: member for member in members}
    return {member: evaluation.ENSEMBLE for member in members}
