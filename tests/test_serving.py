"""Serving and downstream use: statistics and predictions from raw PNGs, the TF Serving layout,
siRNA names, AnnData embeddings.

One tiny untrained model (width 0.125, 16-pixel images) on the tiny synthetic RxRx1 (release layout,
so the test labels and siRNA names are known). References are the built TFDS data set: the raw-image
path must reproduce its statistics and, through the same `inference.predict_wells`, its well logits.
"""

import pathlib
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow_datasets as tfds

import deepnoise_tf
from deepnoise_tf import config as config_lib
from deepnoise_tf import (
    constants,
    embed,
    ensemble,
    export,
    factory,
    inference,
    predict,
    raw_images,
    synthetic,
)

IMAGE_SIZE = 16


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(data_dir, builder name, source folder) of the tiny preset: the TFDS build and its PNGs."""
    data_dir = tmp_path_factory.mktemp("serving_data")
    builder = synthetic.prepare_tfds(data_dir, preset="tiny", layout="release")
    return str(data_dir), builder, data_dir / "manual" / "tiny"


@pytest.fixture(scope="module")
def run_folder(built, tmp_path_factory):
    """A training folder (config.json, checkpoints/best.weights.h5, export/) of a tiny untrained model."""
    data_dir, builder, _ = built
    config = config_lib.cpu_scale(config_lib.default_config())
    config.data.data_dir = data_dir
    config.data.builder = builder
    config.data.synthetic_preset = ""
    config.data.image_size = IMAGE_SIZE
    config.model.width = 0.125
    config = config_lib.validate(config)
    model = factory.build_model(config, steps_per_epoch=1)
    folder = tmp_path_factory.mktemp("serving_run")
    (folder / "checkpoints").mkdir()
    model.save_weights(str(folder / "checkpoints" / "best.weights.h5"))
    (folder / "config.json").write_text(config_lib.to_json(config))
    export.export_saved_model(
        [model.inference_network()],
        str(folder / "export"),
        image_size=IMAGE_SIZE,
        normalization=config.data.normalization,
    )
    return folder


@pytest.fixture(scope="module")
def model_export(run_folder):
    return str(run_folder / "export")


def all_sites(data_dir, builder):
    """Every site of the built data set (both splits) as numpy arrays."""
    sites = []
    for split in ("train", "test"):
        dataset = tfds.load(builder, split=split, data_dir=data_dir, batch_size=-1)
        sites.append(tfds.as_numpy(dataset))
    merged = {name: np.concatenate([part[name] for part in sites]) for name in sites[0]}
    for name in ("experiment", "cell_type"):
        merged[name] = np.asarray([value.decode() for value in merged[name]])
    return merged


def test_source_statistics_equal_the_built_data_set(built):
    data_dir, builder, source_dir = built
    sites = all_sites(data_dir, builder)
    statistics = raw_images.source_statistics(source_dir)
    keys = {
        "plate": [
            f"plate/{e}_{p}" for e, p in zip(sites["experiment"], sites["plate"], strict=True)
        ],
        "experiment": [f"experiment/{e}" for e in sites["experiment"]],
        "cell_type": [f"cell_type/{c}" for c in sites["cell_type"]],
    }
    for group, group_keys in keys.items():
        mean = np.stack([statistics[key][0] for key in group_keys])
        std = np.stack([statistics[key][1] for key in group_keys])
        np.testing.assert_allclose(mean, sites[f"{group}_mean"], rtol=1e-6)
        np.testing.assert_allclose(std, sites[f"{group}_std"], rtol=1e-6)
    # Any images with plate keys (here the stored ones) pool to the same plate statistics.
    pooled = raw_images.pooled_statistics(zip(keys["plate"], sites["image"], strict=True))
    for key, (mean, std) in pooled.items():
        np.testing.assert_allclose(mean, statistics[key][0], rtol=1e-12)
        np.testing.assert_allclose(std, statistics[key][1], rtol=1e-12)
    # And an independent numpy reference for one plate.
    key = keys["plate"][0]
    pixels = sites["image"][np.asarray(keys["plate"]) == key].reshape(-1, constants.NUM_CHANNELS)
    np.testing.assert_allclose(pooled[key][0], pixels.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(pooled[key][1], pixels.astype(np.float64).std(0), rtol=1e-12)


def test_images_size_pools_area_averaged_pixels_as_that_build_would(built):
    """`--images_size N`: statistics of the pixels `rxrx1/N` would store (2x2 area means, rounded
    half up), never of upsampled ones."""
    data_dir, builder, source_dir = built
    assert raw_images.read_sites(source_dir, 4 * IMAGE_SIZE)[1].target_size is None
    half = IMAGE_SIZE // 2
    statistics = raw_images.source_statistics(source_dir, half)
    sites = all_sites(data_dir, builder)
    keys = [f"plate/{e}_{p}" for e, p in zip(sites["experiment"], sites["plate"], strict=True)]
    blocks = sites["image"].astype(np.int64).reshape(-1, half, 2, half, 2, constants.NUM_CHANNELS)
    small = (2 * blocks.sum(axis=(2, 4)) + 4) // 8
    key = keys[0]
    pixels = small[np.asarray(keys) == key].reshape(-1, constants.NUM_CHANNELS).astype(np.float64)
    np.testing.assert_allclose(statistics[key][0], pixels.mean(0), rtol=1e-12)
    np.testing.assert_allclose(statistics[key][1], pixels.std(0), rtol=1e-12)


def test_pooled_statistics_rejects_images_that_are_not_six_channel_uint8():
    with pytest.raises(ValueError, match="uint8"):
        raw_images.pooled_statistics([("plate/x", np.zeros((4, 4, 6), np.float32))])


@pytest.mark.parametrize("tta", [False, True])
def test_well_logits_from_raw_images_equal_those_from_the_data_set(built, model_export, tta):
    data_dir, builder, source_dir = built
    predictors = {"model": inference.load_export(model_export)}
    options = {"tta": tta, "batch_size": 16, "with_embeddings": True}
    from_tfds = inference.predict_split(predictors, data_dir, builder, "test", **options)
    from_pngs = raw_images.predict_source(predictors, source_dir, split="test", **options)
    order = from_tfds.wells["id_code"].to_numpy()
    position = {well: index for index, well in enumerate(from_pngs.wells["id_code"])}
    index = [position[well] for well in order]
    assert len(index) == len(from_pngs.wells)
    pd.testing.assert_frame_equal(
        from_pngs.wells.iloc[index].reset_index(drop=True), from_tfds.wells, check_dtype=False
    )
    np.testing.assert_allclose(
        from_pngs.logits["model"][index], from_tfds.logits["model"], atol=1e-4
    )
    np.testing.assert_allclose(
        from_pngs.embeddings["model"][index], from_tfds.embeddings["model"], atol=1e-5
    )


def test_predict_cli_from_images_names_the_sirnas(built, model_export, tmp_path):
    _, _, source_dir = built
    output = tmp_path / "submission.csv"
    flags = ["--model", model_export, "--images", str(source_dir), "--split", "test"]
    predictions = predict.main([*flags, "--output", str(output), "--no-progress"])
    submission = pd.read_csv(output)
    assert list(submission.columns) == ["id_code", "sirna"]  # Kaggle's format, ids
    named = pd.read_csv(tmp_path / "submission_predictions.csv")
    assert list(named.columns) == ["id_code", "sirna", "sirna_name"]
    np.testing.assert_array_equal(named["sirna"], submission["sirna"])
    expected = [synthetic.sirna_name(int(sirna)) for sirna in named["sirna"]]
    assert named["sirna_name"].tolist() == expected
    assert (predictions["label"] >= 0).all()  # the release layout's test labels are read
    assert (tmp_path / "submission_accuracy.csv").exists()


def test_images_and_data_dir_are_exclusive(built, model_export, tmp_path):
    data_dir, _, source_dir = built
    flags = ["--model", model_export, "--output", str(tmp_path / "out.csv")]
    with pytest.raises(SystemExit):
        predict.main([*flags, "--images", str(source_dir), "--data_dir", data_dir])
    with pytest.raises(SystemExit):
        predict.main(flags)


def test_sirna_names_from_the_release_metadata(built, tmp_path):
    _, _, source_dir = built
    names = raw_images.sirna_names(source_dir)
    truth = pd.read_csv(source_dir / "metadata.csv")
    assert names == dict(zip(truth["sirna_id"], truth["sirna"], strict=True))
    assert names[constants.NEGATIVE_CONTROL] == "EMPTY"
    kaggle = tmp_path / "kaggle"
    synthetic.write_dataset(kaggle, layout="kaggle", preset="tiny")
    assert raw_images.sirna_names(kaggle) == {}  # Kaggle tables carry ids only


def test_serving_layout_and_class_names(built, run_folder, model_export, tmp_path):
    _, _, source_dir = built
    assert inference.sirna_names(inference.load_export(model_export)) == {}  # default: the ids
    base = tmp_path / "serving"
    path = export.copy_to_serving_layout(model_export, base, 1)
    assert pathlib.Path(path) == base / "1" and (base / "1" / "saved_model.pb").exists()
    with pytest.raises(FileExistsError):
        export.copy_to_serving_layout(model_export, base, 1)  # a served version is never replaced
    flags = ["--workdirs", str(run_folder), "--output", str(base), "--serving_version", "2"]
    ensemble.main([*flags, "--sirna_names", str(source_dir)])
    assert (base / "2" / "saved_model.pb").exists()

    latest = inference.load_export(base)  # the base folder, as TF Serving is pointed at it
    names = raw_images.sirna_names(source_dir)
    treatments = {key: name for key, name in names.items() if key < constants.NUM_SIRNAS}
    assert inference.sirna_names(latest) == treatments  # version 2, which carries the names
    assert latest.class_names == tuple(export.class_names_from(names))
    assert inference.sirna_names(inference.load_export(base / "1")) == {}
    rng = np.random.default_rng(0)
    inputs = {
        "image": rng.integers(0, 256, size=(3, IMAGE_SIZE, IMAGE_SIZE, 6), dtype=np.uint8),
        "mean": rng.uniform(20, 60, size=(3, 6)).astype(np.float32),
        "std": rng.uniform(5, 20, size=(3, 6)).astype(np.float32),
    }
    np.testing.assert_allclose(  # same network in both versions
        latest.serve(**inputs)["logits"].numpy(),
        inference.load_export(base / "1").serve(**inputs)["logits"].numpy(),
        atol=1e-5,
    )
    with pytest.raises(FileNotFoundError, match="saved_model.pb"):
        inference.load_export(tmp_path / "empty")
    with pytest.raises(ValueError, match="class names"):
        export.export_saved_model(
            [], str(tmp_path / "x"), image_size=16, normalization="plate", class_names=["a"]
        )


def test_embed_writes_anndata_with_provenance(built, model_export, tmp_path):
    anndata = pytest.importorskip("anndata")
    data_dir, builder, source_dir = built
    output = tmp_path / "wells.h5ad"
    flags = ["--model", model_export, "--images", str(source_dir), "--split", "test"]
    embed.main([*flags, "--output", str(output), "--no-progress", "--tta"])
    adata = anndata.read_h5ad(output)
    reference = inference.predict_split(
        {"model": inference.load_export(model_export)},
        data_dir,
        builder,
        "test",
        tta=True,
        with_embeddings=True,
    )
    position = {well: index for index, well in enumerate(reference.wells["id_code"])}
    index = [position[well] for well in adata.obs_names]
    assert adata.X.shape == reference.embeddings["model"].shape
    np.testing.assert_allclose(adata.X, reference.embeddings["model"][index], atol=1e-5)
    assert "label" not in adata.obs and "sirna" in adata.obs
    np.testing.assert_array_equal(adata.obs["sirna"], reference.wells["label"].to_numpy()[index])
    expected = [synthetic.sirna_name(int(sirna)) for sirna in adata.obs["sirna"]]
    assert list(adata.obs["sirna_name"]) == expected
    provenance = adata.uns["deepnoise"]
    assert provenance["model"] == str(pathlib.Path(model_export).resolve())
    assert provenance["normalization"] == "plate" and bool(provenance["tta"])
    assert provenance["image_size"] == IMAGE_SIZE and provenance["num_models"] == 1
    assert provenance["source_kind"] == "images"
    assert provenance["deepnoise_tf_version"] == deepnoise_tf.__version__


def test_h5ad_without_anndata_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "anndata", None)  # import anndata now raises ImportError
    with pytest.raises(ImportError, match=r"deepnoise-tf\[embed\]"):
        embed.write_embeddings(
            pd.DataFrame({"id_code": ["a"]}), np.ones((1, 2)), tmp_path / "x.h5ad"
        )
    assert not (tmp_path / "x.h5ad").exists()
