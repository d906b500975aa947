"""Plate-prior post-processing (paper, "Prior-based post-processing"): pure numpy/scipy functions.

Two priors of the plate design that a per-well classifier ignores (docs/method.md §1, §8):

* every plate holds one group of siRNAs, and the groups follow each other over an experiment's plates
  in an order that the training plates show. Which siRNAs form a group and that order are learned
  from the labelled plates (`deepnoise_tf.plate_design`); an unlabelled experiment's assignment of
  groups to plates is inferred from its predictions. Without a consistent learned design, plates are
  not restricted;
* each siRNA occurs at most once per plate.

Restriction turns the first prior into a candidate mask per plate; balancing (greedy, as in the paper)
or exact assignment (default, Hungarian / ``scipy.optimize.linear_sum_assignment``) enforces the
second. Nothing here needs the RxRx1 metadata files.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import scipy.optimize
import scipy.special

from deepnoise_tf import plate_design as plate_design_lib
from deepnoise_tf.constants import NUM_SIRNAS

METHODS = ("assign", "balance", "none")


# --------------------------------------------------------------------------------------------
# Probabilities


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    return logits - scipy.special.logsumexp(logits, axis=axis, keepdims=True)


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

    Log-probabilities are the right input: for independent wells the summed log-probability is the
    log-likelihood of the whole plate's labelling, so the result is the most likely labelling with
    each siRNA once. Logits give the same result (each well takes one class, so a per-well shift
    adds the same constant to every labelling).

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
      ``logits[:, candidates]``; K = number of candidate classes, N = number of wells. The input
      is the model's well logits, as the authors feed it: log-probabilities (renormalised per well)
      shift each well's row and so change this softmax over the wells and the result.
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
      logits: ``[N, C]`` well logits of one plate's wells (not per-well log-probabilities).
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


def _plate_masks(
    plate_design, experiment, plate_rows: dict, logits: np.ndarray, known_plate_groups: dict
) -> dict[int, np.ndarray | None]:
    """``{plate: candidate mask}`` of one experiment's plates (None: every column is a candidate).

    A consistent design restricts each plate to its group: known, or the experiment's assignment
    inferred from its predictions. An inconsistent one keeps every siRNA (control columns out).
    """
    num_classes = logits.shape[1]
    if plate_design is None:
        return dict.fromkeys(plate_rows)
    if not plate_design.consistent:
        every_sirna = np.arange(num_classes) < len(plate_design.sirna_groups)
        return dict.fromkeys(plate_rows, every_sirna)
    if all((experiment, plate) in known_plate_groups for plate in plate_rows):
        plate_groups = {p: known_plate_groups[(experiment, p)] for p in plate_rows}
    else:
        _, plate_groups = plate_design_lib.infer_assignment(
            plate_design, {p: logits[rows] for p, rows in plate_rows.items()}
        )
    return {p: plate_design.candidate_mask(plate_groups[p], num_classes) for p in plate_rows}


def postprocess_predictions(
    table,
    logits: np.ndarray,
    method: str = "assign",
    plate_design: plate_design_lib.PlateDesign | None = None,
    known_plate_groups: Mapping[tuple[Hashable, int], int] | None = None,
    **balance_options,
) -> np.ndarray:
    """Post-process the predictions of a table of wells, plate by plate.

    Args:
      table: pandas DataFrame with columns ``experiment`` and ``plate`` (1-based), one row per well,
        aligned with ``logits``. Pass only the wells to predict (e.g. treatment wells: the labels
        of control wells are known).
      logits: ``[N, C]`` well logits of the treatment siRNAs, as the model gives them: greedy
        balancing softmaxes them over the wells (paper), so they must not be renormalised per well
        first; ``assign``, ``none`` and the inference of the plate groups give the same result for
        logits and log-probabilities. C may include control columns only when ``plate_design`` is
        given (they are never candidates then).
      method: ``"assign"`` (exact, default), ``"balance"`` (greedy, paper) or ``"none"`` (argmax,
        restricted to the plate's group when known).
      plate_design: the design learned from labelled plates (`plate_design.learn_plate_design`);
        a consistent one restricts each plate to its group, the experiment's assignment inferred
        from its predictions (`plate_design.infer_assignment`) unless all its plates are in
        ``known_plate_groups``. An inconsistent one restricts nothing.
      known_plate_groups: ``{(experiment, plate): group}`` known from labels or metadata.
      **balance_options: passed to ``greedy_balance``.

    Returns:
      int ``[N]``: predicted class per row.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    logits = np.asarray(logits)
    if len(table) != len(logits):
        raise ValueError(f"table has {len(table)} rows, logits {len(logits)}")
    if plate_design is None and logits.shape[1] > NUM_SIRNAS:
        raise ValueError(
            "without a plate design, pass treatment logits only (drop control columns)"
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
        masks = _plate_masks(plate_design, experiment, plate_rows, logits, known_plate_groups)
        for plate, rows in plate_rows.items():
            plate_logits = logits[rows]
            if method == "assign":
                prediction[rows] = assign(log_softmax(plate_logits), masks[plate])
            elif method == "balance":
                prediction[rows] = greedy_balance(plate_logits, masks[plate], **balance_options)
            else:
                candidates = _candidates(logits.shape[1], masks[plate])
                prediction[rows] = candidates[np.argmax(plate_logits[:, candidates], axis=1)]
    return prediction
