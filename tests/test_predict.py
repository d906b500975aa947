"""SavedModel inference: the export outside the package, the predict / ensemble / embed commands.

Two tiny untrained models (width 0.125, 16-pixel images, different seeds) stand in for trained ones:
the checks are about plumbing (which statistics feed which images, averaging in logit space, the
submission's shape and the plate constraints), so learned weights are not needed. References are
the in-process Keras networks evaluated on numpy-normalized, numpy-rotated images.
"""

import json

import numpy as np
import pandas as pd
import pytest
import tensorflow_datasets as tfds
from conftest import TINY_IMAGE_SIZE, serve_in_fresh_process, tiny_config

from deepnoise_tf import (
    constants,
    embed,
    ensemble,
    evaluation,
    export,
    inference,
    predict,
    synthetic,
)
from deepnoise_tf import workdir as workdir_lib

IMAGE_SIZE = TINY_IMAGE_SIZE


@pytest.fixture(scope="module")
def test_sites(tiny_data):
    """Every site of the test split as numpy arrays, read straight from TFDS."""
    data_dir, builder = tiny_data
    dataset = tfds.load(builder, split="test", data_dir=data_dir, batch_size=-1)
    sites = tfds.as_numpy(dataset)
    for name in ("id_code", "experiment", "cell_type", "well_type"):
        sites[name] = np.asarray([value.decode() for value in sites[name]])
    return sites


@pytest.fixture(scope="module")
def members(tiny_data, make_run_folder):
    """Two training workdirs (config.json, checkpoints/best.weights.h5, export/) and their networks."""
    configs = [
        tiny_config(*tiny_data, **{"model.width": 0.125, "train.seed": seed}) for seed in (0, 1)
    ]
    return [make_run_folder(config, f"member{seed}") for seed, config in enumerate(configs)]


def command_line(model, data_dir, builder, output, *extra):
    """The flags predict.main and embed.main share, on the test split without a progress bar."""
    common = ["--model", model, "--data_dir", str(data_dir), "--builder", builder]
    return common + ["--split", "test", "--output", str(output), "--no-progress", *extra]


def keras_outputs(network, images, mean, std):
    """float64 logits [N, 1139] and embeddings of the in-process Keras network, normalized in numpy."""
    backbone, head = network
    normalized = (images.astype(np.float32) - mean[:, None, None, :]) / std[:, None, None, :]
    embedding = backbone(normalized, training=False)
    logits = head(embedding, training=False)
    return np.asarray(logits, np.float64), np.asarray(embedding, np.float64)


def softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)


def dihedral_views(images):
    """The 8 rotations / mirror images of [N, H, W, C] images, by numpy."""
    views = []
    for mirrored in (images, images[:, :, ::-1]):
        views += [np.rot90(mirrored, k, axes=(1, 2)) for k in range(4)]
    return views


def well_reference(sites, site_logits):
    """{id_code: mean logits of its sites} by brute force."""
    return {
        well: site_logits[sites["id_code"] == well].mean(axis=0)
        for well in np.unique(sites["id_code"])
    }


