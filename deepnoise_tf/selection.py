"""Checkpoint selection: the per-well accuracy over treatments on the validation experiments.

The paper selects checkpoints "by validation accuracy" (docs/method.md §7), and every number it and
this package report is an accuracy per well over the treatment siRNAs (evaluation.py). Keras's own
validation scores sites over all 1139 classes, controls included, which can rank two epochs
differently. So a callback scores the inference network (the teacher when there is one) the way
the reports do: `inference.predict_wells` over the validation sites (logits averaged over each well's
sites, no test-time views), the treatment wells only, the argmax over the treatment siRNAs, no plate
prior. It writes the score into the epoch's logs under `monitored_metric(config)`, before the
checkpoint, CSV and TensorBoard callbacks read them.
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
    """The epochs (1-based, as Keras's `validation_freq` takes them) whose end is validated.

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


class WellAccuracy(keras.callbacks.Callback):
    """Adds `monitored_metric(config)` to the logs of the epochs in `validation_epochs(config)`.

    They are the epochs Keras validates (`validation_freq`, `training._fit`). Put it before the
    callbacks that read the logs.
    """

    def __init__(self, config):
        super().__init__()
        self.name = monitored_metric(config)
        self.epochs = frozenset(validation_epochs(config))
        self.image_size = int(config.data.image_size)
        self.normalization = config.data.normalization
        self.batches = validation_batches(config)
        self.predictor = None

    def score(self) -> float:
        """The current weights' score (the model's inference network, as it would be exported)."""
        if self.predictor is None:
            predictor = inference.from_networks(
                [self.model.inference_network()],
                image_size=self.image_size,
                normalization=self.normalization,
            )
            # Traced once and reused every epoch (the networks' variables are read at each call).
            self.predictor = dataclasses.replace(
                predictor, serve=tf.function(predictor.serve, reduce_retracing=True)
            )
        outputs = inference.predict_wells({"model": self.predictor}, self.batches)
        return treatment_well_accuracy(outputs.wells, outputs.logits["model"])

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and epoch + 1 in self.epochs:
            logs[self.name] = self.score()
