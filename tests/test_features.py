"""The feature baseline: each feature family against numpy or hand-computed references, the plate
z-score, the choice of l2 on training experiments only, and the shared report path of both baselines."""

import numpy as np
import pandas as pd
import pytest
import scipy.ndimage
import skimage.measure
import skimage.morphology
from conftest import tiny_config

from deepnoise_tf import baselines, constants, evaluation, features


def disc_mask(size, centres, radius):
    rows, columns = np.mgrid[:size, :size]
    mask = np.zeros((size, size), bool)
    for row, column in centres:
        mask |= (rows - row) ** 2 + (columns - column) ** 2 <= radius**2
    return mask


def diamond_mask(size, centre, radius):
    rows, columns = np.mgrid[:size, :size]
    return np.abs(rows - centre[0]) + np.abs(columns - centre[1]) <= radius


# ------------------------------------------------------------------------------------------------
# Feature families


def test_intensity_distribution_matches_numpy_per_channel():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 9, 7, 6), dtype=np.uint8)
    result = features.intensity_distribution(images)
    assert result.shape == (3, 6, 3 + len(features.INTENSITY_QUANTILES))
    for site in range(3):
        for channel in range(6):
            pixels = images[site, :, :, channel].astype(np.float64).ravel()
            mean, std, median = pixels.mean(), pixels.std(), np.median(pixels)
            expected = [mean, std, 3 * (mean - median) / std]
            expected += [np.quantile(pixels, q) for q in features.INTENSITY_QUANTILES]
            np.testing.assert_allclose(result[site, channel], expected, rtol=1e-12)


def test_objects_of_known_discs_count_area_and_roundness():
    centres, radius = [(10, 10), (10, 40), (40, 25)], 6
    mask = disc_mask(64, centres, radius)
    count, area, area_std, eccentricity, solidity = features.object_shape(mask, solidity=True)
    assert count == 3
    assert area == mask.sum() / 3 and area_std == 0.0
    assert area == pytest.approx(np.pi * radius**2, rel=0.05)
    assert eccentricity < 0.05 and solidity > 0.9  # pixelated discs: 0.93
    assert features.object_shape(np.zeros((8, 8), bool)).tolist() == [0.0] * 5


def test_object_moments_match_regionprops():
    rng = np.random.default_rng(1)
    mask = scipy.ndimage.gaussian_filter(rng.normal(size=(48, 48)), 2.0) > 0.1
    labels = skimage.measure.label(mask, connectivity=2)
    table = skimage.measure.regionprops_table(
        labels, properties=("area", "eccentricity", "solidity")
    )
    result = features.object_shape(mask, solidity=True)
    expected = [labels.max(), table["area"].mean(), table["area"].std()]
    expected += [table["eccentricity"].mean(), table["solidity"].mean()]
    np.testing.assert_allclose(result, expected, rtol=1e-9, atol=1e-12)
    assert features.object_shape(mask)[4] == 0.0  # solidity only when asked


def test_nuclei_segmentation_and_localisation_of_a_synthetic_site():
    """Three bright nuclei on the nuclear channel; channel 2 sits inside them, channel 3 outside."""
    nuclei = disc_mask(64, [(12, 12), (12, 44), (44, 30)], 7)
    image = np.full((64, 64, constants.NUM_CHANNELS), 10, np.uint8)
    image[..., features.NUCLEUS_CHANNEL][nuclei] = 200
    image[..., 2][nuclei] = 90
    image[..., 3][~nuclei] = 50
    mask = features.otsu_mask(image[..., features.NUCLEUS_CHANNEL])
    np.testing.assert_array_equal(mask, nuclei)
    assert features.object_shape(mask)[:2].tolist() == [3, nuclei.sum() / 3]
    inside, outside, ratio = features.localisation(image, mask).reshape(3, -1)
    assert inside[2] == 90 and outside[2] == 10 and ratio[2] == 9.0
    assert inside[3] == 10 and outside[3] == 50 and ratio[3] == pytest.approx(0.2)