def test_saved_model_in_fresh_process_matches_keras(members, tmp_path):
    member = members[0]
    rng = np.random.default_rng(0)
    inputs = {
        "image": rng.integers(0, 256, size=(5, IMAGE_SIZE, IMAGE_SIZE, 6), dtype=np.uint8),
        "mean": rng.uniform(20, 60, size=(5, 6)).astype(np.float32),
        "std": rng.uniform(5, 20, size=(5, 6)).astype(np.float32),
    }
    served = serve_in_fresh_process(member["export"], inputs, tmp_path)
    logits, embedding = keras_outputs(
        member["network"], inputs["image"], inputs["mean"], inputs["std"]
    )
    expected = softmax(logits[:, : constants.NUM_SIRNAS])
    assert served["probabilities"].shape == (5, constants.NUM_SIRNAS)
    np.testing.assert_allclose(served["probabilities"], expected, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(served["logits"], logits, atol=1e-4)
    unit = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    np.testing.assert_allclose(served["embedding"], unit, atol=1e-5)
    assert str(served["normalization"]) == "plate" and int(served["num_models"]) == 1


def test_predict_cli_writes_a_valid_submission(tiny_data, members, test_sites, tmp_path, capsys):
    data_dir, builder = tiny_data
    output = tmp_path / "out" / "submission.csv"
    flags = ["--postprocess=assign", "--batch_size=16"]
    predict.main(command_line(members[0]["export"], data_dir, builder, output, *flags))
    submission = pd.read_csv(output)
    assert list(submission.columns) == ["id_code", "sirna"]
    treatment = set(test_sites["id_code"][test_sites["well_type"] == "treatment"])
    assert len(submission) == len(treatment) and set(submission["id_code"]) == treatment

    # Independent truth from the train split: which siRNAs share a plate (a group).
    train = tfds.as_numpy(tfds.load(builder, split="train", data_dir=data_dir, batch_size=-1))
    plate_sets = {}
    for experiment, plate, sirna in zip(
        train["experiment"], train["plate"], train["sirna"], strict=True
    ):
        if sirna < constants.NUM_SIRNAS:
            plate_sets.setdefault((experiment, plate), set()).add(int(sirna))
    groups = {frozenset(members_) for members_ in plate_sets.values()}
    submission["plate"] = submission["id_code"].str.split("_").str[1]
    submission["experiment"] = submission["id_code"].str.split("_").str[0]
    for _, plate in submission.groupby(["experiment", "plate"]):
        assert plate["sirna"].between(0, constants.NUM_SIRNAS - 1).all()
        assert not plate["sirna"].duplicated().any(), "a siRNA predicted twice on one plate"
        assert any(set(plate["sirna"]) <= group for group in groups), "plate mixes siRNA groups"

    report = pd.read_csv(tmp_path / "out" / "submission_accuracy.csv")
    assert set(report["stage"]) == {"raw", "assign"}
    overall = report[report["group"] == "all"].set_index("stage")
    assert (overall["wells"] == len(treatment)).all()
    per_cell_type = report[(report["stage"] == "assign") & (report["group"] != "all")]
    assert set(per_cell_type["group"]) == set(test_sites["cell_type"])
    assert "accuracy written" in capsys.readouterr().out


@pytest.mark.parametrize("tta", [False, True])
def test_well_logits_average_sites_and_views_in_logit_space(tiny_data, members, test_sites, tta):
    data_dir, builder = tiny_data
    member = members[0]
    outputs = inference.predict_split(
        {"model": inference.load_export(member["export"])},
        data_dir,
        builder,
        "test",
        tta=tta,
        batch_size=16,
    )
    all_wells, logits = outputs.wells, outputs.logits["model"]
    wells = evaluation.well_predictions(all_wells, logits, method="none", plate_design=None)
    mean, std = test_sites["plate_mean"], test_sites["plate_std"]  # the export says "plate"
    views = dihedral_views(test_sites["image"]) if tta else [test_sites["image"]]
    site_logits = np.mean(
        [keras_outputs(member["network"], view, mean, std)[0] for view in views], axis=0
    )
    reference = well_reference(test_sites, site_logits)
    assert len(all_wells) == len(reference)  # controls too
    np.testing.assert_allclose(
        logits, [reference[well] for well in all_wells["id_code"]], atol=1e-4
    )
    expected = [np.argmax(reference[well][: constants.NUM_SIRNAS]) for well in wells["id_code"]]
    np.testing.assert_array_equal(wells["raw_prediction"], expected)
    np.testing.assert_array_equal(
        wells["prediction"], expected
    )  # "none" without groups: the argmax
    labels = {
        well: label for well, label in zip(test_sites["id_code"], test_sites["sirna"], strict=True)
    }
    np.testing.assert_array_equal(wells["label"], [labels[well] for well in wells["id_code"]])


def test_ensemble_export_averages_member_logits(members, tmp_path):
    output = tmp_path / "ensemble"
    ensemble.main(
        [
            "--workdirs",
            str(members[0]["workdir"]),
            str(members[1]["workdir"]),
            "--output",
            str(output),
        ]
    )
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(4, IMAGE_SIZE, IMAGE_SIZE, 6), dtype=np.uint8)
    mean = rng.uniform(20, 60, size=(4, 6)).astype(np.float32)
    std = rng.uniform(5, 20, size=(4, 6)).astype(np.float32)

    def serve(path):
        loaded = inference.load_export(path)
        outputs = loaded.serve(image=images, mean=mean, std=std)
        return loaded, {name: value.numpy().astype(np.float64) for name, value in outputs.items()}

    single = [serve(member["export"])[1] for member in members]
    loaded, combined = serve(str(output))
    assert (
        loaded.num_models == 2
        and loaded.normalization == "plate"
        and loaded.image_size == IMAGE_SIZE
    )
    assert np.abs(single[0]["logits"] - single[1]["logits"]).max() > 1e-2  # members really differ
    np.testing.assert_allclose(
        combined["logits"], (single[0]["logits"] + single[1]["logits"]) / 2, atol=1e-4
    )
    expected = softmax(combined["logits"][:, : constants.NUM_SIRNAS])
    np.testing.assert_allclose(combined["probabilities"], expected, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(combined["embedding"], axis=1), 1.0, atol=1e-5)


