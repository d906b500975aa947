"""Nothing lost, nothing silent: faults injected into training runs, and what a rerun makes of them.

Two tiny in-process runs of Model 2 (16-pixel synthetic data, width 1/16, 3 epochs of 4 steps,
HEPG2-01 held out) are shared: one whose export fails once after `fit` (the rerun must finish it
without training), one that crashes after its first epoch (the rerun must log the losses of the
uninterrupted one). Damaged files and refusals are checked on folders made by hand, without training.
"""

import pathlib
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest

from deepnoise_tf import config as config_lib
from deepnoise_tf import data, resume, synthetic, training, workdir

ROOT = pathlib.Path(__file__).resolve().parents[1]
EPOCHS = 3
STEPS = 4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reliability_tfds")
    synthetic.prepare_tfds(folder, preset="tiny", builder_config="native")
    return folder


def tiny_config(data_dir):
    config = config_lib.load(str(ROOT / "configs" / "model2_arcface.py") + ":cpu")
    config.data.synthetic_preset = "tiny"
    config.data.data_dir = str(data_dir)
    config.data.image_size = 16
    config.data.val_experiments = ("HEPG2-01",)
    config.data.shuffle_buffer = 64
    config.model.width = 0.0625
    config.train.batch_size = 8
    config.train.steps_per_epoch = STEPS
    config.train.epochs = EPOCHS
    return config_lib.validate(config)


class Crash(Exception):
    """The injected fault."""


def logged_epochs(folder):
    return pd.read_csv(folder / "metrics.csv")


@pytest.fixture(scope="module")
def export_failed_once(data_dir, tmp_path_factory):
    """A run whose export raises once after `fit`, then the rerun; (folder, metrics after the fault)."""
    from deepnoise_tf import export

    folder = tmp_path_factory.mktemp("export_failed")
    original = export.export_saved_model
    with pytest.MonkeyPatch.context() as patch:

        def failing(*args, **kwargs):
            raise Crash("disk full")

        patch.setattr(export, "export_saved_model", failing)
        with pytest.raises(Crash):
            training.run(tiny_config(data_dir), str(folder))
    assert export.export_saved_model is original
    after_fault = logged_epochs(folder)
    state = {
        "marker": (folder / resume.FIT_FINISHED_FILE).is_file(),
        "backup": (folder / "backup").exists(),
    }
    training.run(tiny_config(data_dir), str(folder))
    return folder, after_fault, state


def test_rerun_after_a_failed_export_finishes_without_training(export_failed_once):
    folder, after_fault, state = export_failed_once
    assert state == {"marker": True, "backup": False}  # fit ended: Keras had removed backup/
    assert list(after_fault["epoch"]) == list(range(EPOCHS))
    pd.testing.assert_frame_equal(logged_epochs(folder), after_fault)  # no epoch trained again
    assert (folder / "export" / "saved_model.pb").is_file()
    assert workdir.read_done(folder)["checkpoint"].endswith("best.weights.h5")


def test_resumed_run_logs_the_losses_of_an_uninterrupted_one(
    export_failed_once, data_dir, tmp_path, monkeypatch
):
    import keras

    uninterrupted = export_failed_once[0]
    folder = tmp_path / "crashed"
    build_callbacks = training._callbacks

    class CrashAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise Crash(f"killed after epoch {epoch}")

    monkeypatch.setattr(
        training, "_callbacks", lambda *args: [*build_callbacks(*args), CrashAfterFirstEpoch()]
    )
    with pytest.raises(Crash):
        training.run(tiny_config(data_dir), str(folder))
    monkeypatch.setattr(training, "_callbacks", build_callbacks)
    assert resume.inspect(folder) == resume.State(fit_finished=False, epoch=1)
    training.run(tiny_config(data_dir), str(folder))

    resumed, reference = logged_epochs(folder), logged_epochs(uninterrupted)
    assert list(resumed["epoch"]) == list(range(EPOCHS))
    losses = [
        name for name in reference.columns if name.endswith("loss") or name.endswith("accuracy")
    ]
    assert "loss" in losses
    np.testing.assert_allclose(
        resumed[losses].to_numpy(), reference[losses].to_numpy(), rtol=1e-5, atol=1e-6
    )


# ------------------------------------------------------------------------------------------------
# Damaged files: named, with a remedy, before anything is written or trained