def test_glcm_of_a_checkerboard():
    """A one-pixel checkerboard: horizontal and vertical neighbours always differ (levels 0 and 15),
    diagonal ones and those two pixels apart never do."""
    board = ((np.indices((32, 32)).sum(axis=0) % 2) * 255).astype(np.uint8)
    texture = features.glcm_texture(board).reshape(len(features.GLCM_PROPERTIES), -1)
    by_name = dict(zip(features.GLCM_PROPERTIES, texture, strict=True))
    distance_one, distance_two = 0, features.GLCM_DISTANCES.index(2)
    top = features.GLCM_LEVELS - 1
    # Four directions averaged: two see contrast top**2, two see 0.
    assert by_name["contrast"][distance_one] == pytest.approx(top**2 / 2)
    assert by_name["homogeneity"][distance_one] == pytest.approx((1 / (1 + top**2) + 1) / 2)
    assert by_name["contrast"][distance_two] == 0 and by_name["homogeneity"][distance_two] == 1
    np.testing.assert_allclose(by_name["energy"], np.sqrt(0.5), rtol=1e-5)  # two cells of 1/2
    np.testing.assert_allclose(by_name["correlation"][distance_two], 1.0)


def test_cross_filter_is_scipy_grey_morphology():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(2, 11, 9, 3), dtype=np.uint8)
    cross = skimage.morphology.disk(1)[None, :, :, None]
    for reduce, reference in ((np.minimum, scipy.ndimage.grey_erosion),
                              (np.maximum, scipy.ndimage.grey_dilation)):  # fmt: skip
        np.testing.assert_array_equal(
            features.cross_filter(images, reduce),
            reference(images, footprint=cross, mode="nearest"),
        )


def test_granularity_of_known_blobs():
    """A diamond of radius 1 vanishes at the opening of radius 2, one of radius 4 at radius 6."""
    dim, bright = 30, 200
    image = np.zeros((64, 64, 1), np.uint8)
    image[..., 0][diamond_mask(64, (16, 16), 1)] = dim
    image[..., 0][diamond_mask(64, (40, 40), 4)] = bright
    small, large = 5 * dim, 41 * bright  # a diamond of radius r has 2r^2 + 2r + 1 pixels
    spectrum = features.granularity_spectrum(image[None])[0, 0]
    expected = np.zeros(len(features.GRANULARITY_RADII))
    expected[features.GRANULARITY_RADII.index(2)] = small / (small + large)
    expected[features.GRANULARITY_RADII.index(6)] = large / (small + large)
    np.testing.assert_allclose(spectrum, expected, atol=1e-12)


def test_site_features_have_one_named_finite_column_each():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(2, 24, 24, constants.NUM_CHANNELS), dtype=np.uint8)
    images[1] = 7  # a flat site must not give NaN
    values = features.site_features(images)
    names = features.feature_names()
    assert values.shape == (2, len(names)) and len(set(names)) == len(names)
    assert np.isfinite(values).all()
    column = names.index("er_q50")
    assert values[0, column] == np.median(images[0, :, :, 1])


# ------------------------------------------------------------------------------------------------
# Normalisation and the choice of l2


def well_table(experiments, plates_per_experiment=2, wells_per_plate=6, classes=3):
    rows = []
    for experiment in experiments:
        for plate in range(1, plates_per_experiment + 1):
            for well in range(wells_per_plate):
                rows.append(
                    {"id_code": f"{experiment}_{plate}_{well}", "experiment": experiment,
                     "plate": plate, "well": f"B{well + 2:02d}", "cell_type": experiment[:4],
                     "well_type": "treatment", "label": well % classes}
                )  # fmt: skip
    return pd.DataFrame(rows, columns=list(evaluation.WELL_COLUMNS))


def test_plate_zscore_gives_each_plate_mean_zero_and_unit_std():
    wells = well_table(["HEPG2-01", "HUVEC-01"])
    rng = np.random.default_rng(4)
    values = rng.normal(size=(len(wells), 3)) * [1, 5, 0] + [0, 100, 2]  # last column constant
    values[wells["plate"].to_numpy() == 2] *= 3.0  # a plate gain
    result = features.plate_zscore(wells, values)
    for _, rows in wells.groupby(["experiment", "plate"]).indices.items():
        np.testing.assert_allclose(result[rows, :2].mean(axis=0), 0.0, atol=1e-12)
        np.testing.assert_allclose(result[rows, :2].std(axis=0), 1.0, rtol=1e-12)
        np.testing.assert_array_equal(result[rows, 2], 0.0)


