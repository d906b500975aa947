"""teacher_ema against the average written out in numpy, one case per batch-norm statistics policy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deepnoise_tf import teacher_ema


def _network(seed):
    """A backbone with batch norm (so moving statistics) and a head, all weights drawn from `seed`."""
    inputs = keras.Input((3,))
    outputs = keras.layers.BatchNormalization()(keras.layers.Dense(4)(inputs))
    network = {"backbone": keras.Model(inputs, outputs), "head": keras.layers.Dense(2)}
    network["head"].build((None, 4))
    rng = np.random.default_rng(seed)
    for variable in network["backbone"].weights + network["head"].weights:
        variable.assign(rng.normal(size=variable.shape).astype("float32") + 2.0)
    return network


def _values(variables):
    return [variable.numpy().copy() for variable in variables]


# (statistics, teacher_ran, whether the teacher's moving statistics move towards the student's)
CASES = [
    ("batch", True, False),  # the teacher ran its own pass: its statistics are its own
    ("batch", False, True),  # no teacher pass (labelled-only epochs): follow the student's
    ("batch", tf.constant(True), False),
    ("batch", tf.constant(False), True),
    ("ema", True, True),
    ("ema", False, True),
]


@pytest.mark.parametrize("statistics, teacher_ran, follows", CASES)
def test_update_teacher_is_the_moving_average_by_hand(statistics, teacher_ran, follows):
    teacher, student = _network(0), _network(1)
    decay = 0.9
    trainable = [_values(teacher_ema.trainable_variables(n)) for n in (teacher, student)]
    moving = [_values(n["backbone"].non_trainable_weights) for n in (teacher, student)]
    assert moving[0], "the backbone has batch-norm statistics to check"

    teacher_ema.update_teacher(
        teacher, student, tf.constant(decay), statistics=statistics, teacher_ran=teacher_ran
    )

    for variable, before, target in zip(
        teacher_ema.trainable_variables(teacher), *trainable, strict=True
    ):
        np.testing.assert_allclose(variable.numpy(), decay * before + (1 - decay) * target, 1e-6)
    for variable, before, target in zip(
        teacher["backbone"].non_trainable_weights, *moving, strict=True
    ):
        expected = decay * before + (1 - decay) * target if follows else before
        np.testing.assert_allclose(variable.numpy(), expected, 1e-6)
        if not follows:
            np.testing.assert_array_equal(variable.numpy(), before)  # exactly its own
    for variable, before in zip(
        teacher_ema.trainable_variables(student), trainable[1], strict=True
    ):
        np.testing.assert_array_equal(variable.numpy(), before)  # the student is read only


def test_copy_makes_the_teacher_equal_to_the_student():
    teacher, student = _network(0), _network(1)
    teacher_ema.copy_student_to_teacher(teacher, student)
    for role_variables in (teacher_ema.trainable_variables, lambda n: n["backbone"].weights):
        for t, s in zip(role_variables(teacher), role_variables(student), strict=True):
            np.testing.assert_array_equal(t.numpy(), s.numpy())
