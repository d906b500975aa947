"""Plate-prior post-processing against brute force, hand-made designs and docs/method.md §8."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from deepnoise_tf import evaluation, plate_design, postprocess

# ---------------------------------------------------------------------------------------------
# Independent references


def brute_force_best_total(log_probs, candidates, capacity=1):
    """Best summed log-prob over all maps wells -> candidates using no class more than capacity times."""
    best = -math.inf
    for choice in itertools.product(candidates, repeat=len(log_probs)):
        if max(np.bincount(choice)) > capacity:
            continue
        total = sum(log_probs[i, c] for i, c in enumerate(choice))
        best = max(best, total)
    return best


def total(log_probs, prediction):
    return float(log_probs[np.arange(len(prediction)), prediction].sum())


def paper_greedy_balance(plate_logits, alpha=0.01, min_alpha=1e-4):
    """The paper's greedy balancing of one plate ("Prior-based post-processing"; docs/method.md §8),
    transcribed step by step: the plate's logits of its candidate classes, a softmax over the wells
    for each class, coefficients starting at 1, the most-predicted class's coefficient lowered by
    alpha (one step at a time, until a prediction changes) for K moves a round, the best
    coefficients kept by the score sum_k min(n_k / N, 1 / K), alpha halved after a round without
    gain, stop below min_alpha or at the perfect score."""
    plate_logits = np.asarray(plate_logits, dtype=np.float64)
    num_wells, num_classes = plate_logits.shape
    probs = np.zeros_like(plate_logits)
    for k in range(num_classes):
        column = [math.exp(v - max(plate_logits[:, k])) for v in plate_logits[:, k]]
        for i in range(num_wells):
            probs[i, k] = column[i] / sum(column)

    def predict(coefficients):
        return [int(np.argmax(probs[i] * coefficients)) for i in range(num_wells)]

    def score(prediction):
        counts = [prediction.count(k) for k in range(num_classes)]
        return sum(min(n / num_wells, 1 / num_classes) for n in counts)

    perfect = min(num_wells, num_classes) / num_classes
    best_coefficients = np.ones(num_classes)
    best_prediction = predict(best_coefficients)
    best = score(best_prediction)
    while best < perfect - 1e-12 and alpha >= min_alpha:
        coefficients, prediction = best_coefficients.copy(), list(best_prediction)
        gained = False
        for _ in range(num_classes):
            counts = [prediction.count(k) for k in range(num_classes)]
            top = counts.index(max(counts))
            while True:
                coefficients[top] = max(0.0, coefficients[top] - alpha)
                new = predict(coefficients)
                if new != prediction or coefficients[top] == 0.0:
                    break
            prediction = new
            if score(prediction) > best + 1e-12:
                best, gained = score(prediction), True
                best_coefficients, best_prediction = coefficients.copy(), list(prediction)
                if best >= perfect - 1e-12:
                    break
        if not gained:
            alpha /= 2
    return np.array(best_prediction)


def score_of_prediction(prediction, candidates, num_wells):
    counts = np.array([(prediction == c).sum() for c in candidates])
    return sum(min(n / num_wells, 1 / len(candidates)) for n in counts)


# ---------------------------------------------------------------------------------------------
# assign


@pytest.mark.parametrize("num_wells,num_classes", [(1, 1), (3, 3), (4, 6), (6, 6), (5, 7), (2, 5)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_assign_matches_brute_force(num_wells, num_classes, seed):
    rng = np.random.default_rng(seed)
    log_probs = np.log(rng.dirichlet(np.ones(num_classes) * 0.3, size=num_wells))
    prediction = postprocess.assign(log_probs)
    assert prediction.shape == (num_wells,)
    assert len(set(prediction.tolist())) == num_wells  # never twice in a plate
    best = brute_force_best_total(log_probs, list(range(num_classes)))
    assert total(log_probs, prediction) == pytest.approx(best, abs=1e-9)
    # The argmax total bounds every feasible total from above.
    assert total(log_probs, prediction) <= log_probs.max(axis=1).sum() + 1e-9


@pytest.mark.parametrize("seed", range(4))
def test_assign_with_candidate_mask_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    log_probs = rng.normal(size=(4, 9)) * 3
    mask = np.zeros(9, dtype=bool)
    mask[[1, 4, 5, 7, 8]] = True
    prediction = postprocess.assign(log_probs, mask)
    assert mask[prediction].all()
    assert len(set(prediction.tolist())) == 4
    best = brute_force_best_total(log_probs, [1, 4, 5, 7, 8])
    assert total(log_probs, prediction) == pytest.approx(best, abs=1e-9)


@pytest.mark.parametrize("num_wells,num_classes", [(5, 2), (6, 4), (4, 3), (6, 3)])
def test_assign_more_wells_than_candidates_caps_each_class(num_wells, num_classes):
    rng = np.random.default_rng(num_wells * 10 + num_classes)
    log_probs = rng.normal(size=(num_wells, num_classes)) * 2
    prediction = postprocess.assign(log_probs)
    capacity = math.ceil(num_wells / num_classes)
    assert np.bincount(prediction, minlength=num_classes).max() <= capacity
    best = brute_force_best_total(log_probs, list(range(num_classes)), capacity)
    assert total(log_probs, prediction) == pytest.approx(best, abs=1e-9)


def test_assign_keeps_a_feasible_argmax():
    # When the argmax already uses every class at most once it is the optimum.
    log_probs = np.log(np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]))
    np.testing.assert_array_equal(postprocess.assign(log_probs), [1, 0, 2])


def test_assign_hand_case_resolves_collision():
    # Both wells prefer class 0; giving it to well 1 costs less (log 0.9 + log 0.5 > log 0.8 + log 0.1).
    log_probs = np.log(np.array([[0.8, 0.2, 0.0001], [0.9, 0.1, 0.0001]]))
    np.testing.assert_array_equal(postprocess.assign(log_probs), [1, 0])


def test_assign_handles_impossible_entries():
    with np.errstate(divide="ignore"):
        log_probs = np.log(np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]))
    prediction = postprocess.assign(log_probs)
    assert sorted(prediction.tolist()) == [0, 1, 2]
    assert prediction[2] == 1  # the only way to use just one impossible pair
    # A well that is impossible everywhere still gets a class.
    everywhere = np.full((2, 2), -np.inf)
    assert sorted(postprocess.assign(everywhere).tolist()) == [0, 1]
    with pytest.raises(ValueError):
        postprocess.assign(np.array([[np.nan, 0.0]]))
    with pytest.raises(ValueError):
        postprocess.assign(np.zeros((2, 3)), np.zeros(3, dtype=bool))


def test_assign_is_invariant_to_per_well_shifts():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(6, 8))
    shifted = logits + rng.normal(size=(6, 1)) * 10
    np.testing.assert_array_equal(postprocess.assign(logits), postprocess.assign(shifted))


# ---------------------------------------------------------------------------------------------
# greedy_balance


def toy_balance_plates(rng, num_plates=4, per_group=25):
    """One experiment, plates 1..4 each holding one group of ``per_group`` siRNAs (groups in a
    shuffled order), and logits whose per-well scale varies tenfold, so that a per-well
    log-softmax changes the softmax over the wells."""
    num_sirnas = num_plates * per_group
    groups = rng.permutation(np.repeat(np.arange(num_plates), per_group))
    order = rng.permutation(num_plates)
    rows, logits, labels = [], [], []
    for plate, group in enumerate(order, start=1):
        truth = rng.permutation(np.flatnonzero(groups == group))
        scale = rng.uniform(0.3, 3.0, size=(len(truth), 1))
        plate_logits = rng.normal(size=(len(truth), num_sirnas)) * scale
        plate_logits[np.arange(len(truth)), truth] += 1.5 * scale[:, 0]
        rows += [("toy-1", plate, "treatment") for _ in truth]
        logits.append(plate_logits)
        labels.append(truth)
    wells = pd.DataFrame(rows, columns=["experiment", "plate", "well_type"])
    wells["label"] = np.concatenate(labels)
    design = plate_design.cyclic_design(groups, order, num_plates)
    return wells, np.concatenate(logits), design


def test_greedy_balance_is_fed_the_well_logits_as_in_the_paper():
    """The plate prior's `balance` equals the paper's algorithm (transcribed above) on the plate's
    logits of its group's siRNAs; fed per-well log-softmax instead, many predictions differ."""
    wells, logits, design = toy_balance_plates(np.random.default_rng(8))
    prediction = postprocess.postprocess_predictions(wells, logits, "balance", design)
    from_log_probs, changed = [], 0
    for plate in range(1, 5):
        rows = np.flatnonzero((wells["plate"] == plate).to_numpy())
        group = design.sirna_groups[wells["label"].to_numpy()[rows[0]]]  # the plate's true group
        candidates = np.flatnonzero(design.sirna_groups == group)
        expected = candidates[paper_greedy_balance(logits[rows][:, candidates])]
        np.testing.assert_array_equal(prediction[rows], expected)
        log_probs = postprocess.log_softmax(logits[rows])  # the departure: renormalised per well
        other = candidates[paper_greedy_balance(log_probs[:, candidates])]
        changed += int((other != expected).sum())
        from_log_probs.append(other)
    assert changed >= 10, changed  # the toy case tells the two inputs apart
    # The path the commands take (evaluation.well_predictions) feeds the same logits.
    table = evaluation.well_predictions(wells, logits, method="balance", plate_design=design)
    np.testing.assert_array_equal(table["prediction"], prediction)


