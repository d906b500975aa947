"""Plate-prior post-processing against brute force, hand-made designs and docs/method.md §8."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from deepnoise_tf import postprocess

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


def literal_greedy_balance(logits, candidates, alpha=0.01, min_alpha=1e-4, round_moves=None):
    """The paper's greedy balancing (docs/method.md §8) as a literal loop, one alpha step at a time.

    Same reading as the docstring of ``postprocess.greedy_balance``, without its jump over the
    steps that change no prediction: a move ends at the first step that changes a prediction.
    """
    restricted = np.asarray(logits, dtype=np.float64)[:, candidates]
    num_wells, num_candidates = restricted.shape
    round_moves = num_candidates if round_moves is None else round_moves
    exps = np.exp(restricted - restricted.max(axis=0))
    probs = exps / exps.sum(axis=0)
    perfect = min(num_wells, num_candidates) / num_candidates

    def score_of(prediction):
        counts = np.bincount(prediction, minlength=num_candidates)
        return sum(min(n / num_wells, 1 / num_candidates) for n in counts)

    best_c = np.ones(num_candidates)
    best_pred = np.argmax(probs * best_c, axis=1)
    best = score_of(best_pred)
    while best < perfect - 1e-12 and alpha >= min_alpha:
        c, pred, gained = best_c.copy(), best_pred.copy(), False
        for _ in range(round_moves):
            top = np.argmax(np.bincount(pred, minlength=num_candidates))
            while True:
                c[top] = max(0.0, c[top] - alpha)
                new = np.argmax(probs * c, axis=1)
                if (new != pred).any() or c[top] == 0.0:
                    break
            pred = new
            s = score_of(pred)
            if s > best + 1e-12:
                best, best_c, best_pred, gained = s, c.copy(), pred.copy(), True
                if best >= perfect - 1e-12:
                    break
        if not gained:
            alpha /= 2
    return np.asarray(candidates)[best_pred]


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


@pytest.mark.parametrize("seed", range(6))
def test_greedy_balance_matches_literal_loop(seed):
    rng = np.random.default_rng(seed)
    num_wells, num_classes = 5 + seed % 2, 7
    logits = rng.normal(size=(num_wells, num_classes)) * 2
    candidates = np.array([0, 2, 3, 4, 6]) if seed % 3 == 0 else np.arange(num_classes)
    mask = np.zeros(num_classes, dtype=bool)
    mask[candidates] = True
    fast = postprocess.greedy_balance(logits, mask)
    literal = literal_greedy_balance(logits, candidates)
    np.testing.assert_array_equal(fast, literal)


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
# Plate design: group derivation and rotations


def synthetic_design(rng, per_group=5, num_groups=4, num_experiments=3):
    """Random groups of ``per_group`` siRNAs among ids 0..num_groups*per_group-1, cyclic plates."""
    used = num_groups * per_group
    members = rng.permutation(used).reshape(num_groups, per_group)
    # Groups numbered by smallest member.
    members = members[np.argsort(members.min(axis=1))]
    groups = np.full(1108, -1)
    for group, ids in enumerate(members):
        groups[ids] = group
    rotations = rng.integers(0, num_groups, size=num_experiments)
    rows = []
    for experiment, g1 in enumerate(rotations):
        for plate in range(1, num_groups + 1):
            group = (g1 + plate - 1) % num_groups
            for sirna in rng.permutation(members[group]):
                rows.append((f"EXP-{experiment:02d}", plate, int(sirna)))
            rows.append((f"EXP-{experiment:02d}", plate, 1108 + plate))  # a control well
            rows.append((f"EXP-{experiment:02d}", plate, -1))  # a hidden label
    table = pd.DataFrame(rows, columns=["experiment", "plate", "sirna"])
    return groups, rotations, table


def test_sirna_groups_from_labels_recovers_design():
    rng = np.random.default_rng(11)
    groups, _, table = synthetic_design(rng)
    derived = postprocess.sirna_groups_from_labels(table.experiment, table.plate, table.sirna)
    np.testing.assert_array_equal(derived, groups)
    assert (derived[20:] == -1).all()
    assert derived[0] == 0


def test_sirna_groups_from_labels_joins_partial_plates():
    # Group {0, 3, 5}: plate A sees 0 and 3, plate B sees 3 and 5. Group {1, 2}: only plate C.
    experiments = ["A", "A", "B", "B", "C", "C", "C"]
    plates = [1, 1, 1, 1, 2, 2, 2]
    sirnas = [0, 3, 3, 5, 2, 1, 1200]
    derived = postprocess.sirna_groups_from_labels(experiments, plates, sirnas, num_sirnas=7)
    np.testing.assert_array_equal(derived, [0, 1, 1, 0, -1, 0, -1])
    # Same plate number in different experiments is a different plate.
    derived = postprocess.sirna_groups_from_labels(["A", "B"], [1, 1], [0, 1], num_sirnas=3)
    np.testing.assert_array_equal(derived, [0, 1, -1])


def test_cyclic_assignments_follow_rxrx1_rule():
    table = postprocess.cyclic_assignments(4)
    # The RxRx1 train rotations (1,2,3,0), (3,0,1,2), (2,3,0,1) and the test one (0,1,2,3).
    np.testing.assert_array_equal(table, [[0, 1, 2, 3], [1, 2, 3, 0], [2, 3, 0, 1], [3, 0, 1, 2]])


def planted_log_probs(rng, groups, plate_groups, noise=2.0, signal=3.0):
    """Noisy log-probs of a plate's wells: each well truly holds one siRNA of the plate's group."""
    result = {}
    for plate, group in plate_groups.items():
        truth = rng.permutation(np.flatnonzero(groups == group))
        logits = rng.normal(size=(len(truth), len(groups))) * noise
        logits[np.arange(len(truth)), truth] += signal
        result[plate] = postprocess.log_softmax(logits)
    return result


@pytest.mark.parametrize("g1", range(4))
def test_infer_rotation_recovers_planted_rotation(g1):
    rng = np.random.default_rng(20 + g1)
    groups = rng.permutation(np.repeat(np.arange(4), 6))  # 24 siRNAs, 4 groups
    plate_groups = {p: (g1 + p - 1) % 4 for p in range(1, 5)}
    log_probs = planted_log_probs(rng, groups, plate_groups)
    found, found_groups = postprocess.infer_rotation(log_probs, groups)
    assert found == g1
    assert found_groups == plate_groups
    # A sequence means plates 1..4; a missing plate is fine.
    assert postprocess.infer_rotation([log_probs[p] for p in range(1, 5)], groups)[0] == g1
    partial = {p: log_probs[p] for p in (2, 4)}
    assert postprocess.infer_rotation(partial, groups)[1] == {
        2: plate_groups[2],
        4: plate_groups[4],
    }


def test_infer_rotation_against_brute_force_likelihood():
    rng = np.random.default_rng(31)
    groups = np.repeat(np.arange(4), 3)
    log_probs = {p: postprocess.log_softmax(rng.normal(size=(3, 12))) for p in range(1, 5)}
    # Reference: per assignment, sum over wells of log(sum of probabilities inside the group).
    scores = []
    for g1 in range(4):
        score = 0.0
        for plate, lp in log_probs.items():
            members = groups == (g1 + plate - 1) % 4
            score += np.log(np.exp(lp[:, members]).sum(axis=1)).sum()
        scores.append(score)
    assert postprocess.infer_rotation(log_probs, groups)[0] == int(np.argmax(scores))


def test_infer_rotation_with_custom_assignments():
    rng = np.random.default_rng(32)
    groups = np.repeat(np.arange(4), 5)
    assignments = np.array([[0, 1, 2, 3], [3, 2, 1, 0]])
    log_probs = planted_log_probs(rng, groups, {1: 3, 2: 2, 3: 1, 4: 0})
    assert postprocess.infer_rotation(log_probs, groups, assignments)[0] == 1


def test_plate_candidate_mask_excludes_controls():
    groups = np.array([0, 1, 0, -1, 1])
    mask = postprocess.plate_candidate_mask(0, groups, num_classes=7)
    np.testing.assert_array_equal(mask, [True, False, True, False, False, False, False])
    np.testing.assert_array_equal(postprocess.plate_candidate_mask(1, groups), [0, 1, 0, 0, 1])


def test_sirna_log_probs_drops_controls():
    logits = np.array([[1.0, 2.0, 3.0, 50.0]])
    expected = np.log(np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum())
    np.testing.assert_allclose(postprocess.sirna_log_probs(logits, num_sirnas=3)[0], expected)


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
        prediction = postprocess.postprocess_predictions(table, log_probs, method, groups)
        for (experiment, plate), rows in table.groupby(["experiment", "plate"]).groups.items():
            g1 = 1 if experiment == "E0" else 3
            assert (groups[prediction[rows]] == (g1 + plate - 1) % 4).all()
            if method == "assign":
                assert len(set(prediction[rows].tolist())) == len(rows)
    restricted = postprocess.postprocess_predictions(table, log_probs, "none", groups)
    assigned = postprocess.postprocess_predictions(table, log_probs, "assign", groups)
    assert np.mean(plain == truth) < np.mean(restricted == truth) < np.mean(assigned == truth)

    # Per plate, the table function equals the plate function on that plate's rows.
    rows = np.flatnonzero((table.experiment == "E1").to_numpy() & (table.plate == 2).to_numpy())
    mask = postprocess.plate_candidate_mask((3 + 2 - 1) % 4, groups)
    np.testing.assert_array_equal(assigned[rows], postprocess.assign(log_probs[rows], mask))


def test_postprocess_predictions_known_plate_groups_override_inference():
    rng = np.random.default_rng(41)
    groups = rng.permutation(np.repeat(np.arange(4), 4))
    table, log_probs, _ = planted_table(rng, groups, rotations=[2])
    known = {("E0", p): (0 + p - 1) % 4 for p in range(1, 5)}  # deliberately not the planted one
    prediction = postprocess.postprocess_predictions(
        table, log_probs, "assign", groups, known_plate_groups=known
    )
    for plate in range(1, 5):
        rows = (table.plate == plate).to_numpy()
        assert (groups[prediction[rows]] == known[("E0", plate)]).all()


def test_postprocess_predictions_with_control_columns():
    rng = np.random.default_rng(42)
    groups = rng.permutation(np.repeat(np.arange(4), 3))
    table, log_probs, _ = planted_table(rng, groups, rotations=[0])
    wide = np.concatenate([log_probs, np.zeros((len(log_probs), 2))], axis=1)  # controls win argmax
    prediction = postprocess.postprocess_predictions(table, wide, "none", groups)
    assert prediction.max() < 12
    with pytest.raises(ValueError):
        postprocess.postprocess_predictions(table, log_probs, method="argmax")
