"""The mean teacher's weights: the exponential moving average of the student's.

The teacher is never optimised (paper Fig. 2C): after each optimizer step its trainable weights
move towards the student's, θ' <- d θ' + (1 - d) θ (Tarvainen & Valpola 2017, eq. 1 of the mean
teacher paper; the decay schedule d is `schedules.ema_decay`). What happens to its batch-norm
moving statistics is a choice (`constants.TEACHER_STATISTICS`), made here in one place.

Networks are `{"backbone": keras.Model, "head": layer}`, as `factory.build_network` returns them.
"""

from __future__ import annotations

import tensorflow as tf

from deepnoise_tf import keras_compat


def trainable_variables(network: dict) -> list:
    """The weights the EMA averages (and the optimizer trains, in the student): backbone, head."""
    return network["backbone"].trainable_weights + network["head"].trainable_weights


def ema_update(teacher_variables, student_variables, decay):
    """teacher <- decay * teacher + (1 - decay) * student, once per variable even under a strategy.

    Called in replica context, it hands over to cross-replica context (as Keras's optimizer does)
    so that each mirrored teacher variable is written through the strategy, not once per replica.
    """
    pairs = [(t.value, s.value) for t, s in zip(teacher_variables, student_variables, strict=True)]

    def update_all(strategy, pairs, rate):
        # teacher -= (1 - d) (teacher - student): the same average in 3 ops per variable, not 5
        # (the update runs for every weight of both networks at every step).
        for teacher, student in pairs:
            strategy.extended.update(
                teacher,
                lambda t, s, r: t.assign_sub(r * (t - tf.cast(s, t.dtype))),
                args=(student, rate),  # per-replica values are unwrapped per device
                group=False,
            )

    keras_compat.merge_call(update_all, pairs, 1.0 - decay)  # 1 - d in replica context


def update_teacher(teacher: dict, student: dict, decay, *, statistics: str, teacher_ran):
    """One EMA step of the teacher towards the student, after the student's optimizer step.

    Trainable weights: always. Batch-norm moving statistics: "ema" averages them the same way;
    "batch" leaves them to the teacher's own passes (Tarvainen & Valpola; the authors' code),
    except in steps where it ran none (`teacher_ran` false: consistency weight 0), where they follow
    the student's by the same EMA, so that the teacher evaluated during the labelled-only epochs is
    not normalised by statistics frozen at its start. `teacher_ran` is a Python bool where the step
    knows it when tracing, else a boolean tensor.
    """
    ema_update(trainable_variables(teacher), trainable_variables(student), decay)
    if statistics == "ema" or teacher_ran is not True:
        if statistics == "batch" and teacher_ran is not False:
            decay = tf.where(teacher_ran, 1.0, decay)  # 1 keeps the teacher's own, exactly
        ema_update(
            teacher["backbone"].non_trainable_weights,
            student["backbone"].non_trainable_weights,
            decay,
        )


def copy_student_to_teacher(teacher: dict, student: dict) -> None:
    """Starts the teacher as an exact copy of the student: weights and batch-norm statistics."""

    def copied(network):
        return trainable_variables(network) + network["backbone"].non_trainable_weights

    for teacher_variable, student_variable in zip(copied(teacher), copied(student), strict=True):
        teacher_variable.assign(student_variable)