@pytest.mark.parametrize("seed", range(8))
def test_greedy_balance_never_lowers_the_score(seed):
    rng = np.random.default_rng(100 + seed)
    num_wells, num_classes = 8, 8 + seed % 3
    logits = rng.normal(size=(num_wells, num_classes)) * 3
    candidates = np.arange(num_classes)
    # Start of the search: argmax of the column-wise softmax (all coefficients 1).
    column_probs = np.exp(logits - logits.max(axis=0))
    column_probs /= column_probs.sum(axis=0)
    start = score_of_prediction(np.argmax(column_probs, axis=1), candidates, num_wells)
    prediction = postprocess.greedy_balance(logits)
    assert prediction.shape == (num_wells,)
    assert score_of_prediction(prediction, candidates, num_wells) >= start - 1e-12


def test_greedy_balance_reaches_perfect_score_on_easy_plate():
    rng = np.random.default_rng(7)
    num_wells = 12
    truth = rng.permutation(num_wells)
    logits = rng.normal(size=(num_wells, num_wells)) * 0.3
    logits[np.arange(num_wells), truth] += 3.0
    # Wells 0 and 2 also like the class of wells 1 and 3 more than their own: at c = 1 the
    # column-wise softmax gives both wells of a pair the same class.
    logits[0, truth[1]] += 5.0
    logits[2, truth[3]] += 5.0
    column_probs = np.exp(logits - logits.max(axis=0))
    column_probs /= column_probs.sum(axis=0)
    start = np.argmax(column_probs, axis=1)
    assert len(set(start.tolist())) < num_wells  # the start is unbalanced ...
    prediction = postprocess.greedy_balance(logits)
    assert sorted(prediction.tolist()) == list(range(num_wells))  # ... the result is perfect
    np.testing.assert_array_equal(prediction, truth)


