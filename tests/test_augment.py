"""Augmentation ops against numpy references and TF's own image ops (docs/method.md §2-3)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from deepnoise_tf import augment

SEED = tf.constant([7, 11], tf.int32)


def random_images(batch=4, height=16, width=16, channels=3, seed=0, low=1.0, high=2.0):
    """Strictly positive images, so a 0 in the output marks fill or erasing."""
    rng = np.random.default_rng(seed)
    return rng.uniform(low, high, (batch, height, width, channels)).astype(np.float32)


def numpy_dihedral_variants(image):
    """The 8 elements of the dihedral group applied to one [H, W, C] image, via np.rot90."""
    variants = []
    for mirrored in (image, np.flip(image, axis=1)):
        for quarter_turns in range(4):
            variants.append(np.rot90(mirrored, quarter_turns, axes=(0, 1)))
    return variants


def matching_variant(sample, image):
    matches = [
        index
        for index, variant in enumerate(numpy_dihedral_variants(image))
        if np.array_equal(sample, variant)
    ]
    assert len(matches) == 1, "the output is not exactly one dihedral transform of its input"
    return matches[0]


def numpy_bilinear(image, rows, columns, fill=0.0):
    """Float64 bilinear sampling at (rows[i], columns[j]); neighbours outside the image = fill."""
    height, width, channels = image.shape
    output = np.zeros((len(rows), len(columns), channels))
    for i, y in enumerate(rows):
        for j, x in enumerate(columns):
            y0, x0 = math.floor(y), math.floor(x)
            for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                    inside = 0 <= yy < height and 0 <= xx < width
                    value = image[yy, xx].astype(np.float64) if inside else fill
                    output[i, j] += wy * wx * value
    return output


# --- normalize -------------------------------------------------------------------------------


def test_normalize_matches_numpy_and_guards_zero_std():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 5, 4, 6), dtype=np.uint8)
    mean = rng.uniform(10, 100, (3, 6)).astype(np.float32)
    std = rng.uniform(5, 50, (3, 6)).astype(np.float32)
    std[1, 2] = 0.0  # a constant channel
    expected = (images.astype(np.float64) - mean[:, None, None, :]) / np.where(std > 0, std, 1.0)[
        :, None, None, :
    ]
    output = augment.normalize(images, mean, std)
    assert output.dtype == tf.float32 and output.shape == images.shape
    np.testing.assert_allclose(output.numpy(), expected, rtol=1e-5, atol=1e-5)
    # A [C] mean/std is shared by every sample.
    shared = augment.normalize(images, mean[0], std[0])
    np.testing.assert_allclose(
        shared.numpy(), (images - mean[0]) / np.where(std[0] > 0, std[0], 1.0), rtol=1e-5
    )


def test_normalize_jitter_bounds_independence_and_determinism():
    batch, channels = 32, 6
    # Each channel holds exactly two raw values, so the jittered mean and std can be solved for.
    images = np.zeros((batch, 2, 1, channels), np.uint8)
    images[:, 0], images[:, 1] = 200, 40
    mean = np.full((batch, channels), 100.0, np.float32)
    std = np.full((batch, channels), 20.0, np.float32)
    output = augment.normalize(images, mean, std, jitter=0.1, seed=SEED).numpy().astype(np.float64)
    jittered_std = (200.0 - 40.0) / (output[:, 0, 0] - output[:, 1, 0])
    jittered_mean = 200.0 - output[:, 0, 0] * jittered_std
    std_factor, mean_factor = jittered_std / 20.0, jittered_mean / 100.0
    for factor in (std_factor, mean_factor):
        assert np.all(factor >= 0.9 - 1e-5) and np.all(factor <= 1.1 + 1e-5)
        assert factor.std() > 0.03  # U(-0.1, 0.1) has std 0.058: really drawn per sample/channel
        assert len(np.unique(np.round(factor, 6))) == batch * channels
    assert abs(np.corrcoef(std_factor.ravel(), mean_factor.ravel())[0, 1]) < 0.3
    again = augment.normalize(images, mean, std, jitter=0.1, seed=SEED).numpy()
    np.testing.assert_array_equal(again, output.astype(np.float32))
    other = augment.normalize(images, mean, std, jitter=0.1, seed=[7, 12]).numpy()
    assert not np.allclose(other, again)
    with pytest.raises(ValueError):
        augment.normalize(images, mean, std, jitter=0.1)


# --- dihedral --------------------------------------------------------------------------------


def test_apply_dihedral_elements_are_the_eight_numpy_transforms():
    image = random_images(batch=1, height=5, width=5, channels=2)[0]
    outputs = augment.test_time_views(image[None]).numpy()[:, 0]
    assert outputs.shape == (8, 5, 5, 2)
    found = {matching_variant(output, image) for output in outputs}
    assert found == set(range(8))
    np.testing.assert_array_equal(outputs[0], image)  # element 0 is the identity
    per_sample = augment.apply_dihedral(np.repeat(image[None], 8, axis=0), tf.range(8)).numpy()
    np.testing.assert_array_equal(per_sample, outputs)


def test_dihedral_draws_all_eight_per_sample():
    images = random_images(batch=16, height=6, width=6, channels=2)
    seen = set()
    for seed in range(6):
        output = augment.dihedral(images, [seed, 3]).numpy()
        elements = [matching_variant(output[b], images[b]) for b in range(len(images))]
        assert len(set(elements)) > 1  # samples draw independently
        seen.update(elements)
    assert seen == set(range(8))


def test_dihedral_non_square_uses_flips_only():
    images = random_images(batch=32, height=4, width=6, channels=1)
    output = augment.dihedral(images, SEED).numpy()
    assert output.shape == images.shape
    flips = set()
    for sample, image in zip(output, images, strict=True):
        variants = [image, image[::-1], image[:, ::-1], image[::-1, ::-1]]
        matches = [i for i, variant in enumerate(variants) if np.array_equal(sample, variant)]
        assert len(matches) == 1
        flips.add(matches[0])
    assert flips == {0, 1, 2, 3}
    assert augment.test_time_views(images).shape == (4, 32, 4, 6, 1)


# --- warps -----------------------------------------------------------------------------------


def test_scale_shift_warp_matches_image_projective_transform():
    rng = np.random.default_rng(2)
    images = random_images(batch=6, height=12, width=10)
    scale_y, scale_x = rng.uniform(0.7, 1.3, (2, 6)).astype(np.float32)
    shift_y, shift_x = rng.uniform(-3, 3, (2, 6)).astype(np.float32)
    centre_y, centre_x = (12 - 1) / 2, (10 - 1) / 2
    zeros = np.zeros(6, np.float32)
    # The inverse map (output -> input) that ImageProjectiveTransformV3 expects.
    transforms = np.stack(
        [
            1 / scale_x,
            zeros,
            centre_x - (centre_x + shift_x) / scale_x,
            zeros,
            1 / scale_y,
            centre_y - (centre_y + shift_y) / scale_y,
            zeros,
            zeros,
        ],
        axis=1,
    ).astype(np.float32)
    for fill in (0.0, 0.7):
        reference = tf.raw_ops.ImageProjectiveTransformV3(
            images=images,
            transforms=transforms,
            output_shape=[12, 10],
            fill_value=fill,
            interpolation="BILINEAR",
            fill_mode="CONSTANT",
        )
        output = augment.scale_shift_warp(images, scale_y, scale_x, shift_y, shift_x, fill=fill)
        np.testing.assert_allclose(output.numpy(), reference.numpy(), atol=1e-5)
    # And one sample against the float64 numpy reference.
    rows = centre_y + (np.arange(12) - shift_y[0] - centre_y) / scale_y[0]
    columns = centre_x + (np.arange(10) - shift_x[0] - centre_x) / scale_x[0]
    np.testing.assert_allclose(
        output.numpy()[0], numpy_bilinear(images[0], rows, columns, fill=0.7), atol=1e-5
    )


def test_integer_shift_is_np_roll_with_zero_fill():
    images = random_images(batch=2, height=9, width=8)
    output = augment.scale_shift_warp(images, 1.0, 1.0, [2.0, -3.0], [-1.0, 4.0]).numpy()
    for sample, image, (dy, dx) in zip(output, images, [(2, -1), (-3, 4)], strict=True):
        expected = np.roll(image, (dy, dx), axis=(0, 1))
        if dy > 0:
            expected[:dy] = 0
        else:
            expected[dy:] = 0
        if dx > 0:
            expected[:, :dx] = 0
        else:
            expected[:, dx:] = 0
        np.testing.assert_allclose(sample, expected, atol=1e-6)


def test_affine_warp_identity_cases():
    images = random_images(batch=8)
    zero_range = augment.affine_warp(images, SEED, probability=1.0, shift=0, scale=0, aspect=0)
    np.testing.assert_allclose(zero_range.numpy(), images, atol=1e-6)
    never = augment.affine_warp(images, SEED, probability=0.0)
    np.testing.assert_array_equal(never.numpy(), images)


def test_affine_warp_selects_about_half_and_keeps_others_exact():
    images = random_images(batch=64, height=12, width=12, channels=1)
    output = augment.affine_warp(images, SEED).numpy()
    unchanged = np.array([np.array_equal(a, b) for a, b in zip(output, images, strict=True)])
    assert 16 <= unchanged.sum() <= 48
    always = augment.affine_warp(images, SEED, probability=1.0).numpy()
    assert not any(np.array_equal(a, b) for a, b in zip(always, images, strict=True))


def centroid(image):
    rows, columns = np.indices(image.shape[:2])
    weights = image[..., 0].astype(np.float64)
    return (rows * weights).sum() / weights.sum(), (columns * weights).sum() / weights.sum()


def test_affine_warp_parameter_ranges():
    size, batch = 41, 48
    # A 2x2 blob centred on the image centre moves only by the shift: at most 10% of the side.
    centred = np.zeros((batch, size, size, 1), np.float32)
    centred[:, 19:21, 19:21] = 1.0
    shifted = augment.affine_warp(centred, SEED, probability=1.0, scale=0, aspect=0).numpy()
    offsets = np.array([np.subtract(centroid(image), (19.5, 19.5)) for image in shifted])
    assert np.all(np.abs(offsets) <= 0.1 * size + 1e-3)
    assert np.abs(offsets).max() > 0.05 * size  # the range is used, not a tiny shift
    # A blob 10 px off centre on both axes moves to centre + stretch * 10, stretch in
    # s * sqrt(a)^{+-1}, s and a in [0.9, 1.1].
    off_centre = np.zeros((batch, size, size, 1), np.float32)
    off_centre[:, 30, 30] = 1.0
    scaled = augment.affine_warp(off_centre, SEED, probability=1.0, shift=0).numpy()
    stretch = np.array([np.subtract(centroid(image), (20, 20)) / 10.0 for image in scaled])
    bound = 1.1 * math.sqrt(1.1) + 1e-3
    assert np.all(stretch <= bound) and np.all(stretch >= 0.9 * math.sqrt(0.9) - 1e-3)
    aspect = stretch[:, 1] / stretch[:, 0]
    assert np.all(aspect >= 0.9 - 1e-3) and np.all(aspect <= 1.1 + 1e-3)


# --- erasing ---------------------------------------------------------------------------------


def test_random_erasing_rectangles_within_bounds():
    height, width = 40, 32
    images = random_images(batch=64, height=height, width=width, channels=2)
    output = augment.random_erasing(images, SEED, probability=1.0).numpy()
    erased_count = 0
    for sample, image in zip(output, images, strict=True):
        erased = sample == 0.0
        np.testing.assert_array_equal(sample[~erased], image[~erased])  # the rest is untouched
        assert np.array_equal(erased[..., 0], erased[..., 1])  # all channels alike
        mask = erased[..., 0]
        if not mask.any():
            continue  # allowed only when no candidate shape fitted
        erased_count += 1
        rows, columns = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        rect_height, rect_width = len(rows), len(columns)
        # One solid rectangle.
        assert rows[-1] - rows[0] + 1 == rect_height and columns[-1] - columns[0] + 1 == rect_width
        assert mask.sum() == rect_height * rect_width
        # Sides are rounded: some real (h, w) within 0.5 px has area 2-40% and h/w in 0.3-3.3.
        area = height * width
        assert (rect_height - 0.5) * (rect_width - 0.5) <= 0.4 * area
        assert (rect_height + 0.5) * (rect_width + 0.5) >= 0.02 * area
        assert (rect_height - 0.5) / (rect_width + 0.5) <= 3.3
        assert (rect_height + 0.5) / (rect_width - 0.5) >= 0.3
    assert erased_count >= 56


def test_random_erasing_probability_and_fill():
    images = random_images(batch=64, height=16, width=16, channels=1)
    output = augment.random_erasing(images, SEED, fill=-5.0).numpy()
    erased = np.array([(sample == -5.0).any() for sample in output])
    assert 16 <= erased.sum() <= 48
    untouched = output[~erased]
    np.testing.assert_array_equal(untouched, images[~erased])
    never = augment.random_erasing(images, SEED, probability=0.0).numpy()
    np.testing.assert_array_equal(never, images)


# --- crops -----------------------------------------------------------------------------------


def test_crop_and_resize_matches_tf_image_and_numpy():
    rng = np.random.default_rng(3)
    images = random_images(batch=5, height=12, width=10)
    starts = rng.uniform(0, 0.3, (5, 2))
    ends = rng.uniform(0.6, 1.0, (5, 2))
    boxes = np.concatenate([starts, ends], axis=1).astype(np.float32)
    reference = tf.image.crop_and_resize(images, boxes, tf.range(5), [12, 10])
    output = augment.crop_and_resize(images, boxes)
    np.testing.assert_allclose(output.numpy(), reference.numpy(), atol=1e-5)
    # A known box: rows 2..8 and columns 1..7 of a 13 x 13 image, sampled every half pixel.
    image = random_images(batch=1, height=13, width=13)
    box = np.array([[2 / 12, 1 / 12, 8 / 12, 7 / 12]], np.float32)
    expected = numpy_bilinear(image[0], np.linspace(2, 8, 13), np.linspace(1, 7, 13))
    np.testing.assert_allclose(augment.crop_and_resize(image, box).numpy()[0], expected, atol=1e-5)
    full = augment.crop_and_resize(images, np.tile([[0.0, 0.0, 1.0, 1.0]], (5, 1)))
    np.testing.assert_allclose(full.numpy(), images, atol=1e-6)


def test_random_resized_crop_identity_and_stays_inside():
    images = random_images(batch=8)
    identity = augment.random_resized_crop(images, SEED, side=(1.0, 1.0))
    np.testing.assert_allclose(identity.numpy(), images, atol=1e-6)
    # Crops never reach outside the image: a constant image stays constant (no fill leaks in).
    constant = np.full((16, 16, 16, 2), 3.0, np.float32)
    np.testing.assert_allclose(augment.random_resized_crop(constant, SEED).numpy(), 3.0, atol=1e-5)
    # A linear ramp maps to a linear ramp whose span is the crop side: 0.80-0.99 of the image.
    ramp = np.tile(np.arange(16, dtype=np.float32)[None, :, None, None], (64, 1, 16, 1))
    cropped = augment.random_resized_crop(ramp, SEED).numpy()
    spans = (cropped[:, -1, 0, 0] - cropped[:, 0, 0, 0]) / 15.0
    assert np.all(spans >= 0.8 - 1e-4) and np.all(spans <= 0.99 + 1e-4)
    assert spans.max() - spans.min() > 0.05
    # Square crops: the same side along both axes.
    ramp_both = ramp + np.transpose(ramp, (0, 2, 1, 3))
    cropped_both = augment.random_resized_crop(ramp_both, SEED).numpy()
    side_rows = (cropped_both[:, -1, 0, 0] - cropped_both[:, 0, 0, 0]) / 15.0
    side_columns = (cropped_both[:, 0, -1, 0] - cropped_both[:, 0, 0, 0]) / 15.0
    np.testing.assert_allclose(side_rows, side_columns, atol=1e-4)


# --- views -----------------------------------------------------------------------------------


def test_views_shapes_determinism_and_nesting():
    images = random_images(batch=8, height=16, width=16, channels=6)
    easy = augment.easy_view(images, SEED).numpy()
    normal = augment.normal_view(images, SEED).numpy()
    hard = augment.hard_view(images, SEED).numpy()
    for view in (easy, normal, hard):
        assert view.shape == images.shape and view.dtype == np.float32
    np.testing.assert_array_equal(augment.hard_view(images, SEED).numpy(), hard)
    assert not np.allclose(augment.hard_view(images, [7, 12]).numpy(), hard)
    # With one seed, normal = easy with a rectangle erased (same slots), so they differ only by 0s.
    differs = normal != easy
    assert np.all(normal[differs] == 0.0)
    # Identical samples in a batch get different views.
    same = np.repeat(images[:1], 8, axis=0)
    views = augment.hard_view(same, SEED).numpy()
    assert len({view.tobytes() for view in views}) == 8


def test_views_compile_with_xla_and_match_eager():
    images = random_images(batch=4, height=16, width=16, channels=6)
    mean = np.full((4, 6), 1.5, np.float32)
    std = np.full((4, 6), 0.3, np.float32)

    def pipeline(raw, seed):
        normalized = augment.normalize(raw, mean, std, jitter=0.1, seed=seed)
        return (
            augment.easy_view(normalized, seed),
            augment.normal_view(normalized, seed),
            augment.hard_view(normalized, seed),
            augment.test_time_views(normalized),
        )

    compiled = tf.function(pipeline, jit_compile=True)
    # A negative and a large seed too: the seed is folded into the range where XLA and eager agree.
    for seed in ([7, 11], [-3, 2**31 - 1]):
        seed = tf.constant(seed, tf.int32)
        for jitted, eager in zip(compiled(images, seed), pipeline(images, seed), strict=True):
            np.testing.assert_allclose(jitted.numpy(), eager.numpy(), atol=1e-5)


def test_views_in_graph_with_unknown_batch_size():
    signature = [
        tf.TensorSpec([None, 16, 16, 3], tf.float32),
        tf.TensorSpec([2], tf.int64),
    ]
    graph = tf.function(augment.hard_view, input_signature=signature)
    concrete = graph.get_concrete_function()
    assert concrete.structured_outputs.shape.as_list() == [None, 16, 16, 3]
    images = random_images(batch=3)
    np.testing.assert_allclose(
        graph(images, tf.constant([7, 11], tf.int64)).numpy(),
        augment.hard_view(images, SEED).numpy(),
        atol=1e-6,
    )