def test_ensemble_rejects_members_that_disagree(members, tmp_path):
    configs = [workdir_lib.read_config(member["workdir"]) for member in members]
    assert export.check_compatible(configs) == (IMAGE_SIZE, "plate")
    other = json.loads((members[1]["workdir"] / "config.json").read_text())
    other["data"]["normalization"] = "experiment"
    (tmp_path / "config.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="normalization"):
        export.check_compatible(configs + [workdir_lib.read_config(tmp_path)])
    with pytest.raises(FileNotFoundError):
        workdir_lib.checkpoint(tmp_path)


@pytest.mark.parametrize("suffix", [".npz", ".parquet"])
def test_embed_writes_unit_well_embeddings(tiny_data, members, test_sites, tmp_path, suffix):
    data_dir, builder = tiny_data
    member = members[0]
    output = tmp_path / f"wells{suffix}"
    embed.main(command_line(member["export"], data_dir, builder, output, "--batch_size=32"))
    if suffix == ".npz":
        stored = np.load(output)
        embeddings, id_codes = stored["embedding"], stored["id_code"]
        well_types = stored["well_type"]
    else:
        table = pd.read_parquet(output)
        embeddings, id_codes = np.stack(table["embedding"].to_numpy()), table["id_code"].to_numpy()
        well_types = table["well_type"].to_numpy()
    number_of_wells = len(np.unique(test_sites["id_code"]))
    _, site_embeddings = keras_outputs(
        member["network"], test_sites["image"], test_sites["plate_mean"], test_sites["plate_std"]
    )
    assert embeddings.shape == (number_of_wells, site_embeddings.shape[1])
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert set(well_types) == set(test_sites["well_type"])  # controls kept
    unit_sites = site_embeddings / np.linalg.norm(site_embeddings, axis=1, keepdims=True)
    reference = well_reference(test_sites, unit_sites)
    for well, embedding in zip(id_codes, embeddings, strict=True):
        expected = reference[well] / np.linalg.norm(reference[well])
        np.testing.assert_allclose(embedding, expected, atol=1e-5)


def test_predict_without_test_labels_writes_no_accuracy(members, tmp_path):
    """The Kaggle layout hides the test treatments' labels: a submission, but no accuracy report."""
    data_dir = tmp_path / "kaggle_data"
    builder = synthetic.prepare_tfds(data_dir, preset="tiny", layout="kaggle")
    output = tmp_path / "submission.csv"
    wells = predict.main(
        command_line(members[0]["export"], data_dir, builder, output, "--postprocess=balance")
    )
    assert (wells["label"] == constants.UNKNOWN_LABEL).all()
    assert len(pd.read_csv(output)) == len(wells) > 0
    assert not (tmp_path / "submission_accuracy.csv").exists()
    assert evaluation.accuracy_report(wells, "balance") is None


def test_in_memory_predictor_serves_what_the_export_serves(tiny_data, members):
    """`inference.from_run_folder` (pipeline, report) and the export give the same well logits."""
    data_dir, builder = tiny_data
    member = members[0]
    options = {"experiments": (), "batch_size": 16}
    exported = inference.predict_split(
        {"model": inference.load_export(member["export"])}, data_dir, builder, "test", **options
    )
    in_memory = inference.predict_split(
        {"model": inference.from_run_folder(member["workdir"])},
        data_dir,
        builder,
        "test",
        **options,
    )
    assert exported.wells.equals(in_memory.wells)
    np.testing.assert_allclose(exported.logits["model"], in_memory.logits["model"], atol=1e-4)
