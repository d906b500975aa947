"""Checkpoint selection by the per-well accuracy over treatments (deepnoise_tf/selection.py): the
score against a hand-made case with controls, its place among the callbacks, and a tiny run whose
logged score equals numpy's on the best checkpoint."""

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config

from deepnoise_tf import constants, inference, selection, step_phase, training, workdir

VAL = ("HEPG2-01",)
# A run of a few one-step epochs on the tiny data set, validated on VAL.
TINY_RUN = {
    "data.val_experiments": VAL,
    "data.shuffle_buffer": 64,
    "model.width": 0.0625,
    "train.batch_size": 8,
    "train.export": False,
}


def test_score_is_per_well_over_treatments_without_controls():
    c = constants.NUM_CLASSES
    wells = pd.DataFrame(
        {
            "id_code": ["a", "b", "c", "d", "e"],
            "well_type": ["treatment", "treatment", "treatment", "negative_control", "treatment"],
            "label": [5, 7, 9, 1108, -1],
        }
    )
    logits = np.zeros((5, c))
    logits[0, 5] = 3.0  # right
    logits[1, 7], logits[1, 1110] = 2.0, 9.0  # right among siRNAs; a control column is higher
    logits[2, 3] = 1.0  # wrong
    logits[3, 1108] = 5.0  # a control well: not scored
    logits[4, 0] = 1.0  # unknown label: not scored
    assert selection.treatment_well_accuracy(wells, logits) == pytest.approx(2 / 3)
    wells["label"] = -1
    assert np.isnan(selection.treatment_well_accuracy(wells, logits))


@pytest.mark.parametrize("mean_teacher", [True, False])
def test_the_well_score_is_computed_before_every_callback_that_reads_it(
    tiny_data, tmp_path, mean_teacher
):
    config = tiny_config(
        *tiny_data, **{"mean_teacher.enabled": mean_teacher, "data.val_experiments": VAL}
    )
    name = "val_teacher_well_accuracy" if mean_teacher else "val_student_well_accuracy"
    assert selection.monitored_metric(config) == name
    callbacks = training._callbacks(config, str(tmp_path), True)
    assert isinstance(callbacks[0], selection.Validation) and callbacks[0].name == name
    (checkpoint,) = [c for c in callbacks if isinstance(c, keras.callbacks.ModelCheckpoint)]
    assert checkpoint.monitor == name
    assert not any(isinstance(c, selection.Validation) for c in callbacks[1:])
    # The mean teacher's step is specialised to each epoch's phase (step_phase.StepPhase).
    phases = [c for c in callbacks if isinstance(c, step_phase.StepPhase)]
    assert len(phases) == int(mean_teacher)
    assert not any(
        isinstance(c, selection.Validation)
        for c in training._callbacks(config, str(tmp_path), False)
    )


def test_logged_score_is_numpy_per_well_accuracy_of_the_best_checkpoint(tiny_data, tmp_path):
    data_dir, builder = tiny_data
    config = tiny_config(*tiny_data, **{**TINY_RUN, "train.steps_per_epoch": 2, "train.epochs": 2})
    training.run(config, str(tmp_path))
    metrics = workdir.read_metrics(tmp_path / workdir.METRICS_FILE)
    scores = metrics["val_teacher_well_accuracy"].to_numpy(dtype=float)
    assert len(scores) == 2 and np.isfinite(scores).all()
    assert "val_teacher_accuracy" in metrics.columns  # Keras's per-site score, kept as an extra

    outputs = inference.predict_split(
        {"best": inference.from_run_folder(tmp_path)}, data_dir, builder, "train", experiments=VAL
    )
    wells, logits = outputs.wells, outputs.logits["best"]
    treatment = (wells["well_type"] == "treatment").to_numpy()
    assert treatment.sum() > 0 and (~treatment).sum() > 0  # controls are there, and left out
    labels = wells["label"].to_numpy()[treatment]
    predictions = np.argmax(logits[treatment, : constants.NUM_SIRNAS], axis=1)
    assert scores.max() == pytest.approx(np.mean(predictions == labels))