def test_greedy_balance_respects_candidates_and_more_wells():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(6, 10))
    mask = np.zeros(10, dtype=bool)
    mask[[2, 5, 9]] = True
    prediction = postprocess.greedy_balance(logits, mask)
    assert mask[prediction].all()
    # N = 2K: perfect means each class exactly twice. Rounds of K = 3 moves stop in a local
    # optimum on this plate (counts 1, 2, 3); longer rounds walk through the score-neutral moves.
    assert sorted(np.bincount(prediction, minlength=10)[[2, 5, 9]].tolist()) == [1, 2, 3]
    prediction = postprocess.greedy_balance(logits, mask, round_moves=50)
    assert sorted(np.bincount(prediction, minlength=10)[[2, 5, 9]].tolist()) == [2, 2, 2]


def test_balance_score_hand_cases():
    assert postprocess.balance_score(np.array([1, 1, 1]), 3) == pytest.approx(1.0)
    assert postprocess.balance_score(np.array([3, 0, 0]), 3) == pytest.approx(1 / 3)
    assert postprocess.balance_score(np.array([2, 0, 1, 0]), 3) == pytest.approx(0.5)  # N < K
    assert postprocess.balance_score(np.array([3, 3]), 6) == pytest.approx(1.0)  # N > K
    assert postprocess.balance_score(np.array([4, 2]), 6) == pytest.approx(0.5 + 1 / 3)


# ---------------------------------------------------------------------------------------------
# Whole tables


