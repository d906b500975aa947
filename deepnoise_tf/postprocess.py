"""Plate-prior post-processing (paper, "Prior-based post-processing"): pure numpy/scipy functions.

The RxRx1 plate design (docs/method.md §1) gives two priors that a per-well classifier ignores:

* the 1108 treatment siRNAs form 4 disjoint groups of 277 and every plate holds exactly one group,
  with the group of plate p (1-based) following a cyclic rotation ``(g1 + p - 1) mod 4`` of the
  experiment (the rotation of a test experiment is unknown and is inferred from the predictions);
* each siRNA occurs at most once per plate.

Restriction turns the first prior into a candidate mask per plate; balancing (greedy, as in the paper)
or exact assignment (default, Hungarian / ``scipy.optimize.linear_sum_assignment``) enforces the
second. Nothing here needs the RxRx1 metadata files: the groups are derived from labelled wells.

Plates are numbered as in RxRx1 (1..4); groups are numbered 0..G-1 in the order of their smallest
siRNA id, the numbering in which the RxRx1 rotation rule holds.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import scipy.optimize
import scipy.sparse
import scipy.sparse.csgraph
import scipy.special

from deepnoise_tf.constants import NUM_SIRNAS

METHODS = ("assign", "balance", "none")


# --------------------------------------------------------------------------------------------
# Probabilities


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    return logits - scipy.special.logsumexp(logits, axis=axis, keepdims=True)


def sirna_log_probs(logits: np.ndarray, num_sirnas: int = NUM_SIRNAS) -> np.ndarray:
    """Log-probabilities over the treatment siRNAs only: control logits dropped, renormalised.

    Controls are not siRNAs (docs/method.md §1).
    """
    return log_softmax(np.asarray(logits)[..., :num_sirnas], axis=-1)


# --------------------------------------------------------------------------------------------
# Plate design: groups and rotations


def sirna_groups_from_labels(
    experiments: Sequence[Hashable] | np.ndarray,
    plates: Sequence[int] | np.ndarray,
    sirnas: Sequence[int] | np.ndarray,
    num_sirnas: int = NUM_SIRNAS,
) -> np.ndarray:
    """The group of every treatment siRNA, derived from labelled wells.

    Two siRNAs are in the same group when they share a plate (transitively: connected components of
    the siRNA-plate graph). Labels outside ``0..num_sirnas-1`` (controls, ``UNKNOWN_LABEL``) are
    ignored, so all wells of a table can be passed.

    Args:
      experiments, plates, sirnas: one entry per labelled well.
      num_sirnas: number of treatment classes.

    Returns:
      int array ``[num_sirnas]``: groups numbered 0, 1, ... in the order of their smallest member;
      -1 for siRNAs that occur on no plate.
    """
    experiments = np.asarray(experiments)
    plates = np.asarray(plates)
    sirnas = np.asarray(sirnas, dtype=np.int64)
    if not (len(experiments) == len(plates) == len(sirnas)):
        raise ValueError("experiments, plates and sirnas must have the same length")
    groups = np.full(num_sirnas, -1, dtype=np.int64)
    treatment = (sirnas >= 0) & (sirnas < num_sirnas)
    if not treatment.any():
        return groups
    sirnas = sirnas[treatment]
    plate_keys = np.array(
        [f"{e}\x00{p}" for e, p in zip(experiments[treatment], plates[treatment], strict=True)]
    )
    _, plate_index = np.unique(plate_keys, return_inverse=True)
    num_plates = int(plate_index.max()) + 1
    # Bipartite graph: nodes 0..num_sirnas-1 are siRNAs, the rest plates.
    graph = scipy.sparse.coo_matrix(
        (np.ones(len(sirnas)), (sirnas, num_sirnas + plate_index)),
        shape=(num_sirnas + num_plates,) * 2,
    )
    _, component = scipy.sparse.csgraph.connected_components(graph, directed=False)
    seen = np.zeros(num_sirnas, dtype=bool)
    seen[sirnas] = True
    sirna_component = component[:num_sirnas]
    # siRNA ids ascend, so the first occurrence of a component is its smallest member.
    _, first = np.unique(sirna_component[seen], return_index=True)
    order = np.argsort(first)  # component ranks by smallest member
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    component_ids = np.unique(sirna_component[seen])
    lookup = dict(zip(component_ids.tolist(), rank.tolist(), strict=True))
    groups[seen] = [lookup[c] for c in sirna_component[seen].tolist()]
    return groups


def cyclic_assignments(num_groups: int, num_plates: int | None = None) -> np.ndarray:
    """The cyclic plate->group assignments: row g1, column p-1 holds ``(g1 + p - 1) mod num_groups``."""
    num_plates = num_groups if num_plates is None else num_plates
    return (np.arange(num_groups)[:, None] + np.arange(num_plates)[None, :]) % num_groups


def plate_group_log_likelihood(log_probs: np.ndarray, sirna_groups: np.ndarray) -> np.ndarray:
    """Summed over wells, log P(well's siRNA is in group g): array ``[num_groups]``.

    Columns without a group (controls, unseen siRNAs) are left out and the rows renormalised over
    the grouped columns, so each entry is a log-likelihood of the plate holding that group.
    """
    sirna_groups = np.asarray(sirna_groups)
    num_groups = int(sirna_groups.max()) + 1
    log_probs = np.asarray(log_probs, dtype=np.float64)[:, : len(sirna_groups)]
    per_group = np.stack(
        [
            scipy.special.logsumexp(log_probs[:, sirna_groups == group], axis=1)
            for group in range(num_groups)
        ],
        axis=1,
    )
    per_group = per_group - scipy.special.logsumexp(per_group, axis=1, keepdims=True)
    return per_group.sum(axis=0)


def infer_rotation(
    log_probs_per_plate: Mapping[int, np.ndarray] | Sequence[np.ndarray],
    sirna_groups: np.ndarray,
    assignments: np.ndarray | None = None,
) -> tuple[int, dict[int, int]]:
    """Which plate->group assignment of an experiment best explains its predictions.

    Each candidate assignment is scored by the summed log-probability, over all wells of all given
    plates, that a well's siRNA lies in the group the assignment puts on its plate
    (``plate_group_log_likelihood``); the best one wins (ties: lowest index). Missing plates are fine.

    Args:
      log_probs_per_plate: ``{plate (1-based): [wells, classes] log-probs}``; a sequence means plates
        1, 2, ... Logits work too (per-row shifts do not change the ranking).
      sirna_groups: ``[num_sirnas]`` group per siRNA (``sirna_groups_from_labels``).
      assignments: ``[num_assignments, num_plates]`` candidate groups of plates 1..num_plates;
        default the cyclic ones, row g1 = ``(g1 + p - 1) mod G`` (the RxRx1 design).

    Returns:
      ``(index, {plate: group})``: the winning row of ``assignments`` (= g1 for the default) and the
      group it puts on each given plate.
    """
    if not isinstance(log_probs_per_plate, Mapping):
        log_probs_per_plate = {i + 1: lp for i, lp in enumerate(log_probs_per_plate)}
    sirna_groups = np.asarray(sirna_groups)
    num_groups = int(sirna_groups.max()) + 1
    plates = sorted(int(p) for p in log_probs_per_plate)
    if assignments is None:
        assignments = cyclic_assignments(num_groups, max(plates))
    assignments = np.asarray(assignments)
    if min(plates) < 1 or max(plates) > assignments.shape[1]:
        raise ValueError(f"plates {plates} outside 1..{assignments.shape[1]}")
    scores = np.zeros(len(assignments))
    for plate in plates:
        per_group = plate_group_log_likelihood(log_probs_per_plate[plate], sirna_groups)
        scores += per_group[assignments[:, plate - 1]]
    best = int(np.argmax(scores))
    return best, {plate: int(assignments[best, plate - 1]) for plate in plates}


def plate_candidate_mask(
    plate_group: int, sirna_groups: np.ndarray, num_classes: int | None = None
) -> np.ndarray:
    """Boolean ``[num_classes]``: the siRNAs of ``plate_group``; columns past the table (controls) False."""
    sirna_groups = np.asarray(sirna_groups)
    num_classes = len(sirna_groups) if num_classes is None else num_classes
    mask = np.zeros(num_classes, dtype=bool)
    width = min(num_classes, len(sirna_groups))
    mask[:width] = sirna_groups[:width] == plate_group
    return mask


# --------------------------------------------------------------------------------------------
# One siRNA per well, each at most once per plate


def _candidates(num_classes: int, candidate_mask: np.ndarray | None) -> np.ndarray:
    if candidate_mask is None:
        return np.arange(num_classes)
    candidate_mask = np.asarray(candidate_mask, dtype=bool)
    if candidate_mask.shape != (num_classes,):
        raise ValueError(f"candidate_mask shape {candidate_mask.shape} != ({num_classes},)")
    candidates = np.flatnonzero(candidate_mask)
    if len(candidates) == 0:
        raise ValueError("candidate_mask allows no class")
    return candidates


def _finite_scores(scores: np.ndarray) -> np.ndarray:
    """Replace -inf by a penalty larger than any total the finite entries can make up.

    linear_sum_assignment rejects rows that are -inf everywhere; with the penalty an assignment
    that uses fewer impossible pairs still always wins.
    """
    if np.isnan(scores).any() or np.isposinf(scores).any():
        raise ValueError("log-probabilities must not contain NaN or +inf")
    finite = np.isfinite(scores)
    if finite.all():
        return scores
    if not finite.any():
        return np.zeros_like(scores)
    low, high = scores[finite].min(), scores[finite].max()
    penalty = low - scores.shape[0] * (high - low) - 1.0
    return np.where(finite, scores, penalty)


def assign(log_probs: np.ndarray, candidate_mask: np.ndarray | None = None) -> np.ndarray:
    """Exact plate assignment (docs/method.md §8, default): maximise the summed log-probability
    over the wells with each candidate class used at most once.

    Solved with ``scipy.optimize.linear_sum_assignment`` on the rectangular ``[wells, candidates]``
    matrix. With fewer wells than candidates (N <= K) every well gets a distinct class and the total
    is the maximum over all such assignments. With more wells than candidates (N > K, e.g. a
    synthetic plate with repeated siRNAs) a strict one-per-plate assignment does not exist; each
    candidate is then offered ``ceil(N / K)`` times, i.e. the result maximises the total among
    assignments that use no class more than ``ceil(N / K)`` times (the most balanced capacity).

    Args:
      log_probs: ``[N, C]`` log-probabilities (or logits: per-well shifts do not change the result)
        of one plate's wells. Controls are the caller's business: pass only the wells to assign.
      candidate_mask: boolean ``[C]``, the classes allowed on this plate; default all.

    Returns:
      int ``[N]``: class index (column of ``log_probs``) per well.
    """
    log_probs = np.asarray(log_probs, dtype=np.float64)
    if log_probs.ndim != 2:
        raise ValueError(f"log_probs must be [wells, classes], got {log_probs.shape}")
    num_wells, num_classes = log_probs.shape
    candidates = _candidates(num_classes, candidate_mask)
    if num_wells == 0:
        return np.zeros(0, dtype=np.int64)
    scores = _finite_scores(log_probs[:, candidates])
    copies = -(-num_wells // len(candidates))  # ceil
    if copies > 1:
        scores = np.tile(scores, (1, copies))
    rows, columns = scipy.optimize.linear_sum_assignment(scores, maximize=True)
    prediction = np.empty(num_wells, dtype=np.int64)
    prediction[rows] = candidates[columns % len(candidates)]
    return prediction


def balance_score(counts: np.ndarray, num_wells: int) -> float:
    """Greedy-balancing score ``sum_k min(n_k / N, 1 / K)`` over the K candidate classes.

    See docs/method.md §8.
    """
    counts = np.asarray(counts, dtype=np.float64)
    return float(np.minimum(counts / num_wells, 1.0 / len(counts)).sum())


def _balance_move(probs, coefficients, prediction, counts, alpha: float) -> None:
    """One move of `greedy_balance`, in place: lower the most-predicted class's coefficient by as
    many `alpha` steps as it takes for one of its wells to change prediction (or to 0)."""
    top = int(np.argmax(counts))
    wells = np.flatnonzero(prediction == top)
    # For each of top's wells, the best competing scaled probability.
    others = probs[wells] * coefficients
    others[:, top] = -np.inf
    competitor = others.max(axis=1)
    # Smallest number of alpha-steps that lets some well leave ``top``.
    with np.errstate(divide="ignore"):
        threshold = competitor / probs[wells, top]
    steps = np.floor((coefficients[top] - threshold) / alpha) + 1
    steps = max(1, int(np.clip(steps.min(), 1, np.ceil(coefficients[top] / alpha))))
    while True:
        coefficients[top] = max(0.0, coefficients[top] - steps * alpha)
        new = np.argmax(probs[wells] * coefficients, axis=1)
        if (new != top).any() or coefficients[top] == 0.0:
            break
        steps = 1  # rounding left the wells on ``top``: keep stepping
    prediction[wells] = new


def greedy_balance(
    logits: np.ndarray,
    candidate_mask: np.ndarray | None = None,
    alpha: float = 0.01,
    min_alpha: float = 1e-4,
    round_moves: int | None = None,
) -> np.ndarray:
    """Greedy balancing of one plate (paper, "Prior-based post-processing"; faithful mode).

    How the paper's text and docs/method.md §8 are read here:

    * ``P = softmax`` over the wells (axis 0, not the classes) of the restricted logits
      ``logits[:, candidates]``; K = number of candidate classes, N = number of wells.
    * Coefficients start at ``c_k = 1`` and enter multiplicatively: well i predicts
      ``argmax_k c_k P[i, k]`` (ties: lowest candidate index); n_k counts the wells predicting k.
    * score = ``sum_k min(n_k / N, 1 / K)`` with K the candidate count for every N. The best
      reachable score is ``min(N, K) / K`` ("perfect": every class once when N <= K, every class at
      least N / K times when N > K); for N < K the score is (#distinct classes) / K, a fixed multiple
      of reading K as N.
    * A *move* lowers ``c_k`` of the most-predicted class (ties: lowest index) by ``alpha`` as many
      times as it takes for at least one of its wells to change prediction (steps in between change
      no prediction and so no score; they are jumped over exactly). ``c_k`` never goes below 0.
    * A *round* is ``round_moves`` moves (default K) continuing from the best coefficients so far;
      the best score and its coefficients are kept. When a round gives no gain alpha halves, and
      the search stops once alpha < ``min_alpha`` or the score is perfect. Every round either gains
      (finitely many score values) or halves alpha, so the loop ends.

    Args:
      logits: ``[N, C]`` logits (or log-probabilities) of one plate's wells.
      candidate_mask: boolean ``[C]``, the classes allowed on the plate; default all.
      alpha: initial decrement (0.01 as in the authors' code; the paper text says 0.001).
      min_alpha: stop when alpha falls below this.
      round_moves: moves per round; default K.

    Returns:
      int ``[N]``: predicted class (column of ``logits``) per well under the best coefficients.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits must be [wells, classes], got {logits.shape}")
    num_wells, num_classes = logits.shape
    candidates = _candidates(num_classes, candidate_mask)
    if num_wells == 0:
        return np.zeros(0, dtype=np.int64)
    num_candidates = len(candidates)
    round_moves = num_candidates if round_moves is None else round_moves
    # Column-wise softmax: for class k, how the wells share the one occurrence k has on the plate.
    probs = np.exp(log_softmax(logits[:, candidates], axis=0))
    perfect = min(num_wells, num_candidates) / num_candidates
    tolerance = 1e-12

    def predict(coefficients: np.ndarray) -> np.ndarray:
        return np.argmax(probs * coefficients, axis=1)

    best_coefficients = np.ones(num_candidates)
    best_prediction = predict(best_coefficients)
    best_score = balance_score(np.bincount(best_prediction, minlength=num_candidates), num_wells)
    while best_score < perfect - tolerance and alpha >= min_alpha:
        coefficients = best_coefficients.copy()
        prediction = best_prediction.copy()
        counts = np.bincount(prediction, minlength=num_candidates)
        gained = False
        for _ in range(round_moves):
            _balance_move(probs, coefficients, prediction, counts, alpha)
            counts = np.bincount(prediction, minlength=num_candidates)
            score = balance_score(counts, num_wells)
            if score > best_score + tolerance:
                best_score, gained = score, True
                best_coefficients, best_prediction = coefficients.copy(), prediction.copy()
                if best_score >= perfect - tolerance:
                    break
        if not gained:
            alpha /= 2
    return candidates[best_prediction]


# --------------------------------------------------------------------------------------------
# Whole tables


def _plain(value):
    """numpy scalars -> Python scalars, so dictionary keys from tables and users agree."""
    return value.item() if isinstance(value, np.generic) else value


def postprocess_predictions(
    table,
    log_probs: np.ndarray,
    method: str = "assign",
    sirna_groups: np.ndarray | None = None,
    known_plate_groups: Mapping[tuple[Hashable, int], int] | None = None,
    assignments: np.ndarray | None = None,
    **balance_options,
) -> np.ndarray:
    """Post-process the predictions of a table of wells, plate by plate.

    Args:
      table: pandas DataFrame with columns ``experiment`` and ``plate`` (1-based), one row per well,
        aligned with ``log_probs``. Pass only the wells to predict (e.g. treatment wells: the labels
        of control wells are known).
      log_probs: ``[N, C]`` log-probabilities (or logits) of the treatment siRNAs; C may include
        control columns only when ``sirna_groups`` is given (they are never candidates then).
      method: ``"assign"`` (exact, default), ``"balance"`` (greedy, paper) or ``"none"`` (argmax,
        restricted to the plate's group when known).
      sirna_groups: ``[num_sirnas]`` group per siRNA; enables the plate restriction. The rotation of
        each experiment is inferred from its predictions (``infer_rotation``) unless all its plates
        are in ``known_plate_groups``.
      known_plate_groups: ``{(experiment, plate): group}`` known from labels or metadata.
      assignments: candidate plate->group assignments for ``infer_rotation`` (default cyclic).
      **balance_options: passed to ``greedy_balance``.

    Returns:
      int ``[N]``: predicted class per row.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    log_probs = np.asarray(log_probs)
    if len(table) != len(log_probs):
        raise ValueError(f"table has {len(table)} rows, log_probs {len(log_probs)}")
    if sirna_groups is None and log_probs.shape[1] > NUM_SIRNAS:
        raise ValueError(
            "without sirna_groups, pass treatment log-probs only (drop control columns)"
        )
    known_plate_groups = {
        (_plain(e), int(p)): int(g) for (e, p), g in (known_plate_groups or {}).items()
    }
    experiments = table["experiment"].to_numpy()
    plates = table["plate"].to_numpy().astype(np.int64)
    prediction = np.empty(len(table), dtype=np.int64)
    for experiment in dict.fromkeys(experiments.tolist()):
        in_experiment = experiments == experiment
        plate_rows = {
            int(plate): np.flatnonzero(in_experiment & (plates == plate))
            for plate in np.unique(plates[in_experiment])
        }
        plate_groups: dict[int, int] = {}
        if sirna_groups is not None:
            if all((experiment, plate) in known_plate_groups for plate in plate_rows):
                plate_groups = {p: known_plate_groups[(experiment, p)] for p in plate_rows}
            else:
                _, plate_groups = infer_rotation(
                    {p: log_probs[rows] for p, rows in plate_rows.items()},
                    sirna_groups,
                    assignments,
                )
        for plate, rows in plate_rows.items():
            mask = None
            if sirna_groups is not None:
                mask = plate_candidate_mask(plate_groups[plate], sirna_groups, log_probs.shape[1])
            plate_log_probs = log_probs[rows]
            if method == "assign":
                prediction[rows] = assign(plate_log_probs, mask)
            elif method == "balance":
                prediction[rows] = greedy_balance(plate_log_probs, mask, **balance_options)
            else:
                candidates = _candidates(log_probs.shape[1], mask)
                prediction[rows] = candidates[np.argmax(plate_log_probs[:, candidates], axis=1)]
    return prediction
