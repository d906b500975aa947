"""Which phase of the paper's training a span of steps lies in, the callback that tells the model,
and which passes a step of that phase runs.

The paper trains on the margin loss alone first, then adds the consistency loss (Discussion).
`MeanTeacher`'s step skips the passes whose loss has weight 0; `fit` compiles that step once,
and a step that decides per step does so with `tf.cond`, which makes it slower on CPU
(`mean_teacher`'s module docstring). `StepPhase` therefore tells the model, before each epoch,
the phase all of the epoch's steps lie in, and the model's step is traced again for it.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from deepnoise_tf import keras_compat, schedules

# `MeanTeacher.step_phase`: the phase its compiled step is specialised to (None: per step).
LABELLED_ONLY, CONSISTENCY = "labelled_only", "consistency"


def phase_of_steps(
    first_step: int,
    last_step: int,
    *,
    steps_per_epoch: int,
    consistency_weight: float,
    rampup_epochs: float,
    start_epoch: float,
) -> str | None:
    """`CONSISTENCY` or `LABELLED_ONLY` if optimizer steps first..last all lie in that phase, else
    None. The consistency weight (`schedules.consistency_weight`, of the step's fractional epoch)
    is 0 before its start epoch and positive from it on (its ramp-up never reaches 0), so the two
    ends decide."""
    weights = [
        float(
            schedules.consistency_weight(
                step / steps_per_epoch, consistency_weight, rampup_epochs, start_epoch
            )
        )
        for step in (first_step, last_step)
    ]
    if weights[0] > 0:
        return CONSISTENCY
    if weights[1] == 0:
        return LABELLED_ONLY
    return None


def run_if(condition, compute, skipped):
    """`compute()` where `condition` holds, else `skipped()`; a Python bool decides when tracing."""
    if isinstance(condition, bool):
        return compute() if condition else skipped()
    return tf.cond(condition, compute, skipped)


def passes_to_run(step_phase: str | None, weight, pseudo) -> dict:
    """Whether the step's teacher pass and the student's easy-view pass run: `{"teacher", "easy"}`.

    Teacher: while the consistency weight `weight` (w_c, eq. 5) is > 0; easy view: while w_c > 0
    or the batch has pseudo labels (`pseudo`; global conditions, equal on every replica). Each is
    a Python bool where it is known when tracing (`step_phase` set, `pseudo` False for a batch
    without a `pseudo_label` feature), else a tensor for `tf.cond`. Where a `tf.cond` branch cannot
    hold synchronized batch norm (`keras_compat.cond_may_all_reduce`: MirroredStrategy outside XLA
    on GPUs) a tensor condition becomes True: same losses, more moving-statistics updates.
    """
    if step_phase == CONSISTENCY:
        teacher = True
    elif step_phase == LABELLED_ONLY:
        # A wrong phase would drop the consistency loss silently: fail instead.
        tf.debugging.assert_equal(
            weight, 0.0, message="a step specialised to the labelled-only phase has w_c > 0"
        )
        teacher = False
    else:
        teacher = weight > 0
    if isinstance(teacher, bool):
        easy = True if teacher else pseudo
    else:
        easy = teacher if pseudo is False else tf.logical_or(teacher, pseudo)
    if not keras_compat.cond_may_all_reduce():
        teacher, easy = (c if isinstance(c, bool) else True for c in (teacher, easy))
    return {"teacher": teacher, "easy": easy}


class StepPhase(keras.callbacks.Callback):
    """Before each epoch, specialises the model's compiled step to the epoch's phase.

    At an epoch whose phase differs from the step's (the first epoch, the start of the consistency
    loss, the epoch that straddles it), `MeanTeacher.specialise_step` picks the passes and the
    step is traced again, so a run of the paper's schedule traces it two or three times. The phase
    follows the optimizer's step counter, so a resumed run picks the phase of the epoch it
    resumes at.
    """

    def on_epoch_begin(self, epoch, logs=None):
        model = self.model
        first_step = int(model.optimizer.iterations.numpy())
        if model.specialise_step(first_step, model.steps_per_epoch):
            model.make_train_function(force=True)