def planted_table(rng, groups, rotations, signal=1.5, noise=1.5):
    rows, log_probs, truths = [], [], []
    for experiment, g1 in enumerate(rotations):
        for plate in range(1, 5):
            group = (g1 + plate - 1) % 4
            truth = rng.permutation(np.flatnonzero(groups == group))
            logits = rng.normal(size=(len(truth), len(groups))) * noise
            logits[np.arange(len(truth)), truth] += signal
            log_probs.append(postprocess.log_softmax(logits))
            truths.append(truth)
            rows += [(f"E{experiment}", plate) for _ in truth]
    table = pd.DataFrame(rows, columns=["experiment", "plate"])
    return table, np.concatenate(log_probs), np.concatenate(truths)


def test_postprocess_predictions_restricts_balances_and_keeps_row_order():
    rng = np.random.default_rng(40)
    groups = rng.permutation(np.repeat(np.arange(4), 8))
    design = plate_design.cyclic_design(groups, range(4), num_plates=4)
    table, log_probs, truth = planted_table(rng, groups, rotations=[1, 3])
    order = rng.permutation(len(table))  # interleave plates and experiments
    table, log_probs, truth = (
        table.iloc[order].reset_index(drop=True),
        log_probs[order],
        truth[order],
    )

    plain = postprocess.postprocess_predictions(table, log_probs, method="none")
    np.testing.assert_array_equal(plain, np.argmax(log_probs, axis=1))
    for method in ("assign", "balance", "none"):
        prediction = postprocess.postprocess_predictions(table, log_probs, method, design)
        for (experiment, plate), rows in table.groupby(["experiment", "plate"]).groups.items():
            g1 = 1 if experiment == "E0" else 3
            assert (groups[prediction[rows]] == (g1 + plate - 1) % 4).all()
            if method == "assign":
                assert len(set(prediction[rows].tolist())) == len(rows)
    restricted = postprocess.postprocess_predictions(table, log_probs, "none", design)
    assigned = postprocess.postprocess_predictions(table, log_probs, "assign", design)
    assert np.mean(plain == truth) < np.mean(restricted == truth) < np.mean(assigned == truth)

    # Per plate, the table function equals the plate function on that plate's rows.
    rows = np.flatnonzero((table.experiment == "E1").to_numpy() & (table.plate == 2).to_numpy())
    mask = design.candidate_mask((3 + 2 - 1) % 4)
    np.testing.assert_array_equal(assigned[rows], postprocess.assign(log_probs[rows], mask))


def test_postprocess_predictions_known_plate_groups_override_inference():
    rng = np.random.default_rng(41)
    groups = rng.permutation(np.repeat(np.arange(4), 4))
    design = plate_design.cyclic_design(groups, range(4), num_plates=4)
    table, log_probs, _ = planted_table(rng, groups, rotations=[2])
    known = {("E0", p): (0 + p - 1) % 4 for p in range(1, 5)}  # deliberately not the planted one
    prediction = postprocess.postprocess_predictions(
        table, log_probs, "assign", design, known_plate_groups=known
    )
    for plate in range(1, 5):
        rows = (table.plate == plate).to_numpy()
        assert (groups[prediction[rows]] == known[("E0", plate)]).all()


def test_postprocess_predictions_with_control_columns():
    rng = np.random.default_rng(42)
    groups = rng.permutation(np.repeat(np.arange(4), 3))
    table, log_probs, _ = planted_table(rng, groups, rotations=[0])
    wide = np.concatenate([log_probs, np.zeros((len(log_probs), 2))], axis=1)  # controls win argmax
    design = plate_design.cyclic_design(groups, range(4), num_plates=4)
    prediction = postprocess.postprocess_predictions(table, wide, "none", design)
    assert prediction.max() < 12
    with pytest.raises(ValueError, match="without a plate design"):
        postprocess.postprocess_predictions(table, np.zeros((len(table), 1200)), "none")
    # An inconsistent design restricts nothing but still keeps the control columns out.
    inconsistent = plate_design.PlateDesign(groups, np.zeros((0, 4)), problem="a test")
    for method in ("assign", "balance", "none"):
        np.testing.assert_array_equal(
            postprocess.postprocess_predictions(table, wide, method, inconsistent),
            postprocess.postprocess_predictions(table, log_probs, method),
        )
    with pytest.raises(ValueError):
        postprocess.postprocess_predictions(table, log_probs, method="argmax")