def test_each_experiment_sits_in_one_fold_and_grouped_folds_span_the_cell_types():
    experiments = ["HEPG2-01", "HEPG2-02", "HEPG2-04", "HUVEC-01", "HUVEC-03", "RPE-02"]
    wells = well_table(experiments)
    names = wells["experiment"].to_numpy()
    for count in (None, 2, 3):
        folds = features.experiment_folds(wells, count)
        fold_of = {name: set(folds[names == name]) for name in experiments}
        assert all(len(fold) == 1 for fold in fold_of.values())  # held out exactly once
        for fold in set(folds):
            held_out = sorted(set(names[folds == fold]))
            if count is None:
                assert len(held_out) == 1
            else:  # experiments of one cell type are spread over the folds
                cell_types = [name[:4] for name in held_out]
                per_type = max(cell_types.count(t) for t in cell_types)
                assert per_type <= -(-3 // count)  # HEPG2 has 3 experiments
    assert len(set(features.experiment_folds(wells))) == len(experiments)
    assert len(set(features.experiment_folds(wells, 2))) == 2
    with pytest.raises(ValueError, match="two folds"):
        features.experiment_folds(well_table(["HEPG2-01"]))
    with pytest.raises(ValueError, match="two folds"):
        features.experiment_folds(well_table(["HEPG2-01", "HUVEC-01"]), 2)  # one per cell type


@pytest.mark.parametrize("fold_count", [None, 2])
def test_chosen_l2_is_the_brute_force_best_of_the_grid(fold_count, capsys):
    """Noisy stand-in features: cold fits per fold and l2, counted by hand, against the chooser."""
    wells = well_table(
        ["HEPG2-01", "HEPG2-02", "HUVEC-01", "HUVEC-02"], wells_per_plate=12, classes=4
    )
    rng = np.random.default_rng(5)
    labels = wells["label"].to_numpy()
    wells.loc[wells["well"].isin(["B02", "B03"]), "well_type"] = (
        "positive_control"  # fitted, not counted
    )
    values = rng.normal(size=(len(wells), 5)) + 0.8 * rng.normal(size=(4, 5))[labels]
    grid = (1e-3, 1e-1, 3.0, 30.0)
    folds = features.experiment_folds(wells, fold_count)
    correct = []
    for l2 in grid:
        count = 0
        for fold in np.unique(folds):
            held_out = folds == fold
            model = baselines.fit_softmax_regression(values[~held_out], labels[~held_out], l2=l2)
            right = model.classes[model.logits(values[held_out]).argmax(1)] == labels[held_out]
            count += np.sum(right[wells["well_type"].to_numpy()[held_out] == "treatment"])
        correct.append(count)
    assert len(set(correct)) > 1  # the grid matters on these features
    expected = max(l2 for l2, count in zip(grid, correct, strict=True) if count == max(correct))
    chosen = features.cross_validated_l2(wells, values, grid=grid, fold_count=fold_count)
    assert chosen == expected
    printed = capsys.readouterr().out
    assert f"[features] l2={expected:g} chosen by {len(np.unique(folds))}-fold CV" in printed
    # Every grid point's count of correct held-out treatment wells (controls fitted, not counted).
    scores = ", ".join(f"{l2:g}: {count}" for l2, count in zip(grid, correct, strict=True))
    assert (
        f"correct of {int((wells['well_type'] == 'treatment').sum())} treatment wells: {scores})"
        in printed
    )


def test_a_warm_start_reaches_the_same_optimum():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 5, size=120)
    values = rng.normal(size=(120, 6)) + 0.7 * rng.normal(size=(5, 6))[labels]
    strong = baselines.fit_softmax_regression(values, labels, l2=1.0)
    cold = baselines.fit_softmax_regression(values, labels, l2=1e-2)
    warm = baselines.fit_softmax_regression(values, labels, l2=1e-2, warm_start=strong)
    np.testing.assert_allclose(warm.logits(values), cold.logits(values), atol=1e-3)


