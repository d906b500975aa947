"""Metrics and per-well aggregation against hand-computed cases."""

import math

import numpy as np
import pytest

from deepnoise_tf import metrics


def test_accuracy_hand_case():
    assert metrics.accuracy([1, 2, 3, 4], [1, 0, 3, 0]) == pytest.approx(0.5)
    assert metrics.accuracy(np.array([7]), np.array([7])) == 1.0


def test_accuracy_ignores_unknown_labels():
    # Labels -1 (hidden test treatments) do not count: 2 of the 3 known labels are right.
    assert metrics.accuracy([5, -1, 6, 7, -1], [5, 5, 6, 0, 3]) == pytest.approx(2 / 3)
    assert math.isnan(metrics.accuracy([-1, -1], [0, 1]))
    # Without ignoring, -1 is an ordinary label.
    assert metrics.accuracy([-1, 2], [-1, 0], ignore_label=None) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        metrics.accuracy([1, 2], [1])


def test_accuracy_by_group_hand_case():
    labels = [0, 1, 2, 3, 4, 5, -1]
    predictions = [0, 1, 0, 3, 0, 0, 9]
    groups = ["HUVEC", "HUVEC", "RPE", "U2OS", "RPE", "HUVEC", "HEPG2"]
    result = metrics.accuracy_by_group(labels, predictions, groups)
    assert list(result) == ["HUVEC", "RPE", "U2OS"]  # HEPG2 has no known label
    assert result["HUVEC"] == pytest.approx(2 / 3)
    assert result["RPE"] == pytest.approx(0.0)
    assert result["U2OS"] == pytest.approx(1.0)
    assert all(isinstance(key, str) for key in result)


def test_accuracy_table_hand_case():
    labels = [0, 1, 2, 3, -1]
    predictions = [0, 0, 2, 3, 1]
    groups = ["b", "b", "a", "a", "c"]
    table = metrics.accuracy_table(labels, predictions, groups)
    assert table["group"].tolist() == ["a", "b", "all"]
    assert table["wells"].tolist() == [2, 2, 4]
    assert table["correct"].tolist() == [2, 1, 3]
    np.testing.assert_allclose(table["accuracy"], [1.0, 0.5, 0.75])


def test_well_logits_averages_sites_in_first_seen_order():
    site_logits = np.array(
        [
            [1.0, 2.0],  # well "b"
            [3.0, 0.0],  # well "a"
            [5.0, 4.0],  # well "b"
            [-1.0, 2.0],  # well "a"
            [7.0, 7.0],  # well "c", one site
        ]
    )
    wells, logits = metrics.well_logits(site_logits, ["b", "a", "b", "a", "c"])
    assert wells.tolist() == ["b", "a", "c"]
    np.testing.assert_allclose(logits, [[3.0, 3.0], [1.0, 1.0], [7.0, 7.0]])
    assert logits.dtype == np.float64


def test_well_logits_averages_logits_not_probabilities():
    # Mean of logits [0, 0] and [4, 0] is [2, 0]; softmax of it differs from the mean of softmaxes.
    wells, logits = metrics.well_logits(np.array([[0.0, 0.0], [4.0, 0.0]]), [10, 10])
    assert wells.tolist() == [10]
    np.testing.assert_allclose(logits, [[2.0, 0.0]])


def test_well_logits_random_against_loop():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 6, size=40)
    site_logits = rng.normal(size=(40, 5)).astype(np.float32)
    wells, logits = metrics.well_logits(site_logits, ids)
    expected_order = list(dict.fromkeys(ids.tolist()))
    assert wells.tolist() == expected_order
    for row, well in enumerate(expected_order):
        np.testing.assert_allclose(logits[row], site_logits[ids == well].astype(np.float64).mean(0))
    with pytest.raises(ValueError):
        metrics.well_logits(site_logits, ids[:-1])
