"""The step specialised to a phase (`MeanTeacher.step_phase`) is the per-step step, minus its conds.

`fit` compiles the step once; `StepPhase` tells the model, before each epoch, whether all of the
epoch's steps lie before the consistency loss starts (labelled-only), after it (consistency), or
straddle it (None: the step decides per step with `tf.cond`). The specialised steps must give the
same losses and the same student, teacher and batch-norm updates as the per-step one, run only the
passes whose loss has weight, and refuse a phase that is wrong for the step.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_mean_teacher_views import build, counting_views, make_batch

from deepnoise_tf.mean_teacher import VIEW_NAMES
from deepnoise_tf.step_phase import (
    CONSISTENCY,
    LABELLED_ONLY,
    StepPhase,
    passes_to_run,
    phase_of_steps,
)

START = 3.0  # consistency start epoch; 10 steps per epoch (test_mean_teacher_views.build)


def counted_model(**kwargs):
    counts = {n: tf.Variable(0, trainable=False) for n in VIEW_NAMES}
    return build(counting_views(counts), consistency_start_epoch=START, **kwargs), counts


@pytest.mark.parametrize(
    "first, last, phase",
    [
        (0, 9, LABELLED_ONLY),
        (20, 29, LABELLED_ONLY),  # ends one step before the start (epoch 2.9)
        (29, 30, None),  # straddles it
        (25, 34, None),
        (30, 39, CONSISTENCY),  # the ramp-up's first epoch: w_c = 100 exp(-5) > 0
        (500, 509, CONSISTENCY),
    ],
)
def test_phase_of_steps_follows_the_consistency_start(first, last, phase):
    kwargs = dict(steps_per_epoch=10, consistency_weight=100.0, rampup_epochs=5.0)
    assert phase_of_steps(first, last, start_epoch=START, **kwargs) == phase


def test_phase_from_the_first_step_when_consistency_starts_at_once():
    kwargs = dict(steps_per_epoch=10, consistency_weight=100.0, rampup_epochs=5.0)
    assert phase_of_steps(0, 9, start_epoch=0.0, **kwargs) == CONSISTENCY


def test_without_a_teacher_there_is_no_phase():
    model, _ = counted_model()
    model.has_teacher = False
    assert model.specialise_step(0, 10) is False  # None already: nothing to trace again
    assert model.step_phase is None


# (phase, w_c, pseudo labels in the batch) -> (teacher pass, easy pass), by the rule: teacher while
# w_c > 0, easy while w_c > 0 or pseudo labels; known phase and no pseudo feature give Python bools.
@pytest.mark.parametrize(
    "phase, weight, pseudo, teacher, easy",
    [
        (CONSISTENCY, 5.0, False, True, True),
        (CONSISTENCY, 5.0, True, True, True),
        (LABELLED_ONLY, 0.0, False, False, False),
        (LABELLED_ONLY, 0.0, "tensor True", False, "tensor True"),
        (LABELLED_ONLY, 0.0, "tensor False", False, "tensor False"),
        (None, 0.0, False, "tensor False", "tensor False"),
        (None, 2.0, False, "tensor True", "tensor True"),
        (None, 0.0, "tensor True", "tensor False", "tensor True"),
    ],
)
def test_passes_to_run_by_hand(phase, weight, pseudo, teacher, easy):
    def as_input(value):
        return tf.constant(value == "tensor True") if isinstance(value, str) else value

    passes = passes_to_run(phase, tf.constant(weight), as_input(pseudo))
    for name, expected in (("teacher", teacher), ("easy", easy)):
        if isinstance(expected, str):  # decided per step: a boolean tensor
            assert tf.is_tensor(passes[name]), name
            assert bool(passes[name]) == (expected == "tensor True"), name
        else:  # decided when tracing: a Python bool
            assert passes[name] is expected, name


def test_specialise_step_reports_a_change():
    model, _ = counted_model()
    assert model.specialise_step(0, 10) is True and model.step_phase == LABELLED_ONLY
    assert model.specialise_step(10, 10) is False
    assert model.specialise_step(25, 10) is True and model.step_phase is None
    assert model.specialise_step(30, 10) is True and model.step_phase == CONSISTENCY


def run_step(model, iteration, batch):
    model.optimizer.build(model.student_variables)
    model.optimizer.iterations.assign(iteration)
    logs = model.train_on_batch(batch, return_dict=True)
    variables = [
        v.numpy()
        for v in model.student_variables
        + model.teacher_variables
        + model.teacher_backbone.non_trainable_weights
    ]
    return logs, variables


@pytest.mark.parametrize("iteration", [0, 30])
@pytest.mark.parametrize("pseudo", [False, True])
def test_specialised_step_equals_the_per_step_step(iteration, pseudo):
    """Same losses and the same updated weights (teacher's batch-norm statistics included)."""
    results, counts = {}, {}
    for specialised in (False, True):
        model, counts[specialised] = counted_model(batch_norm=True)
        model.copy_student_to_teacher()
        if specialised:
            assert model.specialise_step(iteration, 10)
        batch = make_batch(np.random.default_rng(5), pseudo)
        results[specialised] = run_step(model, iteration, batch)
    (logs, variables), (logs_specialised, variables_specialised) = results[False], results[True]
    assert logs.keys() == logs_specialised.keys()
    for name in logs:
        np.testing.assert_allclose(logs_specialised[name], logs[name], rtol=1e-6, err_msg=name)
    for got, want in zip(variables_specialised, variables, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    ran = [{n: int(c.numpy()) for n, c in counts[s].items()} for s in (False, True)]
    assert ran[0] == ran[1]
    assert ran[1]["hard"] == (iteration == 30)
    assert ran[1]["easy"] == (iteration == 30 or pseudo)


def test_without_a_pseudo_label_feature_the_labelled_only_step_has_no_easy_pass():
    model, counts = counted_model()
    model.specialise_step(0, 10)
    batch = make_batch(np.random.default_rng(6), pseudo=False)
    del batch["pseudo_label"]
    logs, _ = run_step(model, 0, batch)
    assert {n: int(c.numpy()) for n, c in counts.items()} == {"normal": 1, "easy": 0, "hard": 0}
    assert logs["consistency_loss"] == 0.0 and logs["pseudo_label_loss"] == 0.0


def test_a_labelled_only_step_refuses_a_step_with_consistency_weight():
    model, _ = counted_model()
    model.step_phase = LABELLED_ONLY  # wrong for iteration 30
    with pytest.raises(tf.errors.InvalidArgumentError, match="labelled-only phase"):
        run_step(model, 30, make_batch(np.random.default_rng(7)))


class PhaseLog(keras.callbacks.Callback):
    """Records the model's phase at each epoch's start, after `StepPhase` set it."""

    def __init__(self):
        super().__init__()
        self.phases = []

    def on_epoch_begin(self, epoch, logs=None):
        self.phases.append(self.model.step_phase)


def test_fit_specialises_each_epoch_and_runs_its_passes():
    """5 epochs of 4 steps, consistency from epoch 2.5: labelled-only, labelled-only, straddling,
    consistency, consistency; the teacher's pass runs on the steps from step 10 on only."""
    counts = {n: tf.Variable(0, trainable=False) for n in VIEW_NAMES}
    model = build(counting_views(counts), consistency_start_epoch=2.5)
    model.steps_per_epoch = 4
    batches = [make_batch(np.random.default_rng(i), pseudo=False) for i in range(20)]
    for batch in batches:
        del batch["pseudo_label"]
    dataset = tf.data.Dataset.from_tensor_slices(
        {k: np.stack([b[k] for b in batches]) for k in batches[0]}
    )
    log = PhaseLog()
    hard_before_epoch = []

    class HardCount(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            hard_before_epoch.append(int(counts["hard"].numpy()))

    callbacks = [StepPhase(), log, HardCount()]
    model.fit(dataset, epochs=5, steps_per_epoch=4, callbacks=callbacks, shuffle=False, verbose=0)
    assert log.phases == [LABELLED_ONLY, LABELLED_ONLY, None, CONSISTENCY, CONSISTENCY]
    # steps 0-9 labelled-only (epoch < 2.5), 10-19 with the teacher
    assert hard_before_epoch == [0, 0, 0, 2, 6]
    assert int(counts["hard"].numpy()) == 10
    assert int(counts["normal"].numpy()) == 20
