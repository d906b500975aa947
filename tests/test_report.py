"""The training report: curves from a hand-made metrics.csv, per-cell-type accuracy against numpy."""

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from conftest import tiny_config

from deepnoise_tf import constants, evaluation, plate_design, report
from deepnoise_tf import workdir as workdir_lib

VAL_EXPERIMENTS = ("HEPG2-01", "HUVEC-01")


def hand_made_metrics():
    """Five epochs as train.py's CSVLogger writes them, epoch 2 logged twice (a resumed run)."""
    rows = [
        # epoch, classification, consistency, pseudo, student, val_student, val_teacher, lr, weight
        (0, 7.0, 0.0010, 0.0, 0.05, 0.04, 0.03, 3e-3, 0.7),
        (1, 6.0, 0.0008, 0.0, 0.10, 0.12, 0.15, 3e-3, 8.2),
        (2, 5.5, 0.0007, 0.0, 0.14, 0.01, 0.02, 3e-3, 40.0),  # overwritten below
        (2, 5.0, 0.0006, 0.0, 0.20, 0.18, 0.31, 3e-3, 40.0),
        (3, 4.0, 0.0005, 0.0, 0.30, 0.25, 0.27, 1e-3, 100.0),
        (4, 3.5, 0.0004, 0.0, 0.35, 0.22, 0.29, 1e-4, 100.0),
    ]
    columns = ["epoch", "classification_loss", "consistency_loss", "pseudo_label_loss",
               "student_accuracy", "val_student_accuracy", "val_teacher_accuracy",
               "learning_rate", "consistency_weight"]  # fmt: skip
    table = pd.DataFrame(rows, columns=columns)
    table["loss"] = (
        table["classification_loss"] + table["consistency_weight"] * table["consistency_loss"]
    )
    return table


def is_png(path):
    image = matplotlib.image.imread(path)
    return (
        path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        and image.ndim == 3
        and min(image.shape[:2]) > 100
    )


def test_report_from_a_hand_made_metrics_csv(tmp_path):
    metrics = hand_made_metrics()
    metrics.to_csv(tmp_path / "metrics.csv", index=False)
    written = report.main(["--workdir", str(tmp_path)])
    assert is_png(written["training_curves"])
    assert "cell_type_accuracy" not in written  # no config.json / checkpoint: curves only

    final = metrics.drop(index=2).reset_index(drop=True)  # the resumed epoch keeps its last row
    pd.testing.assert_frame_equal(workdir_lib.read_metrics(tmp_path / "metrics.csv"), final)
    summary = pd.read_csv(tmp_path / "report" / "metrics_summary.csv").set_index("metric")
    for name in ("val_teacher_accuracy", "val_student_accuracy", "student_accuracy"):
        values = final[name].to_numpy()
        assert summary.loc[name, "best"] == pytest.approx(values.max())
        assert summary.loc[name, "best_epoch"] == np.argmax(values) + 1
        assert summary.loc[name, "last"] == pytest.approx(values[-1])
    assert summary.loc["loss", "best"] == pytest.approx(final["loss"].min())
    assert summary.loc["learning_rate", "kind"] == "schedule"
    text = (tmp_path / "report" / "summary.md").read_text()
    assert "| val_teacher_accuracy | accuracy |" in text and "training_curves.png" in text
    assert "no per-cell-type accuracy" in text


