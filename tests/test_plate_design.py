"""The plate design learned from labelled plates (groups, their order over the plates, each test
experiment's assignment) and the plate prior on designs whose groups follow another order than
RxRx1's, against hand-built tables (docs/method.md §8)."""

import argparse
import itertools

import numpy as np
import pandas as pd
import pytest

from deepnoise_tf import cli, evaluation, plate_design, postprocess, synthetic

# Orders of the true groups over plates 1-4: RxRx1's, a rotation of it, and orders no rotation of
# it gives (on which the rule "plate p holds group (g1 + p - 1) mod 4" is wrong).
ORDERS = [(0, 1, 2, 3), (2, 3, 0, 1), (0, 2, 1, 3), (3, 1, 0, 2), (1, 0, 3, 2)]
METHODS = ("none", "balance", "assign")


# ------------------------------------------------------------------------------------------------
# Hand-built designs


def true_groups(rng, num_sirnas=40, num_groups=4):
    """A random partition of siRNA ids 0..num_sirnas-1 into equal groups: ``[num_sirnas]`` labels
    whose numbering follows neither the ids nor the plates."""
    return rng.permutation(np.repeat(np.arange(num_groups), num_sirnas // num_groups))


def design_table(rng, groups, order, starts, prefix="train", plates=(1, 2, 3, 4)):
    """One row per well: experiment, plate, well_type, label. Experiment e starts at position
    ``starts[e]`` of ``order``; each plate holds its group's siRNAs once, a control and a hidden
    label (both to be ignored)."""
    rows = []
    for number, start in enumerate(starts):
        experiment = f"{prefix}-{number}"
        for plate in plates:
            group = order[(start + plate - 1) % len(order)]
            for sirna in rng.permutation(np.flatnonzero(groups == group)):
                rows.append((experiment, plate, "treatment", int(sirna)))
            rows.append((experiment, plate, "negative_control", 1138))
    return pd.DataFrame(rows, columns=["experiment", "plate", "well_type", "label"])


def learn(table):
    return plate_design.learn_plate_design(table["experiment"], table["plate"], table["label"])


def as_true_groups(design, groups):
    """The learned assignments with each learned group renamed to the true group it stands for."""
    names = {}
    for sirna, learned in enumerate(design.sirna_groups[: len(groups)]):
        assert names.setdefault(int(learned), int(groups[sirna])) == groups[sirna]
    return {tuple(names[int(g)] for g in row) for row in design.assignments}


def rotations_of(order, num_plates=4):
    return {
        tuple(order[(s + p) % len(order)] for p in range(num_plates)) for s in range(len(order))
    }


def one_hot_logits(labels, num_classes=1139):
    logits = np.zeros((len(labels), num_classes))
    logits[np.arange(len(labels)), labels] = 10.0
    return logits


def wells_of(table):
    return table.assign(id_code=[f"w{i}" for i in range(len(table))], cell_type="HUVEC")


# ------------------------------------------------------------------------------------------------
# Learning


@pytest.mark.parametrize("order", ORDERS)
def test_groups_and_order_are_learned_whatever_the_order_and_numbering(order):
    rng = np.random.default_rng(sum(order) + 10 * order[1])
    groups = true_groups(rng)
    design = learn(design_table(rng, groups, order, starts=[0, 3, 1]))
    assert design.consistent and design.problem == ""
    # The learned groups are the true partition (renaming checked inside as_true_groups).
    assert as_true_groups(design, groups) == rotations_of(order)
    assert (design.sirna_groups[40:] == -1).all()
    assert design.assignments.shape == (4, 4) and design.num_plates == 4
    np.testing.assert_array_equal(design.assignments[:, 0], np.arange(4))  # row g: g on plate 1
    assert "4 siRNA groups of 10 siRNAs" in design.describe()


def test_one_training_experiment_closes_the_order_into_a_cycle():
    rng = np.random.default_rng(1)
    groups = true_groups(rng)
    design = learn(design_table(rng, groups, (3, 1, 0, 2), starts=[2]))
    assert as_true_groups(design, groups) == rotations_of((3, 1, 0, 2))


def test_more_groups_than_plates_walk_the_order():
    """8 groups over plates 1-4: the candidates are the 8 walks of length 4 along the cycle."""
    rng = np.random.default_rng(2)
    groups = true_groups(rng, num_sirnas=48, num_groups=8)
    order = (5, 2, 7, 0, 3, 6, 1, 4)
    design = learn(design_table(rng, groups, order, starts=[0, 4, 2, 6, 1]))
    assert as_true_groups(design, groups) == rotations_of(order)


def inconsistent_tables(rng, groups):
    """(name, table, words of the problem) for each way labelled plates can fail to show a design."""
    disagree = pd.concat(
        [
            design_table(rng, groups, (0, 1, 2, 3), [0]),
            design_table(rng, groups, (0, 2, 1, 3), [0], "b"),
        ]
    )
    overlapping = pd.DataFrame(
        [("e", plate, "treatment", sirna) for plate in (1, 2, 3, 4) for sirna in range(3 * plate, 3 * plate + 5)],
        columns=["experiment", "plate", "well_type", "label"],
    )  # fmt: skip
    gaps = design_table(rng, groups, (0, 1, 2, 3), [0, 1, 2], plates=(1, 3))
    skipped = pd.concat(
        [
            design_table(rng, groups, (0, 1, 2, 3), [0]),
            design_table(rng, groups, (0, 2, 1, 3), [0], "b", plates=(1, 3)),
        ]
    )
    return [
        ("successors disagree", disagree, "followed by"),
        ("groups not disjoint", overlapping, "not disjoint"),
        ("too few labelled plates", gaps, "fewer labelled plates"),
        ("no rotation fits", skipped, "no rotation"),
    ]


@pytest.mark.parametrize("case", range(4))
def test_inconsistent_plates_say_why_and_restrict_nothing(case):
    rng = np.random.default_rng(3)
    groups = true_groups(rng)
    _, table, words = inconsistent_tables(rng, groups)[case]
    with pytest.warns(UserWarning, match="no consistent plate design"):
        design = learn(table)
    assert not design.consistent and words in design.problem
    assert design.assignments.shape[0] == 0
    assert design.describe().startswith("no consistent plate design")
    with pytest.raises(ValueError, match="no assignment"):
        plate_design.infer_assignment(design, [np.zeros((2, 40))])


def test_no_labelled_treatment_well():
    with pytest.warns(UserWarning, match="no labelled treatment well"):
        design = plate_design.learn_plate_design(["e", "e"], [1, 2], [1138, -1])
    assert not design.consistent and (design.sirna_groups == -1).all()


def test_the_design_is_frozen():
    design = plate_design.cyclic_design(np.array([0, 1, 1, 0]), (1, 0), num_plates=3)
    np.testing.assert_array_equal(design.assignments, [[0, 1, 0], [1, 0, 1]])
    with pytest.raises(ValueError):
        design.sirna_groups[0] = 1
    with pytest.raises(AttributeError):
        design.problem = "changed"


def test_sirna_groups_from_labels_joins_partial_plates():
    # Group {0, 3, 5}: plate A sees 0 and 3, plate B sees 3 and 5. Group {1, 2}: only plate C.
    experiments = ["A", "A", "B", "B", "C", "C", "C"]
    plates = [1, 1, 1, 1, 2, 2, 2]
    sirnas = [0, 3, 3, 5, 2, 1, 1200]
    derived = plate_design.sirna_groups_from_labels(experiments, plates, sirnas, num_sirnas=7)
    np.testing.assert_array_equal(derived, [0, 1, 1, 0, -1, 0, -1])
    # Same plate number in different experiments is a different plate.
    derived = plate_design.sirna_groups_from_labels(["A", "B"], [1, 1], [0, 1], num_sirnas=3)
    np.testing.assert_array_equal(derived, [0, 1, -1])


def test_rotations_of_the_rxrx1_order_are_its_rule():
    np.testing.assert_array_equal(
        plate_design.rotations(range(4), 4), [[(g + p) % 4 for p in range(4)] for g in range(4)]
    )


def test_candidate_mask_excludes_controls_and_other_groups():
    design = plate_design.cyclic_design(np.array([0, 1, 0, -1, 1]), (0, 1), num_plates=2)
    mask = design.candidate_mask(0, num_classes=7)
    np.testing.assert_array_equal(mask, [True, False, True, False, False, False, False])
    np.testing.assert_array_equal(design.candidate_mask(1), [0, 1, 0, 0, 1])


# ------------------------------------------------------------------------------------------------
# Inference of an unlabelled experiment's assignment


def planted_logits(rng, table, noise=2.0, signal=3.0, num_classes=1139):
    logits = rng.normal(size=(len(table), num_classes)) * noise
    logits[np.arange(len(table)), table["label"].to_numpy()] += signal
    return logits


@pytest.mark.parametrize("order", ORDERS[2:])
def test_each_test_experiment_gets_its_own_assignment(order):
    rng = np.random.default_rng(4)
    groups = true_groups(rng)
    design = learn(design_table(rng, groups, order, starts=[1, 2]))
    test = design_table(rng, groups, order, starts=[0, 1, 2, 3], prefix="test")
    treatment = test[test["well_type"] == "treatment"].reset_index(drop=True)
    logits = planted_logits(rng, treatment)
    for _, wells in treatment.groupby("experiment"):
        per_plate = {p: logits[rows.index] for p, rows in wells.groupby("plate")}
        row, plate_groups = plate_design.infer_assignment(design, per_plate)
        truth = wells.groupby("plate")["label"].first().map(lambda s: design.sirna_groups[s])
        assert plate_groups == truth.to_dict()
        np.testing.assert_array_equal(design.assignments[row], truth.to_numpy())
        # Plates 2 and 4 alone, and the sequence form (plates 1, 2, ...), agree.
        assert plate_design.infer_assignment(design, {2: per_plate[2], 4: per_plate[4]})[0] == row
        assert plate_design.infer_assignment(design, [per_plate[p] for p in (1, 2, 3, 4)])[0] == row
    with pytest.raises(ValueError, match="outside the learned plates"):
        plate_design.infer_assignment(design, {5: logits[:3]})


def test_inference_maximises_the_group_likelihood_by_brute_force():
    rng = np.random.default_rng(31)
    groups = np.repeat(np.arange(4), 3)
    design = plate_design.cyclic_design(groups, (2, 0, 3, 1), num_plates=4)
    logits = {p: rng.normal(size=(3, 12)) * 2 for p in range(1, 5)}
    scores = []
    for row in design.assignments:
        score = 0.0
        for plate, plate_logits in logits.items():
            probs = np.exp(plate_logits) / np.exp(plate_logits).sum(axis=1, keepdims=True)
            score += np.log(probs[:, groups == row[plate - 1]].sum(axis=1)).sum()
        scores.append(score)
    assert plate_design.infer_assignment(design, logits)[0] == int(np.argmax(scores))


# ------------------------------------------------------------------------------------------------
# The plate prior on a permuted design


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("order", ORDERS)
def test_one_hot_logits_give_every_mode_full_accuracy_whatever_the_order(order, method):
    rng = np.random.default_rng(5)
    groups = true_groups(rng)
    design = learn(design_table(rng, groups, order, starts=[0, 2]))
    test = wells_of(design_table(rng, groups, order, starts=[1, 3, 0], prefix="test"))
    logits = one_hot_logits(test["label"].to_numpy())
    table = evaluation.well_predictions(test, logits, method=method, plate_design=design)
    assert len(table) == 3 * 40
    assert (table["prediction"] == table["label"]).all()
    # The RxRx1 rule in the numbering by smallest member (what was assumed before) is another
    # cycle here unless the learned one happens to be it; then at most 2 of 4 plates are right.
    by_rule = plate_design.cyclic_design(design.sirna_groups, range(4), num_plates=4)
    if set(map(tuple, by_rule.assignments)) != set(map(tuple, design.assignments)):
        ruled = evaluation.well_predictions(test, logits, method=method, plate_design=by_rule)
        assert (ruled["prediction"] == ruled["label"]).mean() <= 0.5


@pytest.mark.parametrize("case", range(4))
def test_inconsistent_design_is_never_worse_than_no_post_processing(case):
    rng = np.random.default_rng(6)
    groups = true_groups(rng)
    _, table, _ = inconsistent_tables(rng, groups)[case]
    with pytest.warns(UserWarning):
        design = learn(table)
    test = wells_of(design_table(rng, groups, (0, 2, 1, 3), starts=[1, 2], prefix="test"))
    labels = test["label"].to_numpy()
    for logits in (one_hot_logits(labels), planted_logits(rng, test, noise=1.0, signal=2.5)):
        plain = evaluation.well_predictions(test, logits, method="none")
        plain_accuracy = (plain["prediction"] == plain["label"]).mean()
        for method in METHODS:
            fallback = evaluation.well_predictions(test, logits, method=method, plate_design=design)
            unrestricted = evaluation.well_predictions(test, logits, method=method)
            # Per plate over all siRNAs: exactly what no plate design gives ...
            np.testing.assert_array_equal(fallback["prediction"], unrestricted["prediction"])
            accuracy = (fallback["prediction"] == fallback["label"]).mean()
            # ... and, for the exact assignment, at least the plain argmax's accuracy here.
            if method != "balance":
                assert accuracy >= plain_accuracy


# ------------------------------------------------------------------------------------------------
# End to end: a synthetic RxRx1 source whose plates follow another order


@pytest.mark.parametrize("order", [(0, 2, 1, 3), (3, 0, 2, 1)])
def test_synthetic_source_with_a_permuted_order_through_the_commands_path(tmp_path, order):
    """The generator writes a source folder whose groups follow ``order``; the design the commands
    learn from its training labels (`cli.plate_design`, `--images`) gives every mode 100% on the
    test wells with one-hot logits."""
    truth = synthetic.write_dataset(
        tmp_path, layout="release", preset="tiny", seed=3, plate_group_order=order,
        image_size=8, sites=1,
    )  # fmt: skip
    plates = truth.drop_duplicates(["experiment", "plate"])
    for _, experiment in plates.groupby("experiment"):
        sequence = tuple(experiment.sort_values("plate")["plate_group"])
        assert sequence in rotations_of(order)  # the generator follows the order asked for
    design = cli.plate_design(argparse.Namespace(images=str(tmp_path)), "train")
    assert design.consistent
    test = truth[truth["dataset"] == "test"].drop_duplicates("id_code")
    wells = test.rename(columns={"sirna": "label"})[list(evaluation.WELL_COLUMNS)]
    wells = wells.reset_index(drop=True)
    logits = one_hot_logits(wells["label"].to_numpy())
    treatment = (wells["well_type"] == "treatment").sum()
    for method in METHODS:
        table = evaluation.well_predictions(wells, logits, method=method, plate_design=design)
        assert len(table) == treatment
        assert (table["prediction"] == table["label"]).all(), method
    # The old rule on the same data (groups are id mod 4 here, numbered by smallest member).
    by_rule = plate_design.cyclic_design(design.sirna_groups, range(4), num_plates=4)
    table = evaluation.well_predictions(wells, logits, method="assign", plate_design=by_rule)
    assert (table["prediction"] == table["label"]).mean() <= 0.5


def test_default_order_keeps_the_generators_design():
    parameters = synthetic.resolve_parameters("tiny")
    default = synthetic.design(parameters, seed=0)
    pd.testing.assert_frame_equal(default, synthetic.design(parameters, 0, (0, 1, 2, 3)))
    for _, experiment in default.drop_duplicates(["experiment", "plate"]).groupby("experiment"):
        groups = experiment.sort_values("plate")["plate_group"].to_numpy()
        np.testing.assert_array_equal(groups, (groups[0] + np.arange(4)) % 4)  # RxRx1's rule
    with pytest.raises(ValueError, match="permutation"):
        synthetic.design(parameters, 0, (0, 1, 1, 3))


def test_assign_equals_brute_force_on_tiny_plates_with_a_learned_design():
    """Per plate, the table function is the exact assignment over the plate's group (brute force)."""
    rng = np.random.default_rng(9)
    groups = true_groups(rng, num_sirnas=16)
    design = learn(design_table(rng, groups, (1, 3, 0, 2), starts=[0]))
    test = design_table(rng, groups, (1, 3, 0, 2), starts=[2], prefix="test")
    test = test[test["well_type"] == "treatment"].reset_index(drop=True)
    logits = planted_logits(rng, test, noise=1.5, signal=2.0, num_classes=16)
    prediction = postprocess.postprocess_predictions(test, logits, "assign", design)
    for _, rows in test.groupby("plate"):
        index = rows.index.to_numpy()
        members = np.flatnonzero(design.sirna_groups == design.sirna_groups[prediction[index[0]]])
        best = max(
            itertools.permutations(members, len(index)),
            key=lambda labels: sum(logits[i, s] for i, s in zip(index, labels, strict=True)),
        )
        np.testing.assert_array_equal(prediction[index], best)
