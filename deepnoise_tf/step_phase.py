"""Which phase of the paper's training a span of steps lies in, and the callback that tells the model.

The paper trains on the margin loss alone first, then adds the consistency loss (Discussion).
`MeanTeacher`'s step skips the passes whose loss has weight 0; `fit` compiles that step once,
and a step that decides per step does so with `tf.cond`, which makes it slower on CPU
(`mean_teacher`'s module docstring). `StepPhase` therefore tells the model, before each epoch,
the phase all of the epoch's steps lie in, and the model's step is traced again for it.
"""

from __future__ import annotations

import keras

from deepnoise_tf import schedules

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
