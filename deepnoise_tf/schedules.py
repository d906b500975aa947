"""Ramp-up, EMA decay and learning-rate schedules: pure in-graph functions of the step.

The method they implement: docs/method.md §5-7.

Epoch convention, everywhere in this module: `epoch` is the 0-based index of the current epoch
(0 during the first epoch, as in Keras callbacks), and may be fractional (step / steps_per_epoch)
for schedules that change within an epoch. Functions accept Python numbers or tensors and return
float32 tensors, so they run inside a `tf.function` with the optimizer's step counter.

The config states every schedule as fractions of the schedule length (issue 17), so that
`--config.train.epochs=96` moves the learning-rate steps with it; `run_schedule` is the one place
that turns them into the absolute epochs the functions and classes here take.
"""

import dataclasses
import math

import keras
import tensorflow as tf

from deepnoise_tf import config_renames

# Within this of a whole epoch, fraction x length is that whole epoch (binary floats: 1/49 x 49).
_WHOLE_EPOCH_TOLERANCE = 1e-9


@dataclasses.dataclass(frozen=True)
class RunSchedule:
    """The schedules of one run in absolute epochs (0-based epoch indices, as in this module).

    Attributes:
      length: the epochs the config's fractions refer to (`train.schedule_epochs`, else
        `train.epochs`).
      lr_boundaries: epochs where the next learning rate starts (`PiecewiseEpochLR`).
      arcface_margin_warmup_epochs: the ArcFace margin's linear warm-up (0 = full margin).
      rampup_epochs: the consistency weight's sigmoid ramp-up (`consistency_weight`).
      consistency_start_epoch: labelled-only training before it (paper, Discussion).
      ema_boundaries: last 1-based epochs of each teacher EMA decay (`ema_decay`'s `last_epochs`).
    """

    length: int
    lr_boundaries: tuple[int, ...]
    arcface_margin_warmup_epochs: float
    rampup_epochs: float
    consistency_start_epoch: float
    ema_boundaries: tuple[int, ...]


def _epochs(fraction, length: int) -> float:
    """fraction x length as a float epoch count, snapped to the whole epoch it is within 1e-9 of."""
    epochs = float(fraction) * length
    whole = round(epochs)
    return float(whole) if abs(epochs - whole) < _WHOLE_EPOCH_TOLERANCE else epochs


def _boundary(fraction, length: int) -> int:
    """fraction x length rounded to the nearest whole epoch, halves up (a boundary is an epoch)."""
    return math.floor(_epochs(fraction, length) + 0.5)


def run_schedule(config) -> RunSchedule:
    """The absolute epochs of `config`'s schedules: the one place fractions become epochs.

    Rule: length L = `train.schedule_epochs`, else `train.epochs`. Boundaries (learning rate, EMA
    decay) are epoch indices: round(f x L), halves up. Ramp lengths and the consistency start may
    fall within an epoch: f x L as a float, snapped to a whole epoch within 1e-9. So fractions
    written as k / L give back exactly k at length L (the shipped configs' fractions are the
    epochs of the paper and of `cpu_scale` over their `train.epochs`).

    Raises:
      ValueError: the config still holds a renamed field (e.g. a run folder's old config.json).
    """
    config_renames.refuse_renamed_fields(config)
    length = int(config.train.get("schedule_epochs", 0) or config.train.epochs)
    mean_teacher = config.mean_teacher
    return RunSchedule(
        length=length,
        lr_boundaries=tuple(_boundary(f, length) for f in config.train.lr_boundary_fractions),
        arcface_margin_warmup_epochs=_epochs(
            config.model.get("arcface_margin_warmup_fraction", 0.0), length
        ),
        rampup_epochs=_epochs(mean_teacher.rampup_fraction, length),
        consistency_start_epoch=_epochs(
            mean_teacher.get("consistency_start_fraction", 0.0), length
        ),
        ema_boundaries=tuple(_boundary(f, length) for f in mean_teacher.ema_boundary_fractions),
    )


def _check_fractions(field: str, values, *, increasing: bool) -> None:
    for value in values:
        if not 0.0 <= value <= 1.0:  # also catches NaN
            raise ValueError(f"config.{field}={value} must be a fraction in [0, 1]")
    if increasing and any(b <= a for a, b in zip(values[:-1], values[1:], strict=True)):
        raise ValueError(f"config.{field}={tuple(values)} must be strictly increasing")


def validate_schedule_fields(config) -> None:
    """Checks the schedule fields (`config.validate` calls it); raises ValueError naming the field.

    A renamed field (issue 17) is named with its replacement; fractions lie in [0, 1], boundaries
    strictly increase, and every boundary list has one value fewer than the values it switches.
    """
    config_renames.refuse_renamed_fields(config)
    train, mean_teacher = config.train, config.mean_teacher
    schedule_epochs = train.get("schedule_epochs", 0)
    if not (isinstance(schedule_epochs, int) and schedule_epochs >= 0):
        raise ValueError(
            f"config.train.schedule_epochs={schedule_epochs!r} must be a whole number >= 0 "
            "(0 = train.epochs)"
        )
    scalars = {
        "model.arcface_margin_warmup_fraction": config.model.get(
            "arcface_margin_warmup_fraction", 0.0
        ),
        "mean_teacher.rampup_fraction": mean_teacher.rampup_fraction,
        "mean_teacher.consistency_start_fraction": mean_teacher.get(
            "consistency_start_fraction", 0.0
        ),
    }
    for field, value in scalars.items():
        _check_fractions(field, (value,), increasing=False)
    boundaries = {
        "train.lr_boundary_fractions": (train.lr_boundary_fractions, "train.learning_rates"),
        "mean_teacher.ema_boundary_fractions": (
            mean_teacher.ema_boundary_fractions,
            "mean_teacher.ema_decays",
        ),
    }
    for field, (fractions, values_field) in boundaries.items():
        _check_fractions(field, tuple(fractions), increasing=True)
        section, name = values_field.split(".")
        if len(config[section][name]) != len(fractions) + 1:
            raise ValueError(
                f"config.{values_field} needs one more value than config.{field} "
                f"(got {len(config[section][name])} and {len(fractions)})"
            )


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
