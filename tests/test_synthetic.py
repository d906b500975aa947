"""The synthetic RxRx1 generator: layouts, the real plate design, and noise that plate normalization removes."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import channel_paths, read_png_stack

from deepnoise_tf import constants, synthetic, synthetic_images

GRID = [f"{row}{column:02d}" for row in "BCDEFGHIJKLMNO" for column in range(2, 24)]


def test_release_layout_files_and_metadata(release_source):
    root, truth = release_source
    metadata = pd.read_csv(root / "metadata.csv")
    assert list(metadata.columns) == [
        "site_id", "well_id", "cell_type", "dataset", "experiment", "plate", "well", "site",
        "well_type", "sirna", "sirna_id",
    ]  # fmt: skip
    assert len(metadata) == len(truth)
    row = metadata.iloc[0]
    assert row.well_id == f"{row.experiment}_{row.plate}_{row.well}"
    assert row.site_id == f"{row.well_id}_{row.site}"
    assert row.experiment.split("-")[0] == row.cell_type
    assert set(metadata.loc[metadata.well_type == "negative_control", "sirna"]) == {"EMPTY"}
    treatment_names = metadata.loc[metadata.well_type == "treatment", "sirna"]
    assert treatment_names.str.fullmatch(r"s\d{6}").all()
    # One name per siRNA id, and the test split is labelled (the release has real test labels).
    assert metadata.groupby("sirna_id")["sirna"].nunique().max() == 1
    assert set(metadata.dataset) == {"train", "test"}
    assert (metadata.loc[metadata.dataset == "test", "sirna_id"] >= 0).all()
    pngs = sorted((root / "images").glob("*/Plate*/*.png"))
    assert len(pngs) == len(truth) * constants.NUM_CHANNELS
    for row in truth.itertuples():
        assert all(path.exists() for path in channel_paths(root, "release", row))


def test_kaggle_layout_tables(kaggle_source):
    root, truth = kaggle_source
    wells = truth.drop_duplicates("id_code")
    train, test = pd.read_csv(root / "train.csv"), pd.read_csv(root / "test.csv")
    assert list(train.columns) == ["id_code", "experiment", "plate", "well", "sirna"]
    assert list(test.columns) == ["id_code", "experiment", "plate", "well"]
    for name in ("train_controls.csv", "test_controls.csv"):
        controls = pd.read_csv(root / name)
        assert list(controls.columns) == [
            "id_code",
            "experiment",
            "plate",
            "well",
            "sirna",
            "well_type",
        ]
        assert set(controls.well_type) == {"negative_control", "positive_control"}
    treatments = wells[wells.well_type == "treatment"]
    assert set(train.id_code) == set(treatments.loc[treatments.dataset == "train", "id_code"])
    assert set(test.id_code) == set(treatments.loc[treatments.dataset == "test", "id_code"])
    for row in truth.itertuples():
        assert all(path.exists() for path in channel_paths(root, "kaggle", row))
    stats = pd.read_csv(root / "pixel_stats.csv")
    assert list(stats.columns) == [
        "id_code", "experiment", "plate", "well", "site", "channel", "mean", "std", "median", "min", "max",
    ]  # fmt: skip
    assert len(stats) == len(truth) * constants.NUM_CHANNELS
    first = stats.iloc[0]
    row = truth[(truth.id_code == first.id_code) & (truth.site == first.site)].iloc[0]
    pixels = read_png_stack(channel_paths(root, "kaggle", row))[..., first.channel - 1].astype(
        float
    )
    np.testing.assert_allclose(
        [first["mean"], first["std"], first["median"], first["min"], first["max"]],
        [pixels.mean(), pixels.std(), np.median(pixels), pixels.min(), pixels.max()],
        rtol=1e-12,
    )


@pytest.fixture(scope="module")
def design_truth():
    parameters = synthetic.resolve_parameters(
        "quickstart", cell_types=("HUVEC", "U2OS"), train_experiments=3, test_experiments=2
    )
    return parameters, synthetic.design(parameters, seed=3)


def test_plate_design(design_truth):
    parameters, truth = design_truth
    per_group = parameters["sirnas_per_group"]
    wells = truth[truth.site == 1]
    for experiment, plates in wells.groupby("experiment"):
        first_group = None
        for plate, members in plates.groupby("plate"):
            # Wells are the first wells of the real grid, in order.
            assert list(members.well) == GRID[: len(members)]
            treatments = members[members.well_type == "treatment"]
            # Each siRNA of the plate's group exactly once; groups partition the first 4k ids.
            assert sorted(treatments.sirna) == list(
                range(plate_group_of(members), 4 * per_group, 4)
            )
            group = members.plate_group.iat[0]
            if first_group is None:
                first_group = group
            assert group == (first_group + plate - 1) % 4, experiment
            negative = members[members.well_type == "negative_control"]
            assert list(negative.well) == ["B02"] and list(negative.sirna) == [1138]
            positive = members[members.well_type == "positive_control"]
            assert sorted(positive.sirna) == list(
                range(1108, 1108 + parameters["positive_controls"])
            )
    # The same group recurs on other experiments' plates: its siRNAs sit in different wells there.
    by_plate_group = (
        wells[wells.well_type == "treatment"].groupby(["plate_group", "sirna"]).well.nunique()
    )
    assert (by_plate_group > 1).mean() > 0.5  # positions are reshuffled per plate


def plate_group_of(members):
    return int(members.plate_group.iat[0])


def test_full_size_plate_uses_canonical_control_wells():
    parameters = synthetic.resolve_parameters(
        cell_types=("RPE",), train_experiments=1, test_experiments=0, sirnas_per_group=277,
        positive_controls=30,
    )  # fmt: skip
    truth = synthetic.design(parameters, seed=0)
    plate = truth[(truth.plate == 1) & (truth.site == 1)]
    assert len(plate) == constants.WELLS_PER_PLATE
    canonical = {f"{row}{column:02d}" for row in "CFHJM" for column in (3, 7, 11, 15, 19, 22)}
    assert set(plate.loc[plate.well_type == "positive_control", "well"]) == canonical
    assert sorted(plate.loc[plate.well_type == "treatment", "sirna"]) == sorted(
        s for s in range(1108) if s % 4 == plate.plate_group.iat[0]
    )


def test_deterministic_given_seed(release_source, tmp_path):
    root, truth = release_source
    again = synthetic.write_dataset(tmp_path, layout="release", preset="tiny", seed=0)
    pd.testing.assert_frame_equal(truth, again)
    row = next(truth.itertuples())
    np.testing.assert_array_equal(
        read_png_stack(channel_paths(root, "release", row)),
        read_png_stack(channel_paths(tmp_path, "release", row)),
    )
    other = synthetic.design(synthetic.resolve_parameters("tiny"), seed=5)
    assert not other.sirna.equals(truth.sirna)


def test_unknown_parameters_fail():
    with pytest.raises(ValueError, match="unknown parameters"):
        synthetic.resolve_parameters("tiny", image_sise=8)
    with pytest.raises(ValueError, match="unknown preset"):
        synthetic.resolve_parameters("huge")


def _nearest_centroid_accuracy(features, labels, train):
    """Train centroids on train sites, classify the others (z-scored features)."""
    classes = np.unique(labels[train])
    centroids = np.stack([features[train & (labels == c)].mean(0) for c in classes])
    scale = features[train].std(0)
    distance = (((features[~train, None, :] - centroids[None]) / scale) ** 2).sum(-1)
    return (classes[distance.argmin(1)] == labels[~train]).mean()


def _group_normalized(values, squares, keys):
    """Per-channel (mean image intensity - group mean) / group std with pooled group statistics."""
    out = np.empty_like(values)
    scale = np.empty_like(values)
    for key in np.unique(keys):
        members = keys == key
        mean = values[members].mean(0)
        std = np.sqrt(squares[members].mean(0) - mean**2)
        out[members] = (values[members] - mean) / std
        scale[members] = std
    return out, scale


def test_plate_normalization_reveals_classes_best():
    """Nearest-centroid accuracy on per-channel site means: plate > experiment > cell type.

    A within-image texture feature (pixel std) adds accuracy: the phenotype is partly morphological.
    """
    parameters = synthetic.resolve_parameters("quickstart", image_size=32)
    truth = synthetic.design(parameters, seed=0)
    images = np.zeros((len(truth), 6, 32, 32), np.uint8)
    for rows, chunk in synthetic.generate_images(parameters, truth, seed=0):
        images[rows] = chunk
    assert (images == 255).mean() < 1e-3 and (images == 0).mean() < 1e-3  # off saturation
    pixels = images.astype(np.float64)
    means, squares = pixels.mean(axis=(2, 3)), (pixels**2).mean(axis=(2, 3))
    spread = pixels.std(axis=(2, 3))
    labels = truth.sirna.to_numpy()
    train = (truth.dataset == "train").to_numpy()
    keys = {
        "plate": (truth.experiment + "_" + truth.plate.astype(str)).to_numpy(),
        "experiment": truth.experiment.to_numpy(),
        "cell_type": truth.cell_type.to_numpy(),
    }
    accuracy, with_texture = {}, {}
    for level, key in keys.items():
        normalized, scale = _group_normalized(means, squares, key)
        accuracy[level] = _nearest_centroid_accuracy(normalized, labels, train)
        features = np.concatenate([normalized, spread / scale], axis=1)
        with_texture[level] = _nearest_centroid_accuracy(features, labels, train)
    chance = 1 / len(np.unique(labels))
    assert accuracy["plate"] > accuracy["experiment"] > accuracy["cell_type"], accuracy
    assert accuracy["plate"] > 4 * chance
    assert with_texture["plate"] > accuracy["plate"] + 0.1, (with_texture, accuracy)


def test_cli_prints_summary(tmp_path, capsys):
    synthetic.main(["--output", str(tmp_path), "--preset", "tiny", "--layout", "kaggle"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("wrote 224 sites") and "kaggle" in line
    assert (tmp_path / "train.csv").exists()


def test_prepare_tfds_is_idempotent(tmp_path):
    import tensorflow_datasets as tfds

    name = synthetic.prepare_tfds(tmp_path, preset="tiny")
    assert name == "rxrx1/native"
    info_file = next((tmp_path / "rxrx1" / "native").glob("*/dataset_info.json"))
    stamp = info_file.stat().st_mtime_ns
    assert synthetic.prepare_tfds(tmp_path, preset="tiny") == name
    assert info_file.stat().st_mtime_ns == stamp  # nothing rebuilt
    dataset = tfds.load(name, data_dir=str(tmp_path), split="test")
    assert len(dataset) == 112
    assert json.loads((tmp_path / "synthetic_source.json").read_text())["preset"] == "tiny"
    with pytest.raises(ValueError, match="already holds"):
        synthetic.prepare_tfds(tmp_path, preset="tiny", seed=1)


def test_elongation_changes_shape_but_not_the_channel_moments():
    """A Gaussian cell keeps its integral and its squared integral when elongated (sigma_y * sigma_x
    is fixed), so channel mean and std are blind to elongation, while the image itself changes."""
    parameters = synthetic.resolve_parameters(
        "tiny", image_size=96, cells_per_site=6.0, cell_sigma=0.03, pixel_noise=0.0
    )
    channels = constants.NUM_CHANNELS
    look = {"sigma": np.ones(channels), "density": 1.0}
    sirnas = np.zeros(64, np.int64)

    def render(elongation):
        phenotypes = synthetic_images.Phenotypes(
            intensity=np.ones((1, channels)),
            size=np.ones((1, channels)),
            elongation=np.full((1, channels), elongation),
            count=np.ones(1),
        )
        return synthetic_images.render_sites(
            sirnas, np.ones((64, channels)), np.full((64, channels), 20.0), look, phenotypes,
            parameters, np.random.default_rng(0),
        ).astype(np.float64)  # fmt: skip

    round_cells, long_cells = render(1.0), render(4.0)
    for statistic in (np.mean, np.std):
        round_value = statistic(round_cells, axis=(2, 3)).mean()
        long_value = statistic(long_cells, axis=(2, 3)).mean()
        assert long_value == pytest.approx(round_value, rel=0.05), statistic.__name__
    # ... while the shape is plain to see (same cells, same positions: only the shape differs).
    assert np.abs(round_cells - long_cells).mean() > 1.0
    gradient_y = np.abs(np.diff(long_cells, axis=2)).mean()
    gradient_x = np.abs(np.diff(long_cells, axis=3)).mean()
    round_y = np.abs(np.diff(round_cells, axis=2)).mean()
    assert abs(gradient_y - gradient_x) < 0.1 * gradient_y  # orientation is random per cell
    assert gradient_y > 1.1 * round_y  # steeper edges across the cells' short axis