@pytest.mark.parametrize(
    "every, epochs, expected",
    [(1, 4, [1, 2, 3, 4]), (2, 5, [1, 2, 4, 5]), (3, 6, [1, 3, 6]), (10, 3, [1, 3]), (1, 1, [1])],
)
def test_validation_epochs_are_every_nth_plus_the_first_and_last(every, epochs, expected):
    config = tiny_config(
        "unused", "rxrx1", **{"train.eval_every_epochs": every, "train.epochs": epochs}
    )
    assert selection.validation_epochs(config) == expected


def test_validating_every_few_epochs_keeps_the_scores_in_metrics_csv(tiny_data, tmp_path):
    """Keras's CSVLogger takes its columns from the first epoch's logs: the first epoch is always
    validated, so the per-well score and the per-site ones stay in the file when validation is
    sparse; the epochs in between carry no score."""
    config = tiny_config(
        *tiny_data,
        **{**TINY_RUN, "train.steps_per_epoch": 1, "train.epochs": 4, "train.eval_every_epochs": 3},
    )
    training.run(config, str(tmp_path))
    metrics = workdir.read_metrics(tmp_path / workdir.METRICS_FILE)
    for column in ("val_teacher_well_accuracy", "val_teacher_accuracy", "val_student_accuracy"):
        scored = np.isfinite(pd.to_numeric(metrics[column], errors="coerce").to_numpy(dtype=float))
        assert list(scored) == [True, False, True, True], column  # epochs 1, 3, 4 of 4


@pytest.mark.parametrize("mean_teacher", [True, False])
def test_one_validation_pass_gives_keras_per_site_scores(tiny_data, mean_teacher):
    """`Validation`'s per-site scores equal Keras's own evaluation (`model.evaluate`, i.e.
    `MeanTeacher.test_step` and Keras's accuracy metric, over the same sites), which `fit` no
    longer runs; its well score equals `treatment_well_accuracy` on `inference.predict_wells` of
    the inference network."""
    from deepnoise_tf import factory

    config = tiny_config(
        *tiny_data,
        **{
            "mean_teacher.enabled": mean_teacher,
            "data.val_experiments": VAL,
            "model.width": 0.0625,
        },
    )
    model = factory.build_model(config, steps_per_epoch=1)
    batches = selection.validation_batches(config).map(
        lambda batch: {key: batch[key] for key in ("image", "mean", "std", "label")}
    )
    keras_scores = model.evaluate(batches, return_dict=True, verbose=0)
    validation = selection.Validation(config)
    validation.set_model(model)
    scores = validation.scores()
    networks = ("student", "teacher") if mean_teacher else ("student",)
    assert set(scores) == {f"val_{name}_accuracy" for name in networks} | {validation.name}
    for name in networks:
        assert scores[f"val_{name}_accuracy"] == pytest.approx(keras_scores[f"{name}_accuracy"])
    predictor = inference.from_networks(
        [model.inference_network()], image_size=config.data.image_size,
        normalization=config.data.normalization,
    )  # fmt: skip
    outputs = inference.predict_wells({"model": predictor}, selection.validation_batches(config))
    assert scores[validation.name] == pytest.approx(
        selection.treatment_well_accuracy(outputs.wells, outputs.logits["model"])
    )


def test_site_accuracy_counts_labelled_sites_over_every_class():
    sites = pd.DataFrame({"label": [0, 3, 1110, -1]})
    logits = np.zeros((4, constants.NUM_CLASSES))
    logits[0, 0] = logits[1, 2] = logits[2, 1110] = logits[3, 5] = (
        1.0  # right, wrong, control right
    )
    assert selection.site_accuracy(sites, logits) == pytest.approx(2 / 3)
    assert np.isnan(selection.site_accuracy(sites.assign(label=-1), logits))
