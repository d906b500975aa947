"""`python -m deepnoise_tf.train` end to end: resuming after SIGKILL, and the SavedModel it exports.

One tiny run of Model 2 (16-pixel synthetic data, width 1/16, 6 epochs of 6 steps, HEPG2-01 held
out for validation) is shared: it is killed once metrics.csv has an epoch row and rerun with the
same command. The export is then loaded in a fresh interpreter that never imports deepnoise_tf and
compared with the Keras network rebuilt here from the best checkpoint. (Model 2, not Model 3:
tracing the mean-teacher step twice would double the CPU time; tests/test_finetune.py covers the
export of a teacher.)
"""

import csv
import json
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import serve_in_fresh_process

from deepnoise_tf import config as config_lib
from deepnoise_tf import constants, factory, training

ROOT = pathlib.Path(__file__).resolve().parents[1]
EPOCHS = 6
STEPS = 6
IMAGE_SIZE = 16


def command(workdir):
    return [
        sys.executable,
        "-m",
        "deepnoise_tf.train",
        "--config",
        str(ROOT / "configs" / "model2_arcface.py") + ":cpu",
        "--workdir",
        str(workdir),
        "--config.data.synthetic_preset=tiny",
        f"--config.data.image_size={IMAGE_SIZE}",
        "--config.data.val_experiments=('HEPG2-01',)",
        "--config.data.shuffle_buffer=64",
        "--config.model.width=0.0625",
        "--config.train.batch_size=8",
        f"--config.train.steps_per_epoch={STEPS}",
        f"--config.train.epochs={EPOCHS}",
    ]


def epoch_rows(workdir):
    path = workdir / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Trains, SIGKILLs after the first logged epoch, reruns; returns what each stage left behind."""
    workdir = tmp_path_factory.mktemp("train_run")
    log = open(workdir.parent / "first_run.log", "w")
    process = subprocess.Popen(command(workdir), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not epoch_rows(workdir):
        assert process.poll() is None, (workdir.parent / "first_run.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no epoch finished in 300 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    log.close()
    killed = {
        "rows": epoch_rows(workdir),
        "backup": (workdir / "backup").is_dir(),
        "export": (workdir / "export").exists(),
    }
    second = subprocess.run(command(workdir), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    rows = epoch_rows(workdir)
    third = subprocess.run(command(workdir), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    return {"workdir": workdir, "killed": killed, "second": second, "third": third, "rows": rows}


@pytest.mark.slow
def test_rerun_resumes_where_the_backup_left_off(run):
    killed = run["killed"]
    assert killed["backup"] and not killed["export"], "the kill must land mid-training"
    before = [int(row["epoch"]) for row in killed["rows"]]
    assert before == list(range(len(before))) and len(before) < EPOCHS
    epochs = [int(row["epoch"]) for row in run["rows"]]
    resumed = epochs[len(before) :]
    assert epochs[: len(before)] == before
    # The rerun continues (at most the epoch in flight at the kill is lost), never restarts at 0.
    assert resumed and resumed[0] in (len(before), len(before) + 1)
    assert resumed == list(range(resumed[0], EPOCHS))
    assert f"Epoch 1/{EPOCHS}" not in run["second"].stdout
    assert (run["workdir"] / "export" / "saved_model.pb").is_file()
    assert not (run["workdir"] / "backup").exists()  # finished runs drop their backup
    # The optimizer state came back too: the step counter counts every epoch trained.
    model = restore(run["workdir"], "last.weights.h5")
    assert int(model.optimizer.iterations) == EPOCHS * STEPS  # not (EPOCHS - resumed[0]) * STEPS


@pytest.mark.slow
def test_rerun_of_a_finished_run_trains_nothing(run):
    assert "nothing to do" in run["third"].stdout
    assert epoch_rows(run["workdir"]) == run["rows"]  # no epoch appended


def restore(workdir, checkpoint):
    """The training wrapper of `workdir` rebuilt from its config.json, weights from `checkpoint`."""
    import ml_collections

    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    model = factory.build_model(config, STEPS)
    model.load_weights(str(workdir / "checkpoints" / checkpoint))
    return model


@pytest.mark.slow
def test_export_loads_without_the_package_and_matches_the_best_checkpoint(run, tmp_path):
    rng = np.random.default_rng(3)
    inputs = {
        "image": rng.integers(0, 256, size=(4, IMAGE_SIZE, IMAGE_SIZE, 6), dtype=np.uint8),
        "mean": rng.uniform(20, 60, size=(4, 6)).astype(np.float32),
        "std": rng.uniform(5, 20, size=(4, 6)).astype(np.float32),
    }
    served = serve_in_fresh_process(run["workdir"] / "export", inputs, tmp_path)
    assert int(served["image_size"]) == IMAGE_SIZE and str(served["normalization"]) == "plate"
    assert served["probabilities"].shape == (4, constants.NUM_SIRNAS)
    np.testing.assert_allclose(served["probabilities"].sum(axis=1), 1.0, rtol=1e-5)

    # Reference: the student (Model 2 has no teacher) of the best checkpoint, normalized in numpy.
    model = restore(run["workdir"], "best.weights.h5")
    assert not model.has_teacher
    normalized = (inputs["image"] - inputs["mean"][:, None, None, :]) / inputs["std"][
        :, None, None, :
    ]
    embedding = np.asarray(
        model.student_backbone(normalized.astype(np.float32), training=False), np.float64
    )
    logits = np.asarray(
        model.student_head(embedding.astype(np.float32), training=False), np.float64
    )
    sirna_logits = logits[:, : constants.NUM_SIRNAS]
    probabilities = np.exp(sirna_logits - sirna_logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(served["logits"], logits, atol=1e-4)
    np.testing.assert_allclose(served["probabilities"], probabilities, rtol=1e-4, atol=1e-7)
    unit = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    np.testing.assert_allclose(served["embedding"], unit, atol=1e-5)


def test_best_score_so_far_reads_the_logged_scores(tmp_path):
    path = tmp_path / "metrics.csv"
    assert training.best_score_so_far(str(path), "val_teacher_accuracy") is None
    path.write_text(
        "epoch,loss,val_teacher_accuracy\n0,2.0,0.25\n1,1.5,0.5\n2,1.2,nan\n3,1.1,0.375\n"
    )
    assert training.best_score_so_far(str(path), "val_teacher_accuracy") == 0.5
    assert training.best_score_so_far(str(path), "val_student_accuracy") is None


def test_build_network_builds_batch_norm_with_the_configured_momentum():
    config = config_lib.default_config()
    config.model.width = 0.0625
    config.model.batch_norm_momentum = 0.7
    network = factory.build_network(config.model, IMAGE_SIZE, "probe")
    momenta = {
        layer.momentum
        for layer in network["backbone"].layers
        if "BatchNormalization" in type(layer).__name__
    }
    assert momenta == {0.7}
