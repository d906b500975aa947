"""Per-example losses against float64 numpy versions of paper eqs. 4-5 (docs/method.md §5)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from deepnoise_tf import layers, losses


def reference_log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def reference_softmax(logits):
    return np.exp(reference_log_softmax(logits))


def reference_cross_entropy(labels, logits):
    log_probabilities = reference_log_softmax(logits)
    return np.array(
        [-log_probabilities[row, label] if label >= 0 else 0.0 for row, label in enumerate(labels)]
    )


def random_logits(rng, batch=7, classes=13, spread=5.0):
    return rng.normal(size=(batch, classes)) * spread


LABELS = np.array([3, -1, 0, 12, -1, 7, 5])


def test_labelled_mask():
    np.testing.assert_array_equal(
        np.asarray(losses.labelled_mask(LABELS)), (LABELS != -1).astype("float32")
    )
    assert np.asarray(losses.labelled_mask(LABELS)).dtype == np.float32


@pytest.mark.parametrize("function", [losses.classification_loss, losses.pseudo_label_loss])
def test_cross_entropies_match_reference_and_ignore_unlabelled(function):
    rng = np.random.default_rng(0)
    logits = random_logits(rng)
    values = np.asarray(function(LABELS, logits.astype("float32")))
    assert values.shape == (len(LABELS),) and values.dtype == np.float32
    np.testing.assert_allclose(
        values, reference_cross_entropy(LABELS, logits), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(values[LABELS == -1], 0.0)


def test_cross_entropy_is_stable_for_large_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 1000.0, 0.0]], "float32")
    values = np.asarray(losses.classification_loss(np.array([2, 1]), logits))
    np.testing.assert_allclose(values, [2000.0, 0.0], rtol=1e-6)


def test_cross_entropy_gradient_is_softmax_minus_one_hot_and_zero_when_unlabelled():
    rng = np.random.default_rng(1)
    logits = tf.Variable(random_logits(rng).astype("float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(losses.classification_loss(LABELS, logits))
    gradient = tape.gradient(loss, logits).numpy()
    expected = reference_softmax(logits.numpy())
    for row, label in enumerate(LABELS):
        if label >= 0:
            expected[row, label] -= 1.0
        else:
            expected[row] = 0.0
    np.testing.assert_allclose(gradient, expected, atol=1e-6)


def reference_consistency(student_logits, teacher_logits):
    return ((reference_softmax(student_logits) - reference_softmax(teacher_logits)) ** 2).mean(1)


def test_consistency_matches_reference_on_every_row():
    rng = np.random.default_rng(2)
    student, teacher = random_logits(rng), random_logits(rng)
    values = np.asarray(
        losses.consistency_loss(student.astype("float32"), teacher.astype("float32"))
    )
    assert values.shape == (7,) and values.dtype == np.float32
    np.testing.assert_allclose(
        values, reference_consistency(student, teacher), rtol=1e-5, atol=1e-9
    )
    # The batch mean of the vector is eq. 5's MSE over samples and classes.
    mse = np.mean((reference_softmax(student) - reference_softmax(teacher)) ** 2)
    np.testing.assert_allclose(values.mean(), mse, rtol=1e-5)
    assert np.asarray(losses.consistency_loss(student, student)) == pytest.approx(np.zeros(7))


def test_consistency_gradient_flows_to_student_only():
    rng = np.random.default_rng(3)
    student_values, teacher_values = random_logits(rng, 3, 4), random_logits(rng, 3, 4)
    student, teacher = tf.Variable(student_values), tf.Variable(teacher_values)
    with tf.GradientTape(persistent=True) as tape:
        loss = tf.reduce_sum(losses.consistency_loss(student, teacher))
    assert tape.gradient(loss, teacher) is None or np.all(tape.gradient(loss, teacher) == 0)
    step = 1e-6
    numerical = np.zeros_like(student_values)
    for index in np.ndindex(student_values.shape):
        plus, minus = student_values.copy(), student_values.copy()
        plus[index] += step
        minus[index] -= step
        numerical[index] = (
            reference_consistency(plus, teacher_values).sum()
            - reference_consistency(minus, teacher_values).sum()
        ) / (2 * step)
    # The loss is computed in float32, so compare at float32 precision.
    np.testing.assert_allclose(tape.gradient(loss, student).numpy(), numerical, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_losses_return_float32_for_half_precision_logits(dtype):
    rng = np.random.default_rng(4)
    logits = tf.cast(random_logits(rng, spread=1.0), dtype)
    for values in (
        losses.classification_loss(LABELS, logits),
        losses.pseudo_label_loss(LABELS, logits),
        losses.consistency_loss(logits, logits[::-1]),
    ):
        assert values.dtype == tf.float32 and values.shape == (7,)


def test_arcface_then_cross_entropy_is_paper_equation_4():
    """-log(e^{s cos(theta_y + m)} / (e^{s cos(theta_y + m)} + sum_{j != y} e^{s cos theta_j}))."""
    rng = np.random.default_rng(5)
    dim, classes, scale, margin = 6, 5, 30.0, 0.1
    kernel = rng.normal(size=(dim, classes))
    embeddings = rng.normal(size=(4, dim))
    labels = np.array([0, 4, -1, 2])
    head = layers.ArcFace(classes, scale=scale, margin=margin, dtype="float64")
    head.build((None, dim))
    head.kernel.assign(kernel)
    values = np.asarray(losses.classification_loss(labels, head(embeddings, labels)))

    x = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    w = kernel / np.linalg.norm(kernel, axis=0, keepdims=True)
    theta = np.arccos(np.clip(x @ w, -1, 1))
    for row, label in enumerate(labels):
        if label < 0:
            assert values[row] == 0.0
            continue
        assert theta[row, label] + margin < math.pi  # the margin branch, by construction of seed
        target = np.exp(scale * np.cos(theta[row, label] + margin))
        others = sum(np.exp(scale * np.cos(theta[row, j])) for j in range(classes) if j != label)
        np.testing.assert_allclose(values[row], -np.log(target / (target + others)), rtol=1e-5)
