"""Ramp-up, EMA decay and learning-rate schedules: pure in-graph functions of the step.

The method they implement: docs/method.md §5-7.

Epoch convention, everywhere in this module: `epoch` is the 0-based index of the current epoch
(0 during the first epoch, as in Keras callbacks), and may be fractional (step / steps_per_epoch)
for schedules that change within an epoch. Functions accept Python numbers or tensors and return
float32 tensors, so they run inside a `tf.function` with the optimizer's step counter.
"""

import math

import keras
import tensorflow as tf


def _float(value):
    return tf.cast(value, tf.float32)


def linear_rampup(epoch, rampup_epochs):
    """t/T with t = epoch clipped to [0, T]; 1 when T == 0 (the ArcFace margin warm-up)."""
    epoch = _float(epoch)
    rampup_epochs = _float(rampup_epochs)
    safe_length = tf.where(rampup_epochs > 0, rampup_epochs, tf.ones_like(rampup_epochs))
    ramp = tf.clip_by_value(epoch, 0.0, safe_length) / safe_length
    return tf.where(rampup_epochs > 0, ramp, tf.ones_like(ramp))


def sigmoid_rampup(epoch, rampup_epochs):
    """exp(-5 (1 - t/T)^2) with t = epoch clipped to [0, T]; 1 when T == 0 (Laine & Aila 2017).

    Mean teacher's consistency ramp-up (docs/method.md §5, Tarvainen & Valpola 2017). With the
    0-based epoch the first epoch gets exp(-5) ~ 0.0067 and the weight is fully on from epoch
    index T.
    """
    return tf.exp(-5.0 * tf.square(1.0 - linear_rampup(epoch, rampup_epochs)))


def consistency_weight(epoch, max_weight=100.0, rampup_epochs=5, start_epoch=0.0):
    """Weight of the consistency loss (paper eq. 5): max_weight * sigmoid_rampup(epoch - start, T).

    0 before `start_epoch`: the paper first trains on the labelled data alone, then adds the
    consistency loss (paper, Discussion); start 0 (the default) ramps up from the first step.
    """
    epoch = _float(epoch)
    start_epoch = _float(start_epoch)
    ramp = _float(max_weight) * sigmoid_rampup(epoch - start_epoch, rampup_epochs)
    return tf.where(epoch < start_epoch, tf.zeros_like(ramp), ramp)


def ema_decay(step, epoch, *, last_epochs=(1, 10, 20), decays=(0.5, 0.9, 0.99), final_decay=0.999):
    """Teacher EMA decay min(1 - 1/(step + 1), d(epoch)) (docs/method.md §6).

    The first term makes the teacher an exact running average of the student early on (decay 0
    at step 0 copies the student). d is `decays[i]` for the first i with epoch number
    (= epoch + 1, 1-based) <= `last_epochs[i]`, else `final_decay`: by default 0.5 in epoch 1,
    0.9 up to epoch 10, 0.99 up to epoch 20, 0.999 after.

    Args:
      step: 0-based optimizer step (the update after step `step`).
      epoch: 0-based epoch index (see module docstring); fractional values are floored.
    """
    if len(last_epochs) != len(decays):
        raise ValueError(f"last_epochs {last_epochs} and decays {decays} differ in length")
    epoch_number = tf.floor(_float(epoch)) + 1.0
    decay = _float(final_decay)
    for last_epoch, epoch_decay in reversed(list(zip(last_epochs, decays, strict=True))):
        decay = tf.where(epoch_number <= last_epoch, _float(epoch_decay), decay)
    return tf.minimum(1.0 - 1.0 / (_float(step) + 1.0), decay)