def test_cell_type_accuracy_matches_numpy_and_the_plate_prior_fixes_off_plate_errors():
    rng = np.random.default_rng(0)
    rows = []
    for offset, cell_type in enumerate(("HEPG2", "RPE", "U2OS")):
        experiment = f"{cell_type}-09"
        for plate in range(1, 5):
            group = (offset + plate - 1) % 4  # the cyclic plate rotation of the real design
            sirnas = rng.permutation(np.arange(group, 40, 4))  # groups are id mod 4 here
            rows += [(f"{experiment}_{plate}_{i}", experiment, plate, cell_type, "treatment", s)
                     for i, s in enumerate(sirnas)]  # fmt: skip
        rows.append((f"{experiment}_1_control", experiment, 1, cell_type, "negative_control", 1138))
    wells = pd.DataFrame(
        rows, columns=["id_code", "experiment", "plate", "cell_type", "well_type", "label"]
    )
    labels = wells["label"].to_numpy()
    logits = rng.normal(size=(len(wells), constants.NUM_CLASSES))
    index = np.arange(len(wells))
    right = rng.random(len(wells)) < 0.6
    logits[index[right], labels[right]] = 8.0
    wrong = ~right & (wells["well_type"] == "treatment").to_numpy()
    logits[index[wrong], labels[wrong]] = 7.0
    logits[index[wrong], (labels[wrong] + 1) % 40] = 8.0  # an siRNA of another plate group

    groups = np.full(constants.NUM_SIRNAS, -1)
    groups[:40] = np.arange(40) % 4
    design = plate_design.cyclic_design(groups, range(4), num_plates=4)
    predictions = evaluation.well_predictions(wells, logits, method="assign", plate_design=design)
    table = evaluation.accuracy_report(predictions, "assign")
    treatment = wells["well_type"] == "treatment"
    predicted = logits[:, : constants.NUM_SIRNAS].argmax(1)
    raw = table[table["stage"] == "raw"].set_index("group")
    for cell_type in ("HEPG2", "RPE", "U2OS"):
        member = (treatment & (wells["cell_type"] == cell_type)).to_numpy()
        assert raw.loc[cell_type, "wells"] == member.sum() == 40
        assert raw.loc[cell_type, "accuracy"] == pytest.approx(
            np.mean(predicted[member] == labels[member])
        )
    assert raw.loc["all", "accuracy"] == pytest.approx(
        np.mean(predicted[treatment] == labels[treatment])
    )
    assert raw.loc["all", "accuracy"] < 0.75
    assigned = table[table["stage"] == "assign"].set_index("group")
    assert (assigned["accuracy"] == 1.0).all()


@pytest.fixture(scope="module")
def untrained_workdir(tiny_data, make_run_folder):
    """A workdir as train.py leaves it (config.json, checkpoint, export) around an untrained net,
    with a hand-made metrics.csv."""
    data_dir, builder = tiny_data
    config = tiny_config(
        data_dir, builder, **{"model.width": 0.0625, "data.val_experiments": VAL_EXPERIMENTS}
    )
    workdir = make_run_folder(config, "report_workdir")["workdir"]
    hand_made_metrics().to_csv(workdir / "metrics.csv", index=False)
    return workdir, data_dir, builder


def test_report_evaluates_the_export_per_cell_type_like_numpy(untrained_workdir):
    workdir, data_dir, builder = untrained_workdir
    written = report.main(["--workdir", str(workdir)])
    assert is_png(written["cell_type_chart"]) and is_png(written["training_curves"])
    table = pd.read_csv(written["cell_type_accuracy"])

    # Reference: every validation site straight from TFDS through the bare SavedModel, wells by pandas.
    sites = tfds.as_numpy(tfds.load(builder, split="train", data_dir=data_dir, batch_size=-1))
    experiments = np.asarray([value.decode() for value in sites["experiment"]])
    keep = np.isin(experiments, VAL_EXPERIMENTS)
    served = tf.saved_model.load(str(workdir / "export")).signatures["serving_default"](
        image=tf.constant(sites["image"][keep]),
        mean=tf.constant(sites["plate_mean"][keep]),
        std=tf.constant(sites["plate_std"][keep]),
    )
    frame = pd.DataFrame({
        "id_code": [value.decode() for value in sites["id_code"][keep]],
        "cell_type": [value.decode() for value in sites["cell_type"][keep]],
        "well_type": [value.decode() for value in sites["well_type"][keep]],
        "label": sites["sirna"][keep],
    })  # fmt: skip
    logits = served["logits"].numpy().astype(np.float64)
    well_logits = pd.DataFrame(logits).groupby(frame["id_code"].to_numpy()).mean()
    wells = frame.drop_duplicates("id_code").set_index("id_code").loc[well_logits.index]
    treatment = (wells["well_type"] == "treatment").to_numpy()
    predicted = well_logits.to_numpy()[:, : constants.NUM_SIRNAS].argmax(1)
    correct = predicted == wells["label"].to_numpy()
    raw = table[table["stage"] == "raw"].set_index("group")
    for cell_type in ("HEPG2", "HUVEC"):
        member = treatment & (wells["cell_type"] == cell_type).to_numpy()
        assert raw.loc[cell_type, "wells"] == member.sum() > 0
        assert raw.loc[cell_type, "correct"] == correct[member].sum()
    assert raw.loc["all", "wells"] == treatment.sum()
    # The plate prior picks among the 4 siRNAs of each plate: its accuracy is that of a real choice.
    assigned = table[table["stage"] == "assign"].set_index("group")
    assert (
        assigned.loc["all", "wells"] == treatment.sum()
        and 0 <= assigned.loc["all", "accuracy"] <= 1
    )
    assert "Validation accuracy per cell type" in (workdir / "report" / "summary.md").read_text()