def truncated_h5(path):
    """A real HDF5 file cut in half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as file:
        file["weights"] = np.arange(4096, dtype=np.float32)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    return path


def assert_refused(folder, config, *words):
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    with pytest.raises(resume.RunFolderError) as raised:
        training.run(config, str(folder))
    message = str(raised.value)
    for word in words:
        assert str(word) in message
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before  # nothing written
    return message


def test_truncated_best_checkpoint_is_named_with_its_remedy(data_dir, tmp_path):
    best = truncated_h5(tmp_path / "checkpoints" / "best.weights.h5")
    assert resume.damage(best) is not None
    message = assert_refused(tmp_path, tiny_config(data_dir), best, "delete it", "last.weights.h5")
    assert "\n" not in message


def test_truncated_last_weights_after_fit_is_never_retrained_silently(data_dir, tmp_path):
    last = truncated_h5(tmp_path / "checkpoints" / "last.weights.h5")
    workdir.write_json(tmp_path / resume.FIT_FINISHED_FILE, {"epochs": EPOCHS})
    assert_refused(tmp_path, tiny_config(data_dir), last, f"delete {tmp_path}")


def test_damaged_backup_weights_without_a_previous_copy_are_named(data_dir, tmp_path):
    weights = truncated_h5(tmp_path / "backup" / resume.BACKUP_WEIGHTS)
    workdir.write_json(tmp_path / "backup" / resume.BACKUP_METADATA, {"epoch": 2, "batch": 0})
    assert_refused(tmp_path, tiny_config(data_dir), weights, f"delete {tmp_path}")


def test_damaged_backup_weights_fall_back_to_the_previous_epoch_like_keras(tmp_path):
    backup = tmp_path / "backup"
    truncated_h5(backup / resume.BACKUP_WEIGHTS)
    with h5py.File(backup / (resume.BACKUP_WEIGHTS + ".bkp"), "w") as file:
        file["weights"] = np.zeros(3, np.float32)
    workdir.write_json(backup / resume.BACKUP_METADATA, {"epoch": 2, "batch": 0})
    workdir.write_json(backup / (resume.BACKUP_METADATA + ".bkp"), {"epoch": 1, "batch": 0})
    assert resume.backup_epoch(backup) == 1


def test_damaged_training_metadata_is_named(data_dir, tmp_path):
    (tmp_path / "backup").mkdir()
    with h5py.File(tmp_path / "backup" / resume.BACKUP_WEIGHTS, "w") as file:
        file["weights"] = np.zeros(3, np.float32)
    metadata = tmp_path / "backup" / resume.BACKUP_METADATA
    metadata.write_text('{"epoch": ')
    assert_refused(tmp_path, tiny_config(data_dir), metadata, ".bkp", f"delete {tmp_path}")


# ------------------------------------------------------------------------------------------------
# Another config on a rerun


def test_rerun_with_another_config_is_refused_before_config_json_changes(data_dir, tmp_path):
    config = training.resolve_data(tiny_config(data_dir), str(tmp_path))
    workdir.write_config(tmp_path, config)
    stored = (tmp_path / "config.json").read_text()
    changed = tiny_config(data_dir)
    changed.model.width = 0.125
    changed.train.learning_rates = (1e-3, 1e-3, 1e-4)
    message = assert_refused(
        tmp_path, changed, "config.json", "model.width: 0.0625 -> 0.125", "train.learning_rates"
    )
    assert (tmp_path / "config.json").read_text() == stored
    assert "\n" not in message


def test_rerun_may_change_only_the_fields_that_leave_training_alone(data_dir, tmp_path):
    config = training.resolve_data(tiny_config(data_dir), str(tmp_path))
    workdir.write_config(tmp_path, config)
    allowed = tiny_config(data_dir)
    allowed.train.export = False
    allowed.train.eval_every_epochs = 2
    resume.refuse_config_drift(tmp_path, training.resolve_data(allowed, str(tmp_path)))
    extended = tiny_config(data_dir)
    extended.train.epochs = EPOCHS + 1
    with pytest.raises(resume.RunFolderError, match="train.epochs"):
        resume.refuse_config_drift(tmp_path, training.resolve_data(extended, str(tmp_path)))


# ------------------------------------------------------------------------------------------------
# Config and data checks


@pytest.mark.parametrize(
    "field, value",
    [
        ("train.learning_rates", (3e-3, -1e-3, 1e-4)),
        ("finetune.learning_rate", -0.1),
        ("finetune.min_learning_rate", -1e-3),
        ("finetune.final_learning_rate", float("nan")),
    ],
)
def test_negative_learning_rates_are_rejected_naming_the_field(field, value):
    config = config_lib.default_config()
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ValueError) as raised:
        config_lib.validate(config)
    assert f"config.{field}" in str(raised.value) and "\n" not in str(raised.value)


def test_missing_data_set_is_one_line_with_the_build_command(tmp_path):
    config = tiny_config(tmp_path / "empty")
    config.data.synthetic_preset = ""
    with pytest.raises(FileNotFoundError) as raised:
        training.run(config, str(tmp_path / "run"))
    message = str(raised.value)
    assert "\n" not in message
    assert "tfds build rxrx1 --imports tfds_rxrx1 --manual_dir" in message
    assert f"--data_dir {tmp_path / 'empty'}" in message
    with pytest.raises(FileNotFoundError, match="is not built"):
        data.require_built(str(tmp_path), "no_such_dataset_anywhere")


def test_supervised_training_needs_no_test_split(data_dir, tmp_path):
    """A copy of the build with its test split removed still indexes and streams for Model 2."""
    import json

    copy = tmp_path / "tfds"
    shutil.copytree(data_dir, copy)
    (version,) = (copy / "rxrx1" / "native").iterdir()
    info_path = version / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["splits"] = [split for split in info["splits"] if split["name"] != "test"]
    info_path.write_text(json.dumps(info))
    for record in version.glob("rxrx1-test.*"):
        record.unlink()
    config = tiny_config(copy)
    with config.unlocked():
        config.data.builder = "rxrx1/native"
    assert data.split_names(config.data) == ("train",)
    index = data.index_splits(config.data)
    assert index.unlabelled_wells == 0 and index.labelled_wells > 0
    batch = next(iter(data.training_dataset(config)))
    assert batch["image"].shape[0] == config.train.batch_size
    mean_teacher = config_lib.load(str(ROOT / "configs" / "model3_mean_teacher.py") + ":cpu")
    mean_teacher.data = config.data
    with pytest.raises(ValueError, match="mean_teacher.enabled=False"):
        data.training_dataset(mean_teacher)