@keras.saving.register_keras_serializable(package="deepnoise_tf")
class PiecewiseEpochLR(keras.optimizers.schedules.LearningRateSchedule):
    """Piecewise-constant learning rate with boundaries in epochs (paper, "Training details").

    Default: 3e-4, then 1e-4 after 100 epochs (epoch index >= 100), then 1e-5 after 140.

    Args:
      steps_per_epoch: optimizer steps in one epoch.
      boundaries: epoch indices where the next value starts, increasing.
      values: len(boundaries) + 1 learning rates.

    Example:
      `keras.optimizers.AdamW(PiecewiseEpochLR(steps_per_epoch=1000), weight_decay=2e-4)`
    """

    def __init__(self, steps_per_epoch, boundaries=(100, 140), values=(3e-4, 1e-4, 1e-5)):
        if len(values) != len(boundaries) + 1:
            raise ValueError("values needs exactly one more entry than boundaries")
        if steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
        self.steps_per_epoch = int(steps_per_epoch)
        self.boundaries = tuple(int(boundary) for boundary in boundaries)
        self.values = tuple(float(value) for value in values)

    def __call__(self, step):
        # Integer arithmetic so a boundary step lands exactly, whatever the step count.
        epoch = tf.math.floordiv(tf.cast(step, tf.int64), self.steps_per_epoch)
        learning_rate = _float(self.values[0])
        for boundary, value in zip(self.boundaries, self.values[1:], strict=True):
            learning_rate = tf.where(epoch >= boundary, _float(value), learning_rate)
        return learning_rate

    def get_config(self):
        return {
            "steps_per_epoch": self.steps_per_epoch,
            "boundaries": list(self.boundaries),
            "values": list(self.values),
        }


@keras.saving.register_keras_serializable(package="deepnoise_tf")
class CosineRestartsLR(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine annealing with warm restarts, then a constant tail (docs/method.md §7, fine-tuning).

    `cycles` cycles of `cycle_epochs * epoch_scale` epochs each; within a cycle the rate falls
    from `initial_learning_rate` to `minimum_learning_rate` along half a cosine and restarts at the
    next cycle (Loshchilov & Hutter 2017). After the cycles it stays at `final_learning_rate`
    (meant for the last `final_epochs` epochs; see `total_epochs`). Fine-tuning uses 4 cycles of
    40 r epochs, r = 1 (U2OS), 0.5 (RPE, HEPG2), 0.25 (HUVEC), then 5 epochs at 1e-4
    (docs/method.md §7).
    """

    def __init__(
        self,
        steps_per_epoch,
        epoch_scale=1.0,
        *,
        initial_learning_rate=0.1,
        minimum_learning_rate=1e-3,
        cycles=4,
        cycle_epochs=40.0,
        final_learning_rate=1e-4,
        final_epochs=5,
    ):
        if steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
        self.steps_per_epoch = int(steps_per_epoch)
        self.epoch_scale = float(epoch_scale)
        self.initial_learning_rate = float(initial_learning_rate)
        self.minimum_learning_rate = float(minimum_learning_rate)
        self.cycles = int(cycles)
        self.cycle_epochs = float(cycle_epochs)
        self.final_learning_rate = float(final_learning_rate)
        self.final_epochs = final_epochs
        # Whole steps so every cycle has the same length and restarts land on a step.
        self.cycle_steps = max(1, round(self.cycle_epochs * self.epoch_scale * steps_per_epoch))

    @property
    def total_epochs(self):
        """Epochs the schedule is meant to run: the cycles plus the constant tail."""
        return self.cycles * self.cycle_epochs * self.epoch_scale + self.final_epochs

    def __call__(self, step):
        step = tf.cast(step, tf.int64)
        cycle = tf.math.floordiv(step, self.cycle_steps)
        position = _float(step - cycle * self.cycle_steps) / self.cycle_steps
        cosine = 0.5 * (1.0 + tf.cos(math.pi * position))
        span = self.initial_learning_rate - self.minimum_learning_rate
        annealed = self.minimum_learning_rate + span * cosine
        return tf.where(cycle < self.cycles, annealed, _float(self.final_learning_rate))

    def get_config(self):
        return {
            "steps_per_epoch": self.steps_per_epoch,
            "epoch_scale": self.epoch_scale,
            "initial_learning_rate": self.initial_learning_rate,
            "minimum_learning_rate": self.minimum_learning_rate,
            "cycles": self.cycles,
            "cycle_epochs": self.cycle_epochs,
            "final_learning_rate": self.final_learning_rate,
            "final_epochs": self.final_epochs,
        }
