"""Checkpoint selection: the per-well accuracy over treatments on the validation experiments.

The paper selects checkpoints "by validation accuracy" (docs/method.md §7), and every number it and
this package report is an accuracy per well over the treatment siRNAs (evaluation.py). Keras's own
validation scores sites over all 1139 classes, controls included, which can rank two epochs
differently. So a callback scores the inference network (the teacher when there is one) the way
the reports do: `inference.predict_wells` over the validation sites (logits averaged over each well's
sites, no test-time views), the treatment wells only, the argmax over the treatment siRNAs, no plate
prior. It writes the score into the epoch's logs under `monitored_metric(config)`, before the
checkpoint, CSV and TensorBoard callbacks read them, together with Keras's per-site scores, from
the same pass over the sites (`Validation`).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from deepnoise_tf import evaluation, inference


def monitored_metric(config) -> str:
    """The logged name of the score that selects `best.weights.h5`: the teacher's when there is one."""
    network = "teacher" if config.mean_teacher.enabled else "student"
    return f"val_{network}_well_accuracy"


def validation_epochs(config) -> list[int]:
    """The epochs (1-based) whose end `Validation` scores.

    Every `train.eval_every_epochs`-th, plus the first and the last: the first because
    `metrics.csv` takes its columns from the first epoch's logs (Keras's CSVLogger), so a first
    epoch without validation would drop the scores from the file; the last so the final weights
    are always scored.
    """
    every = max(1, int(config.train.eval_every_epochs))
    epochs = int(config.train.epochs)
    return sorted({1, epochs} | set(range(every, epochs + 1, every)))


def treatment_well_accuracy(wells, logits) -> float:
    """Share of labelled treatment wells whose argmax over the treatment siRNAs is the label.

    `wells` and `logits` as `inference.predict_wells` returns them (one row per well). NaN when no
    treatment well has a known label.
    """
    table, treatment_logits = evaluation.treatment_wells(wells, logits)
    predictions = np.argmax(evaluation.sirna_logits(treatment_logits), axis=1)
    overall = evaluation.accuracy_table(
        table["label"].to_numpy(), predictions, np.zeros(len(table), dtype=np.int64)
    ).iloc[-1]
    return float(overall["accuracy"])


def validation_batches(config, batch_size: int | None = None):
    """The validation experiments' sites of the train split, as `inference.site_batches` reads them."""
    return inference.site_batches(
        config.data.data_dir,
        config.data.builder,
        "train",
        config.data.normalization,
        experiments=tuple(config.data.val_experiments),
        cell_types=tuple(config.data.cell_types),
        batch_size=batch_size or config.train.batch_size,
    )


def site_accuracy(sites, logits) -> float:
    """Keras's per-site validation accuracy (`MeanTeacher.test_step`): the share of labelled sites
    (label >= 0, controls included) whose argmax over every class is the label; NaN without any."""
    labels = sites["label"].to_numpy()
    labelled = labels >= 0
    if not labelled.any():
        return float("nan")
    return float(np.mean(np.argmax(logits[labelled], axis=1) == labels[labelled]))


class Validation(keras.callbacks.Callback):
    """Scores the epochs of `validation_epochs(config)` in one pass over the validation sites.

    Adds `monitored_metric(config)` (the inference network's per-well treatment accuracy) and
    Keras's per-site scores `val_student_accuracy` (and `val_teacher_accuracy` with a teacher,
    `site_accuracy`) to the epoch's logs. One pass serves all three: `model.fit` gets no
    validation data, so the sites are not read and run through the networks twice. Put it before
    the callbacks that read the logs.
    """

    def __init__(self, config):
        super().__init__()
        self.name = monitored_metric(config)
        self.epochs = frozenset(validation_epochs(config))
        self.image_size = int(config.data.image_size)
        self.normalization = config.data.normalization
        self.batches = validation_batches(config)
        self.predictors = None

    def _networks(self) -> dict:
        networks = {"student": (self.model.student_backbone, self.model.student_head)}
        if self.model.has_teacher:
            networks["teacher"] = (self.model.teacher_backbone, self.model.teacher_head)
        return networks

    def scores(self) -> dict[str, float]:
        """The current weights' scores, by logged name."""
        if self.predictors is None:
            self.predictors = {}
            for name, network in self._networks().items():
                predictor = inference.from_networks(
                    [network], image_size=self.image_size, normalization=self.normalization
                )
                # Traced once and reused every epoch (the variables are read at each call).
                self.predictors[name] = dataclasses.replace(
                    predictor, serve=tf.function(predictor.serve, reduce_retracing=True)
                )
        sites, logits, _ = inference.predict_sites(self.predictors, self.batches)
        scores = {f"val_{name}_accuracy": site_accuracy(sites, logits[name]) for name in logits}
        inference_backbone = self.model.inference_network()[0]  # the network that is exported
        evaluated = next(name for name, (backbone, _) in self._networks().items()
                         if backbone is inference_backbone)  # fmt: skip
        wells, well_logits = evaluation.aggregate_wells(sites, logits[evaluated])
        scores[self.name] = treatment_well_accuracy(wells, well_logits)
        return scores

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and epoch + 1 in self.epochs:
            logs.update(self.scores())
