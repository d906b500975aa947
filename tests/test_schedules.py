"""Schedules against hand-computed values and float64 numpy references (docs/method.md §5-7)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from deepnoise_tf import schedules


def numpy_rampup(epoch, length):
    if length == 0:
        return 1.0
    t = min(max(epoch, 0.0), length) / length
    return math.exp(-5.0 * (1.0 - t) ** 2)


@pytest.mark.parametrize(
    "epoch, length, expected",
    [
        (0, 5, math.exp(-5.0)),
        (2.5, 5, math.exp(-1.25)),
        (4, 5, math.exp(-0.2)),
        (5, 5, 1.0),
        (7, 5, 1.0),
        (-3, 5, math.exp(-5.0)),
        (0, 0, 1.0),
        (3, 0, 1.0),
    ],
)
def test_sigmoid_rampup_hand_values(epoch, length, expected):
    np.testing.assert_allclose(float(schedules.sigmoid_rampup(epoch, length)), expected, rtol=1e-6)


def test_sigmoid_rampup_vectorised_and_in_graph():
    epochs = np.linspace(-1.0, 8.0, 37)
    expected = [numpy_rampup(epoch, 5) for epoch in epochs]
    np.testing.assert_allclose(schedules.sigmoid_rampup(epochs, 5).numpy(), expected, rtol=1e-6)
    graph = tf.function(schedules.sigmoid_rampup)
    np.testing.assert_allclose(
        graph(tf.constant(1.5), tf.constant(5.0)).numpy(), numpy_rampup(1.5, 5), rtol=1e-6
    )
    np.testing.assert_allclose(graph(tf.constant(1.5), tf.constant(0.0)).numpy(), 1.0)


@pytest.mark.parametrize(
    "epoch, length, expected",
    [
        (0, 16, 0.0),
        (4, 16, 0.25),
        (12.8, 16, 0.8),
        (16, 16, 1.0),
        (30, 16, 1.0),
        (-2, 16, 0.0),
        (5, 0, 1.0),
    ],
)
def test_linear_rampup_hand_values(epoch, length, expected):
    np.testing.assert_allclose(float(schedules.linear_rampup(epoch, length)), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "epoch, start, expected",
    [(0, 16, 0.0), (15.9, 16, 0.0), (16, 16, 100.0 * math.exp(-5.0)),
     (17, 16, 100.0 * math.exp(-5.0 * 0.5**2)), (18, 16, 100.0), (40, 16, 100.0), (0, 0, 100.0 * math.exp(-5.0))],
)  # fmt: skip
def test_consistency_weight_is_zero_before_the_start_then_ramps(epoch, start, expected):
    weight = schedules.consistency_weight(
        epoch, max_weight=100.0, rampup_epochs=2, start_epoch=start
    )
    np.testing.assert_allclose(float(weight), expected, rtol=1e-6)


def test_consistency_weight():
    np.testing.assert_allclose(
        float(schedules.consistency_weight(0)), 100.0 * math.exp(-5.0), rtol=1e-6
    )
    np.testing.assert_allclose(float(schedules.consistency_weight(10)), 100.0, rtol=1e-6)
    np.testing.assert_allclose(
        float(schedules.consistency_weight(1, max_weight=2.0, rampup_epochs=4)),
        2.0 * math.exp(-5.0 * 0.75**2),
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    "step, epoch, expected",
    [
        (0, 0, 0.0),  # first update copies the student
        (1, 0, 0.5),  # min(0.5, 0.5)
        (500, 0, 0.5),  # epoch 1: 0.5
        (500, 1, 0.9),  # epoch 2
        (500, 9, 0.9),  # epoch 10
        (500, 9.9, 0.9),  # still epoch 10
        (500, 10, 0.99),  # epoch 11
        (500, 19, 0.99),  # epoch 20
        (5000, 20, 0.999),  # epoch 21
        (5, 30, 1.0 - 1.0 / 6.0),  # the running-average term is smaller
        (9, 10, 0.9),  # 1 - 1/10 = 0.9 < 0.99
    ],
)
def test_ema_decay_hand_values(step, epoch, expected):
    np.testing.assert_allclose(float(schedules.ema_decay(step, epoch)), expected, rtol=1e-6)


def test_ema_decay_custom_thresholds_and_graph():
    decay = schedules.ema_decay(
        tf.constant(1000, tf.int64), 2, last_epochs=(2, 4), decays=(0.1, 0.2), final_decay=0.3
    )
    np.testing.assert_allclose(float(decay), 0.2, rtol=1e-6)  # epoch number 3
    graph = tf.function(schedules.ema_decay)
    np.testing.assert_allclose(float(graph(tf.constant(10**6), tf.constant(50.0))), 0.999)
    with pytest.raises(ValueError):
        schedules.ema_decay(1, 1, last_epochs=(1, 2), decays=(0.5,))


def test_piecewise_epoch_lr_boundaries():
    schedule = schedules.PiecewiseEpochLR(steps_per_epoch=10)
    steps = np.arange(0, 1700)
    expected = np.where(steps < 1000, 3e-4, np.where(steps < 1400, 1e-4, 1e-5))
    np.testing.assert_allclose(schedule(steps).numpy(), expected, rtol=1e-6)
    graph = tf.function(schedule)
    for step, value in [(999, 3e-4), (1000, 1e-4), (1399, 1e-4), (1400, 1e-5)]:
        np.testing.assert_allclose(float(graph(tf.constant(step, tf.int64))), value, rtol=1e-6)


def test_piecewise_epoch_lr_config_round_trip_and_optimizer():
    schedule = schedules.PiecewiseEpochLR(7, boundaries=(2, 5), values=(1.0, 0.5, 0.25))
    restored = schedules.PiecewiseEpochLR.from_config(schedule.get_config())
    by_name = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    steps = np.arange(50)
    for other in (restored, by_name):
        assert isinstance(other, schedules.PiecewiseEpochLR)
        np.testing.assert_array_equal(other(steps).numpy(), schedule(steps).numpy())
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=2e-4)
    optimizer.build([keras.Variable(np.zeros(2, np.float32))])
    optimizer.iterations.assign(14)  # epoch index 2
    np.testing.assert_allclose(float(optimizer.learning_rate), 0.5)
    with pytest.raises(ValueError):
        schedules.PiecewiseEpochLR(10, boundaries=(1,), values=(1.0,))


def numpy_cosine_restarts(steps, steps_per_epoch, scale):
    """Float64 reference (docs/method.md §7): 4 x 40r-epoch cosine cycles 0.1 -> 1e-3, then 1e-4."""
    cycle_steps = round(40 * scale * steps_per_epoch)
    cycle, position = np.divmod(steps, cycle_steps)
    annealed = 1e-3 + (0.1 - 1e-3) * 0.5 * (1 + np.cos(np.pi * position / cycle_steps))
    return np.where(cycle < 4, annealed, 1e-4)


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
def test_cosine_restarts_against_numpy(scale):
    steps_per_epoch = 3
    schedule = schedules.CosineRestartsLR(steps_per_epoch, scale)
    assert schedule.total_epochs == pytest.approx(160 * scale + 5)
    steps = np.arange(int(schedule.total_epochs * steps_per_epoch) + 10)
    np.testing.assert_allclose(
        schedule(steps).numpy(),
        numpy_cosine_restarts(steps, steps_per_epoch, scale),
        rtol=1e-5,
        atol=1e-8,
    )


def test_cosine_restarts_hand_values():
    schedule = schedules.CosineRestartsLR(steps_per_epoch=10, epoch_scale=0.25)  # 100-step cycles
    cases = {
        0: 0.1,
        50: (0.1 + 1e-3) / 2,  # half way down the first cycle
        100: 0.1,  # restart
        250: (0.1 + 1e-3) / 2,
        399: 1e-3 + 0.099 * 0.5 * (1 + math.cos(math.pi * 0.99)),
        400: 1e-4,  # the 5-epoch tail
        449: 1e-4,
    }
    for step, expected in cases.items():
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5)
    restored = keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(schedule)
    )
    assert restored.get_config() == schedule.get_config()
    np.testing.assert_allclose(
        float(tf.function(restored)(tf.constant(250, tf.int64))), 0.0505, rtol=1e-6
    )
