"""The cheap augmentation ops give bit for bit the outputs of their straightforward versions.

`augment` moves pixels with gathers (docs in its module docstring); the functions below are the
previous implementation, kept as the reference: per-sample `tf.where` on a broadcast condition, a
transpose and reverses for the dihedral group, gathers along the width for the resampling. Patching
them into `augment` rebuilds the previous views, which must equal the current ones in every bit.
"""

import numpy as np
import pytest
import tensorflow as tf

from deepnoise_tf import augment


def _per_sample(values):
    return tf.reshape(values, [-1, 1, 1, 1])


def reference_apply_dihedral(images, element):
    batch_size = tf.shape(images)[0]
    element = tf.broadcast_to(tf.cast(element, tf.int32), [batch_size])
    if augment._is_square(images):
        transpose = tf.math.floormod(element // 4, 2) == 1
        images = tf.where(_per_sample(transpose), tf.transpose(images, [0, 2, 1, 3]), images)
    flip_vertical = tf.math.floormod(element // 2, 2) == 1
    images = tf.where(_per_sample(flip_vertical), tf.reverse(images, axis=[1]), images)
    flip_horizontal = tf.math.floormod(element, 2) == 1
    return tf.where(_per_sample(flip_horizontal), tf.reverse(images, axis=[2]), images)


def reference_interpolate_along(images, coordinates, axis):
    length = tf.shape(images)[axis]
    low = tf.floor(coordinates)
    fraction = coordinates - low
    low_index = tf.cast(low, tf.int32)
    high_index = low_index + 1

    def inside(index):
        return tf.cast((index >= 0) & (index < length), tf.float32)

    low_weight = (1.0 - fraction) * inside(low_index)
    high_weight = fraction * inside(high_index)
    low_values = tf.gather(
        images, tf.clip_by_value(low_index, 0, length - 1), axis=axis, batch_dims=1
    )
    high_values = tf.gather(
        images, tf.clip_by_value(high_index, 0, length - 1), axis=axis, batch_dims=1
    )
    weight_shape = (
        [tf.shape(coordinates)[0], -1, 1, 1] if axis == 1 else [tf.shape(coordinates)[0], 1, -1, 1]
    )
    resampled = low_values * tf.reshape(low_weight, weight_shape) + high_values * tf.reshape(
        high_weight, weight_shape
    )
    return resampled, low_weight + high_weight


def reference_select_samples(selected, chosen, others):
    return tf.where(_per_sample(selected), chosen, others)


@pytest.fixture
def reference_augment(monkeypatch):
    """`views(images, seed, signature)`: the views with the previous implementations patched into
    `augment` (restored after the test), eagerly or traced with `signature`."""

    def views(images, seed, signature=None):
        with monkeypatch.context() as patch:
            patch.setattr(augment, "apply_dihedral", reference_apply_dihedral)
            patch.setattr(augment, "_interpolate_along", reference_interpolate_along)
            patch.setattr(augment, "_select_samples", reference_select_samples)
            return {
                name: traced(view, signature)(images, seed).numpy()
                for name, view in augment.VIEWS.items()
            }

    return views


def traced(view, signature):
    return view if signature is None else tf.function(view, input_signature=signature)


def bits(array):
    """The float32 bit patterns, so that -0.0 != 0.0 and NaNs compare by payload."""
    return np.ascontiguousarray(array, np.float32).view(np.uint32)


@pytest.mark.parametrize("shape", [(12, 16, 16, 6), (5, 12, 20, 3), (3, 9, 9, 1)])
@pytest.mark.parametrize("seed", [[7, 11], [-3, 2**31 - 1], [0, 0]])
def test_views_are_bit_identical_to_the_reference(reference_augment, shape, seed):
    rng = np.random.default_rng(abs(seed[0]) + shape[0])
    images = rng.normal(size=shape).astype(np.float32)
    images.flat[::7] = -0.0  # signed zeros must survive as they did
    seed = tf.constant(seed, tf.int64)
    expected = reference_augment(images, seed)
    for name, view in augment.VIEWS.items():
        np.testing.assert_array_equal(bits(view(images, seed)), bits(expected[name]), err_msg=name)


def test_apply_dihedral_is_bit_identical_to_the_reference():
    images = np.random.default_rng(3).normal(size=(16, 8, 8, 2)).astype(np.float32)
    elements = tf.constant(np.arange(16) % 8)
    np.testing.assert_array_equal(
        bits(augment.apply_dihedral(images, elements)),
        bits(reference_apply_dihedral(images, elements)),
    )
    for element in range(8):  # a scalar element, as the test-time views use it
        np.testing.assert_array_equal(
            bits(augment.apply_dihedral(images, element)),
            bits(reference_apply_dihedral(images, element)),
        )


def test_views_in_a_graph_match_the_reference(reference_augment):
    """Traced (as in the train step) with an unknown batch size, the same bits as the reference
    traced alike (a traced view and an eager one already differed in the last bits)."""
    images = np.random.default_rng(5).normal(size=(6, 16, 16, 6)).astype(np.float32)
    seed = tf.constant([1, 2], tf.int64)
    signature = [tf.TensorSpec([None, 16, 16, 6], tf.float32), tf.TensorSpec([2], tf.int64)]
    expected = reference_augment(images, seed, signature)
    for name, view in augment.VIEWS.items():
        output = traced(view, signature)(images, seed)
        np.testing.assert_array_equal(bits(output), bits(expected[name]), err_msg=name)
