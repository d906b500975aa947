"""ArcFace and softmax heads against float64 numpy implementations of paper eq. 4 (method.md §5)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from deepnoise_tf import layers

SCALE = 30.0
MARGIN = 0.1


def reference_arcface(embeddings, kernel, labels=None, scale=SCALE, margin=MARGIN):
    """ArcFace logits in float64, written from paper eq. 4 and docs/method.md §5."""
    embeddings = np.asarray(embeddings, np.float64)
    kernel = np.asarray(kernel, np.float64)
    x = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    w = kernel / np.linalg.norm(kernel, axis=0, keepdims=True)
    cosine = x @ w
    logits = scale * cosine
    if labels is None:
        return logits
    for row, label in enumerate(labels):
        if label < 0:
            continue  # unlabelled: no margin
        c = cosine[row, label]
        if c > math.cos(math.pi - margin):
            s = math.sqrt(max(1.0 - c * c, 0.0))
            target = c * math.cos(margin) - s * math.sin(margin)
        else:
            target = c - math.sin(math.pi - margin) * margin
        logits[row, label] = scale * target
    return logits


def make_head(kernel, **kwargs):
    head = layers.ArcFace(kernel.shape[1], scale=SCALE, margin=MARGIN, **kwargs)
    head.build((None, kernel.shape[0]))
    head.kernel.assign(kernel.astype(head.kernel.dtype))
    return head


def embeddings_near_pi(kernel, labels, rng, noise=0.01):
    """Embeddings pointing almost opposite their target class weight (theta near pi)."""
    w = kernel / np.linalg.norm(kernel, axis=0, keepdims=True)
    return -w[:, labels].T + noise * rng.normal(size=(len(labels), kernel.shape[0]))


def test_arcface_matches_reference_on_random_inputs_with_unlabelled_and_near_pi_rows():
    rng = np.random.default_rng(0)
    dim, classes = 16, 11
    kernel = rng.normal(size=(dim, classes))
    labels = np.array([0, 3, -1, 10, 5, -1, 7, 2])
    embeddings = rng.normal(size=(len(labels), dim)) * rng.uniform(0.1, 10, size=(len(labels), 1))
    # Rows 6 and 7: target angle near pi, where the fallback applies.
    embeddings[6:] = embeddings_near_pi(kernel, labels[6:], rng)
    head = make_head(kernel)
    expected = reference_arcface(embeddings, kernel, labels)
    cos_targets = expected[[6, 7], labels[6:]] / SCALE
    assert np.all(cos_targets < -1.0), "rows 6-7 should use the fallback branch"

    with_margin = np.asarray(head(embeddings.astype("float32"), labels))
    np.testing.assert_allclose(with_margin, expected, atol=2e-4)
    without_margin = np.asarray(head(embeddings.astype("float32")))
    np.testing.assert_allclose(without_margin, reference_arcface(embeddings, kernel), atol=2e-4)
    # Only labelled target entries change when the labels are given.
    changed = ~np.isclose(with_margin, without_margin, atol=1e-6)
    expected_changed = np.zeros_like(changed)
    for row, label in enumerate(labels):
        if label >= 0:
            expected_changed[row, label] = True
    np.testing.assert_array_equal(changed, expected_changed)
    assert with_margin.dtype == np.float32


@pytest.mark.parametrize("angle", [0.0, 0.3, 1.0, 2.0, 2.9, 3.0, 3.05, 3.1, math.pi])
def test_arcface_target_logit_follows_angle_addition_and_fallback(angle):
    """In 2-D the angle is explicit: cos(theta + m) up to theta = pi - m, the fallback beyond."""
    kernel = np.array([[math.cos(angle), 1.0], [math.sin(angle), 0.0]])  # class 0 at `angle`
    head = make_head(kernel, dtype="float64")
    logits = np.asarray(head(np.array([[2.5, 0.0]]), np.array([0])))
    if angle <= math.pi - MARGIN:
        expected = SCALE * math.cos(angle + MARGIN)
    else:
        expected = SCALE * (math.cos(angle) - math.sin(MARGIN) * MARGIN)
    # atol: the sqrt clamp (1 - cos^2 >= 1e-12) shifts cos = 1 by sin(m) * 1e-6.
    np.testing.assert_allclose(logits[0, 0], expected, atol=1e-5)
    np.testing.assert_allclose(logits[0, 1], SCALE * 1.0, atol=1e-9)  # non-target: s*cos(0)


@pytest.mark.parametrize("margin", [0.0, 0.05, 0.3, tf.constant(0.05)])
def test_arcface_margin_argument_replaces_the_layer_margin(margin):
    """The trainer's margin warm-up: `head(x, labels, margin=m)` is the reference ArcFace with m."""
    rng = np.random.default_rng(3)
    kernel = rng.normal(size=(16, 7))
    labels = np.array([0, 6, -1, 2, 4])
    embeddings = rng.normal(size=(len(labels), 16))
    embeddings[4:] = embeddings_near_pi(kernel, labels[4:], rng, noise=0.02)  # fallback branch
    head = make_head(kernel)
    logits = np.asarray(head(embeddings.astype("float32"), labels, margin=margin))
    expected = reference_arcface(embeddings, kernel, labels, margin=float(margin))
    np.testing.assert_allclose(logits, expected, atol=2e-4)
    if float(margin) == 0.0:
        np.testing.assert_allclose(
            logits, np.asarray(head(embeddings.astype("float32"))), atol=1e-5
        )