def test_feature_baseline_never_fits_or_tunes_on_validation_wells(monkeypatch):
    """A stand-in for the image features: the report wells are the validation experiments, and
    every cross-validation fit and every fold it scores holds training wells only."""
    config = tiny_config("/nowhere", "rxrx1/native", **{"data.val_experiments": ("HUVEC-02",)})
    training = {"HEPG2-01", "HEPG2-02", "HUVEC-01"}
    wells = well_table([*sorted(training), "HUVEC-02"], classes=4)
    rng = np.random.default_rng(6)
    values = rng.normal(size=(len(wells), 4)) + 3.0 * np.eye(4)[wells["label"].to_numpy()]
    row_experiment = {
        tuple(row): name for row, name in zip(values, wells["experiment"], strict=True)
    }
    chooser_saw, fits_saw = [], []

    def recording_fit(fit_features, labels, *, l2, warm_start):
        fits_saw.append({row_experiment[tuple(row)] for row in fit_features})
        return baselines.fit_softmax_regression(fit_features, labels, l2=l2, warm_start=warm_start)

    def chooser(fit_wells, fit_features):
        chooser_saw.append(set(fit_wells["experiment"]))
        return real_chooser(fit_wells, fit_features, fit=recording_fit)

    real_chooser = features.cross_validated_l2
    monkeypatch.setattr(features, "well_features", lambda config, split: (wells, values))
    monkeypatch.setattr(features, "cross_validated_l2", chooser)
    report_wells, logits = features.feature_baseline_logits(config)
    assert chooser_saw == [training]
    held_out_sets = {frozenset(training - seen) for seen in fits_saw}
    assert all(seen < training for seen in fits_saw)  # no fit sees a validation well
    assert held_out_sets == {frozenset({name}) for name in training}  # each held out once
    assert len(fits_saw) == len(training) * len(features.L2_GRID)
    assert set(report_wells["experiment"]) == {"HUVEC-02"}
    assert logits.shape == (len(report_wells), constants.NUM_CLASSES)
    fit_rows = ~wells["experiment"].eq("HUVEC-02").to_numpy()
    chosen = real_chooser(wells[fit_rows], values[fit_rows])
    model = baselines.fit_softmax_regression(
        values[fit_rows], wells["label"].to_numpy()[fit_rows], l2=chosen
    )
    np.testing.assert_allclose(logits, baselines.full_class_logits(model, values[~fit_rows]))
    with pytest.raises(ValueError, match="report_split"):
        features.feature_baseline_logits(config, report_split="validation")


# ------------------------------------------------------------------------------------------------
# Both baselines on the tiny data set


def test_linear_floor_default_is_the_fit_on_training_experiments(tiny_data):
    config = tiny_config(*tiny_data, **{"data.val_experiments": ("HUVEC-01",)})
    wells, values = baselines.well_intensity_features(config)
    held_out = wells["experiment"].eq("HUVEC-01").to_numpy()
    model = baselines.fit_softmax_regression(values[~held_out], wells["label"][~held_out])
    report_wells, logits = baselines.linear_floor_logits(config)
    pd.testing.assert_frame_equal(report_wells, wells[held_out].reset_index(drop=True))
    np.testing.assert_array_equal(logits, baselines.full_class_logits(model, values[held_out]))


def test_both_baselines_report_the_test_split_in_one_format(tiny_data):
    config = tiny_config(*tiny_data, **{"data.val_experiments": ()})
    floor_wells, floor_logits = baselines.linear_floor_logits(config, report_split="test")
    wells, logits = features.feature_baseline_logits(config, report_split="test")
    test_wells, _ = baselines.well_intensity_features(config, "test")
    pd.testing.assert_frame_equal(floor_wells, test_wells)
    pd.testing.assert_frame_equal(wells, floor_wells)
    assert logits.shape == floor_logits.shape == (len(wells), constants.NUM_CLASSES)
    assert logits.dtype == floor_logits.dtype == np.float64 and np.isfinite(logits).all()
    assert (wells["label"] != constants.UNKNOWN_LABEL).all()  # synthetic test labels are known
    assert "test" in baselines.REPORT_SPLITS and "val" in baselines.REPORT_SPLITS
