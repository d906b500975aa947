"""Well aggregation, ensembles, predictions and accuracy tables against hand-computed cases."""

import numpy as np
import pandas as pd
import pytest

from deepnoise_tf import evaluation


def test_accuracy_table_hand_case():
    labels = [0, 1, 2, 3, -1]
    predictions = [0, 0, 2, 3, 1]
    groups = ["b", "b", "a", "a", "c"]
    table = evaluation.accuracy_table(labels, predictions, groups)
    assert table["group"].tolist() == ["a", "b", "all"]
    assert table["wells"].tolist() == [2, 2, 4]
    assert table["correct"].tolist() == [2, 1, 3]
    np.testing.assert_allclose(table["accuracy"], [1.0, 0.5, 0.75])


def test_well_means_averages_sites_in_first_seen_order():
    site_logits = np.array(
        [
            [1.0, 2.0],  # well "b"
            [3.0, 0.0],  # well "a"
            [5.0, 4.0],  # well "b"
            [-1.0, 2.0],  # well "a"
            [7.0, 7.0],  # well "c", one site
        ]
    )
    wells, logits = evaluation.well_means(site_logits, ["b", "a", "b", "a", "c"])
    assert wells.tolist() == ["b", "a", "c"]
    np.testing.assert_allclose(logits, [[3.0, 3.0], [1.0, 1.0], [7.0, 7.0]])
    assert logits.dtype == np.float64


def test_well_means_averages_logits_not_probabilities():
    # Mean of logits [0, 0] and [4, 0] is [2, 0]; softmax of it differs from the mean of softmaxes.
    wells, logits = evaluation.well_means(np.array([[0.0, 0.0], [4.0, 0.0]]), [10, 10])
    assert wells.tolist() == [10]
    np.testing.assert_allclose(logits, [[2.0, 0.0]])


def test_well_means_random_against_loop():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 6, size=40)
    site_logits = rng.normal(size=(40, 5)).astype(np.float32)
    wells, logits = evaluation.well_means(site_logits, ids)
    expected_order = list(dict.fromkeys(ids.tolist()))
    assert wells.tolist() == expected_order
    for row, well in enumerate(expected_order):
        np.testing.assert_allclose(logits[row], site_logits[ids == well].astype(np.float64).mean(0))
    with pytest.raises(ValueError):
        evaluation.well_means(site_logits, ids[:-1])


def test_accuracy_table_ignores_unknown_labels_and_empty_groups():
    # -1 (a hidden test label) is not a well to score; HEPG2 has none left, so it has no row.
    table = evaluation.accuracy_table([5, -1, 6, 7], [5, 5, 6, 0], ["RPE", "HEPG2", "RPE", "U2OS"])
    assert table["group"].tolist() == ["RPE", "U2OS", "all"]
    np.testing.assert_allclose(table["accuracy"], [1.0, 0.0, 2 / 3])
    with pytest.raises(ValueError):
        evaluation.accuracy_table([1, 2], [1], ["a", "b"])


def sites_table():
    """Five sites of three wells (two treatment, one control), labels as TFDS stores them."""
    return pd.DataFrame(
        {
            "id_code": ["e-1_p1_B02", "e-1_p1_B03", "e-1_p1_B02", "e-1_p1_B03", "e-1_p1_C04"],
            "site": [1, 1, 2, 2, 1],
            "experiment": ["e-1"] * 5,
            "plate": [1] * 5,
            "well": ["B02", "B03", "B02", "B03", "C04"],
            "cell_type": ["RPE"] * 5,
            "well_type": ["treatment", "treatment", "treatment", "treatment", "negative_control"],
            "label": [2, 0, 2, 0, 1138],
        }
    )


def test_aggregate_wells_keeps_one_row_per_well_with_its_label():
    values = np.arange(10.0).reshape(5, 2)
    wells, means = evaluation.aggregate_wells(sites_table(), values)
    assert wells.columns.tolist() == list(evaluation.WELL_COLUMNS)
    assert wells["id_code"].tolist() == ["e-1_p1_B02", "e-1_p1_B03", "e-1_p1_C04"]
    assert wells["label"].tolist() == [2, 0, 1138]
    np.testing.assert_allclose(means, [[2.0, 3.0], [4.0, 5.0], [8.0, 9.0]])


def test_ensemble_and_alignment_by_well():
    reference = pd.DataFrame({"id_code": ["a", "b", "c"]})
    shuffled = pd.DataFrame({"id_code": ["c", "a", "b"]})
    values = np.array([[3.0], [1.0], [2.0]])
    np.testing.assert_allclose(
        evaluation.align_wells(reference, shuffled, values), [[1.0], [2.0], [3.0]]
    )
    with pytest.raises(ValueError, match="missing"):
        evaluation.align_wells(reference, shuffled.iloc[:2], values[:2])
    np.testing.assert_allclose(
        evaluation.ensemble_logits([np.array([[0.0, 4.0]]), np.array([[2.0, 0.0]])]), [[1.0, 2.0]]
    )


def test_well_predictions_drop_controls_and_apply_the_plate_prior():
    """Two treatment wells whose argmax is the same siRNA: the exact assignment uses it once."""
    wells, _ = evaluation.aggregate_wells(sites_table(), np.zeros((5, 1)))
    logits = np.full((3, 1139), -10.0)
    logits[0, [2, 0]] = [5.0, 1.0]  # B02: siRNA 2, else 0
    logits[1, [2, 0]] = [6.0, 4.0]  # B03: siRNA 2 even more, else 0
    logits[2, 1138] = 9.0  # the control well
    table = evaluation.well_predictions(wells, logits, method="assign")
    assert table["id_code"].tolist() == ["e-1_p1_B02", "e-1_p1_B03"]
    assert table["raw_prediction"].tolist() == [2, 2]
    # log p: B02 (2: ~0, 0: ~-4), B03 (2: ~-0.13, 0: ~-2.1): {B02->0, B03->2} loses more than
    # {B02->2, B03->0}, so B02 keeps 2 and B03 takes 0.
    assert table["prediction"].tolist() == [2, 0]
    report = evaluation.accuracy_report(table, "assign")
    assert report["stage"].tolist() == ["raw", "raw", "assign", "assign"]
    np.testing.assert_allclose(report["accuracy"], [0.5, 0.5, 1.0, 1.0])
    hidden = table.assign(label=-1)
    assert evaluation.accuracy_report(hidden, "assign") is None