def numerical_gradient(function, x, step=1e-6):
    gradient = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += step
        minus[index] -= step
        gradient[index] = (function(plus) - function(minus)) / (2 * step)
    return gradient


def test_arcface_gradients_match_finite_differences_in_both_branches():
    rng = np.random.default_rng(1)
    dim, classes = 5, 4
    kernel = rng.normal(size=(dim, classes))
    labels = np.array([1, 2, -1, 3])
    embeddings = rng.normal(size=(4, dim))
    embeddings[0] = embeddings_near_pi(kernel, labels[:1], rng, noise=0.02)[0]  # fallback branch
    cos = reference_arcface(embeddings, kernel) / SCALE
    assert cos[0, 1] < math.cos(math.pi - MARGIN) - 1e-4  # clearly in the fallback branch
    assert cos[1, 2] > math.cos(math.pi - MARGIN) + 1e-2  # clearly in the margin branch
    upstream = rng.normal(size=(4, classes))

    def objective(e, k):
        return float(np.sum(reference_arcface(e, k, labels) * upstream))

    head = make_head(kernel, dtype="float64")
    e_variable = tf.Variable(embeddings)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(head(e_variable, labels) * upstream)
    gradient_embeddings, gradient_kernel = tape.gradient(loss, [e_variable, head.kernel.value])
    np.testing.assert_allclose(
        gradient_embeddings.numpy(),
        numerical_gradient(lambda e: objective(e, kernel), embeddings),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        gradient_kernel.numpy(),
        numerical_gradient(lambda k: objective(embeddings, k), kernel),
        rtol=1e-5,
        atol=1e-6,
    )


def test_arcface_gradient_is_finite_when_embedding_equals_class_weight():
    """cos = 1 exactly puts sqrt(1 - cos^2) at 0; the clamp must keep gradients finite."""
    kernel = np.eye(3, dtype="float32")
    head = make_head(kernel)
    embeddings = tf.Variable(np.eye(3, dtype="float32")[:2] * 4.0)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(head(embeddings, np.array([0, 1])))
    gradients = tape.gradient(loss, [embeddings, head.kernel.value])
    assert all(np.all(np.isfinite(g.numpy())) for g in gradients)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_heads_stay_float32_under_mixed_precision(policy):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        rng = np.random.default_rng(2)
        half = "float16" if policy == "mixed_float16" else "bfloat16"
        embeddings = keras.ops.cast(rng.normal(size=(3, 8)), half)
        for head in (layers.ArcFace(5), layers.SoftmaxHead(5)):
            assert head.compute_dtype == "float32" and head.variable_dtype == "float32"
            assert keras.backend.standardize_dtype(
                head(embeddings, np.array([1, -1, 4])).dtype
            ) == ("float32")
            assert keras.backend.standardize_dtype(head(embeddings).dtype) == "float32"
            assert all(w.dtype == "float32" for w in head.weights)
    finally:
        keras.config.set_dtype_policy(previous)


def test_softmax_head_is_dropout_then_dense_and_ignores_labels():
    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(6, 8)).astype("float32")
    head = layers.SoftmaxHead(4, dropout=0.5)
    inference = np.asarray(head(embeddings, np.array([0, 1, 2, 3, -1, 0])))
    kernel, bias = (np.asarray(w, np.float64) for w in head.dense.weights)
    np.testing.assert_allclose(inference, embeddings @ kernel + bias, atol=1e-5)
    np.testing.assert_allclose(np.asarray(head(embeddings)), inference, atol=0)
    # Dropout at rate 0.5 zeroes features and doubles the rest during training.
    training = np.asarray(head(embeddings, training=True))
    assert not np.allclose(training, inference)
    no_dropout = layers.SoftmaxHead(4, dropout=0.0)
    no_dropout(embeddings)
    no_dropout.set_weights(head.get_weights())
    np.testing.assert_allclose(np.asarray(no_dropout(embeddings, training=True)), inference)


@pytest.mark.parametrize("head_class", [layers.ArcFace, layers.SoftmaxHead])
def test_heads_round_trip_through_config_and_keras_file(head_class, tmp_path):
    rng = np.random.default_rng(4)
    embeddings = rng.normal(size=(3, 8)).astype("float32")
    head = (
        head_class(5) if head_class is layers.SoftmaxHead else head_class(5, scale=16, margin=0.2)
    )
    clone = head_class.from_config(head.get_config())
    assert clone.get_config() == head.get_config()

    inputs = keras.Input((8,))
    model = keras.Model(inputs, head(inputs))
    path = tmp_path / "head.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_allclose(restored(embeddings), model(embeddings), atol=1e-6)
    assert restored.layers[-1].get_config() == head.get_config()
