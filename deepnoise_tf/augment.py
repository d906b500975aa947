"""Batched, stateless, in-graph image normalization and augmentation (docs/method.md §2-3).

Every op takes a whole batch `[B, H, W, C]` and runs inside the training step on the accelerator, so
the host only ships uint8 pixels. Randomness is stateless: each random op takes an explicit `seed`
(an int32/int64 tensor of shape [2]), derives sub-seeds with `tf.random.experimental.stateless_split`,
and draws one set of parameters per sample. The same seed gives the same output; under a
distribution strategy the caller folds the replica id into the seed so replicas draw differently.

Geometric resampling is written as two separable bilinear gathers (one along the rows, one along
the columns) instead of `ImageProjectiveTransformV3` / `tf.image.crop_and_resize`, because neither of
those ops has an XLA kernel (checked with TF 2.21 on CPU), and every warp we need (shift, scale,
aspect, crop) is axis aligned. The tests check both against those ops as references.

Every op here only moves pixels or does the same float arithmetic as before, so the outputs are bit
for bit those of the straightforward version (tests/test_augment_reference.py keeps it); what makes
them cheap on CPU: a per-sample choice between two batches is a gather of whole samples, and
per-pixel moves (dihedral elements, the column pass of a resampling) are one gather over the
flattened pixels; a `[B, 1, 1, 1]`-broadcast `tf.where`, a transpose or a gather along the width are
each 2-8x slower (TF 2.21, 2 CPU cores, 32 x 64 x 64 x 6).
"""

import dataclasses
import math

import tensorflow as tf

# A per-channel std at or below this is treated as 1 (a constant channel, e.g. an empty synthetic
# plate): dividing by ~0 would blow the image up instead of just centring it.
STD_EPSILON = 1e-6

# The dihedral group of the square has 8 elements (4 rotations x optional mirror).
NUM_DIHEDRAL_ELEMENTS = 8


@dataclasses.dataclass(frozen=True)
class ViewParameters:
    """Hyperparameters of the three training views; the defaults are docs/method.md §3.

    Attributes:
      warp_probability: chance per sample of the shift/scale/aspect warp.
      warp_shift: maximum shift as a fraction of the image side.
      warp_scale: scale drawn from 1 +- this.
      warp_aspect: aspect ratio (x stretch / y stretch) drawn from 1 +- this.
      erase_probability: chance per sample of random erasing.
      erase_area: range of the erased fraction of the image area.
      erase_aspect: range of the erased rectangle's height / width (drawn log-uniformly).
      erase_fill: value written into the erased rectangle.
      crop_side: range of the crop side as a fraction of the image side (hard view).
    """

    warp_probability: float = 0.5
    warp_shift: float = 0.1
    warp_scale: float = 0.1
    warp_aspect: float = 0.1
    erase_probability: float = 0.5
    erase_area: tuple[float, float] = (0.02, 0.4)
    erase_aspect: tuple[float, float] = (0.3, 3.3)
    erase_fill: float = 0.0
    crop_side: tuple[float, float] = (0.80, 0.99)


def _as_seed(seed):
    """A [2] int64 seed with both words in [0, 2**31).

    TF 2.21's stateless kernels agree between eager and XLA only for seed words in that range, so
    the words are folded into it (a deterministic mix that keeps the high bits' influence).
    """
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    seed.shape.assert_is_compatible_with([2])
    mixed = tf.bitwise.bitwise_xor(seed, tf.bitwise.right_shift(seed, 31))
    mixed = tf.bitwise.bitwise_xor(mixed, tf.bitwise.right_shift(seed, 62))
    return tf.bitwise.bitwise_and(mixed, 0x7FFFFFFF)


def _split_seed(seed, count):
    """`count` independent sub-seeds of `seed`."""
    seeds = tf.random.experimental.stateless_split(_as_seed(seed), num=count)
    return [_as_seed(sub_seed) for sub_seed in tf.unstack(seeds)]


def _uniform(shape, seed, minval=0.0, maxval=1.0):
    """Stateless U[minval, maxval) float32 that is bit-identical eagerly and under XLA.

    `tf.random.stateless_uniform` for floats gives different numbers under jit_compile than
    eagerly (TF 2.21), while its full-range integers agree; so build floats from the top 24 bits.
    """
    bits = tf.random.stateless_uniform(
        shape, _as_seed(seed), minval=None, maxval=None, dtype=tf.uint32
    )
    unit = tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (2.0**-24)
    return minval + (maxval - minval) * unit


def _spatial_size(images):
    """(height, width) as Python ints when static, else scalar tensors."""
    height, width = images.shape[1], images.shape[2]
    dynamic = tf.shape(images)
    return (
        height if height is not None else dynamic[1],
        width if width is not None else dynamic[2],
    )


def _select_samples(selected, chosen, others):
    """Per sample b: `chosen[b]` where `selected[b]`, else `others[b]` (a copy, bit for bit).

    A gather of whole samples: a `tf.where` on a [B, 1, 1, 1] condition broadcast over the images
    is ~5x slower on CPU.
    """
    batch_size = tf.shape(chosen)[0]
    rows = tf.range(batch_size)
    source = tf.where(selected, rows, rows + batch_size)
    return tf.gather(tf.concat([chosen, others], axis=0), source)


def _gather_pixels(images, source, height, width):
    """`output[b, p] = images[b, source[b, p]]` over flattened pixels: [B, height, width, C].

    `source` is [B, height * width] (or [B, height, width]) of flat indices into H * W; one gather
    of whole pixels (C values each), much cheaper than a gather along the width axis.
    """
    batch_size, channels = tf.shape(images)[0], tf.shape(images)[3]
    flat = tf.reshape(images, [batch_size, -1, channels])
    source = tf.reshape(source, [batch_size, -1])
    return tf.reshape(tf.gather(flat, source, batch_dims=1), [batch_size, height, width, channels])


def normalize(images, mean, std, *, jitter=0.0, seed=None, epsilon=STD_EPSILON):
    """Per-sample, per-channel `(x - mean) / std` (paper eqs. 1-3), with optional training jitter.

    Args:
      images: [B, H, W, C] raw pixels (uint8 or float).
      mean, std: float32 [B, C] statistics of each image's normalization group (a [C] vector is
        broadcast to every sample).
      jitter: with jitter > 0, mean and std are each multiplied by 1 + U(-jitter, jitter), drawn
        independently per sample and channel (training uses 0.1, docs/method.md §2).
      seed: [2] int seed; required when jitter is not 0.
      epsilon: a (jittered) std <= epsilon is replaced by 1 so constant channels stay finite.

    Returns:
      float32 [B, H, W, C].
    """
    images = tf.cast(images, tf.float32)
    batch_size = tf.shape(images)[0]
    num_channels = tf.shape(images)[3]
    mean = tf.broadcast_to(tf.cast(mean, tf.float32), [batch_size, num_channels])
    std = tf.broadcast_to(tf.cast(std, tf.float32), [batch_size, num_channels])
    if not (isinstance(jitter, (int, float)) and jitter == 0):
        if seed is None:
            raise ValueError("normalize: a seed is required when jitter is not 0")
        jitter = tf.cast(jitter, tf.float32)
        mean_seed, std_seed = _split_seed(seed, 2)
        shape = [batch_size, num_channels]
        mean = mean * (1.0 + _uniform(shape, mean_seed, -jitter, jitter))
        std = std * (1.0 + _uniform(shape, std_seed, -jitter, jitter))
    std = tf.where(std > epsilon, std, tf.ones_like(std))
    return (images - mean[:, None, None, :]) / std[:, None, None, :]


def _is_square(images):
    height, width = images.shape[1], images.shape[2]
    return height is not None and height == width


def apply_dihedral(images, element):
    """Apply dihedral element(s) `element` (int, [] or [B], values in 0..7) to each sample.

    Element e = 4*t + 2*v + h means: transpose (swap H and W) if t, then flip vertically (reverse
    rows) if v, then flip horizontally (reverse columns) if h. The 8 combinations are exactly the
    4 rotations by 90 degrees and their mirror images; element 0 is the identity. The transpose
    needs statically square images: for non-square images bit t is ignored (only the 4 flips).
    Done as one gather: output pixel (i, j) reads input pixel (i', j') with i' = H-1-i if v else
    i and j' = W-1-j if h else j, transposed to (j', i') if t.
    """
    height, width = _spatial_size(images)
    batch_size = tf.shape(images)[0]
    element = tf.broadcast_to(tf.cast(element, tf.int32), [batch_size])[:, None, None]
    rows = tf.range(height)[None, :, None]
    columns = tf.range(width)[None, None, :]
    source_row = tf.where(tf.math.floormod(element // 2, 2) == 1, height - 1 - rows, rows)
    source_column = tf.where(tf.math.floormod(element, 2) == 1, width - 1 - columns, columns)
    source = source_row * width + source_column
    if _is_square(images):
        transposed = source_column * width + source_row
        source = tf.where(tf.math.floormod(element // 4, 2) == 1, transposed, source)
    return _gather_pixels(images, source, height, width)


def dihedral(images, seed):
    """One of the 8 flips/rot90 per sample, uniformly (only the 4 flips if H != W or unknown)."""
    count = NUM_DIHEDRAL_ELEMENTS if _is_square(images) else 4
    draws = _uniform([tf.shape(images)[0]], _as_seed(seed))
    element = tf.minimum(tf.cast(draws * count, tf.int32), count - 1)
    return apply_dihedral(images, element)


def test_time_views(images):
    """All dihedral variants stacked: [8, B, H, W, C] in element order 0..7 (4 if not square)."""
    count = NUM_DIHEDRAL_ELEMENTS if _is_square(images) else 4
    return tf.stack([apply_dihedral(images, element) for element in range(count)])


# Tell pytest this is not a test even when a test module imports it by name.
test_time_views.__test__ = False


def _interpolate_along(images, coordinates, axis):
    """Linear interpolation of `images` at per-sample `coordinates` [B, N] along `axis` (1 or 2).

    Coordinates are in pixel units with pixel centres at integers. Neighbours outside the image
    contribute 0, which is how bilinear resampling with a constant fill of 0 behaves.
    Returns (resampled, coverage) where coverage [B, N] is the weight that fell inside the image.
    """
    length = tf.shape(images)[axis]
    low = tf.floor(coordinates)
    fraction = coordinates - low
    low_index = tf.cast(low, tf.int32)
    high_index = low_index + 1

    def inside(index):
        return tf.cast((index >= 0) & (index < length), tf.float32)

    def neighbours(index):
        index = tf.clip_by_value(index, 0, length - 1)
        if axis == 1:
            return tf.gather(images, index, axis=1, batch_dims=1)
        height, width = _spatial_size(images)  # axis 2: one gather of whole pixels
        source = tf.range(height)[None, :, None] * width + index[:, None, :]
        outputs = coordinates.shape[1] or tf.shape(coordinates)[1]
        return _gather_pixels(images, source, height, outputs)

    low_weight = (1.0 - fraction) * inside(low_index)
    high_weight = fraction * inside(high_index)
    weight_shape = (
        [tf.shape(coordinates)[0], -1, 1, 1] if axis == 1 else [tf.shape(coordinates)[0], 1, -1, 1]
    )
    resampled = neighbours(low_index) * tf.reshape(low_weight, weight_shape) + neighbours(
        high_index
    ) * tf.reshape(high_weight, weight_shape)
    return resampled, low_weight + high_weight


def resample_separable(images, row_coordinates, column_coordinates, *, fill=0.0):
    """Bilinear sampling of each sample on the grid row_coordinates x column_coordinates.

    Args:
      images: [B, H, W, C] float.
      row_coordinates: [B, H_out] input row (y) of each output row, pixel centres at integers.
      column_coordinates: [B, W_out] input column (x) of each output column.
      fill: value for the part of an output pixel's bilinear footprint that falls outside the
        input, blended exactly like ImageProjectiveTransformV3 with fill_mode="CONSTANT".

    Returns:
      [B, H_out, W_out, C] float32.
    """
    images = tf.cast(images, tf.float32)
    row_coordinates = tf.cast(row_coordinates, tf.float32)
    column_coordinates = tf.cast(column_coordinates, tf.float32)
    rows, row_coverage = _interpolate_along(images, row_coordinates, axis=1)
    output, column_coverage = _interpolate_along(rows, column_coordinates, axis=2)
    if isinstance(fill, (int, float)) and fill == 0:
        return output
    coverage = row_coverage[:, :, None, None] * column_coverage[:, None, :, None]
    return output + tf.cast(fill, tf.float32) * (1.0 - coverage)


def scale_shift_warp(images, scale_y, scale_x, shift_y, shift_x, *, fill=0.0):
    """Per-sample axis-aligned warp: scale about the image centre, then shift (in pixels).

    The input pixel at p moves to centre + scale * (p - centre) + shift; the output is sampled
    bilinearly with `fill` outside the input. scale_*, shift_*: float [B] (or scalars).
    """
    height, width = _spatial_size(images)
    batch_size = tf.shape(images)[0]

    def source_coordinates(size, scale, shift):
        scale = tf.broadcast_to(tf.cast(scale, tf.float32), [batch_size])[:, None]
        shift = tf.broadcast_to(tf.cast(shift, tf.float32), [batch_size])[:, None]
        centre = (tf.cast(size, tf.float32) - 1.0) / 2.0
        output = tf.range(size, dtype=tf.float32)[None, :]
        return centre + (output - shift - centre) / scale

    return resample_separable(
        images,
        source_coordinates(height, scale_y, shift_y),
        source_coordinates(width, scale_x, shift_x),
        fill=fill,
    )


def affine_warp(images, seed, *, probability=0.5, shift=0.1, scale=0.1, aspect=0.1, fill=0.0):
    """With `probability` per sample, a random shift/scale/aspect warp (easy view, method.md §3).

    Per selected sample: shift U(-shift, shift) times the side along each axis, overall scale
    s ~ U(1 - scale, 1 + scale), aspect a ~ U(1 - aspect, 1 + aspect) applied as x stretch
    s * sqrt(a) and y stretch s / sqrt(a) (so stretch_x / stretch_y = a). Bilinear, `fill` outside.
    Samples not selected are returned unchanged (bit for bit).
    """
    images = tf.cast(images, tf.float32)
    height, width = _spatial_size(images)
    batch_size = tf.shape(images)[0]
    draws = _uniform([batch_size, 5], _as_seed(seed))
    selected = draws[:, 0] < probability
    shift_y = (2.0 * draws[:, 1] - 1.0) * shift * tf.cast(height, tf.float32)
    shift_x = (2.0 * draws[:, 2] - 1.0) * shift * tf.cast(width, tf.float32)
    overall_scale = 1.0 + (2.0 * draws[:, 3] - 1.0) * scale
    root_aspect = tf.sqrt(1.0 + (2.0 * draws[:, 4] - 1.0) * aspect)
    warped = scale_shift_warp(
        images,
        overall_scale / root_aspect,
        overall_scale * root_aspect,
        shift_y,
        shift_x,
        fill=fill,
    )
    return _select_samples(selected, warped, images)


def random_erasing(
    images, seed, *, probability=0.5, area=(0.02, 0.4), aspect=(0.3, 3.3), fill=0.0, attempts=10
):
    """With `probability` per sample, overwrite a random rectangle with `fill` (Zhong et al. 2020).

    The rectangle covers a fraction U(area) of the image with height / width drawn log-uniformly
    from `aspect`; sides are rounded to whole pixels. Like torchvision, up to `attempts` candidate
    shapes are drawn and the first that fits strictly inside the image is used; if none fits the
    sample is left unchanged. The position is uniform over the places where the rectangle fits.
    """
    images = tf.cast(images, tf.float32)
    height, width = _spatial_size(images)
    batch_size = tf.shape(images)[0]
    select_seed, shape_seed, position_seed = _split_seed(seed, 3)
    selected = _uniform([batch_size], select_seed) < probability

    image_area = tf.cast(height * width, tf.float32)
    shape_draws = _uniform([batch_size, attempts, 2], shape_seed)
    target_area = image_area * (area[0] + (area[1] - area[0]) * shape_draws[..., 0])
    log_aspect = (
        math.log(aspect[0]) + (math.log(aspect[1]) - math.log(aspect[0])) * shape_draws[..., 1]
    )
    ratio = tf.exp(log_aspect)
    erase_height = tf.cast(tf.round(tf.sqrt(target_area * ratio)), tf.int32)
    erase_width = tf.cast(tf.round(tf.sqrt(target_area / ratio)), tf.int32)
    fits = (erase_height < height) & (erase_width < width)
    first_fit = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    erase_height = tf.gather(erase_height, first_fit, axis=1, batch_dims=1)
    erase_width = tf.gather(erase_width, first_fit, axis=1, batch_dims=1)
    selected &= tf.reduce_any(fits, axis=1)

    position_draws = _uniform([batch_size, 2], position_seed)
    top = tf.cast(position_draws[:, 0] * tf.cast(height - erase_height + 1, tf.float32), tf.int32)
    left = tf.cast(position_draws[:, 1] * tf.cast(width - erase_width + 1, tf.float32), tf.int32)
    top = tf.minimum(top, height - erase_height)
    left = tf.minimum(left, width - erase_width)

    rows = tf.range(height)[None, :]
    columns = tf.range(width)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + erase_height)[:, None])
    in_columns = (columns >= left[:, None]) & (columns < (left + erase_width)[:, None])
    mask = in_rows[:, :, None] & in_columns[:, None, :] & selected[:, None, None]
    return tf.where(mask[..., None], tf.cast(fill, tf.float32), images)


def crop_and_resize(images, boxes):
    """Crop each sample to its box and resize back to H x W, bilinearly.

    Same sampling as `tf.image.crop_and_resize(images, boxes, range(B), [H, W])` (box corners map
    to pixel centres) for boxes inside the image; unlike it, this compiles with XLA.

    Args:
      images: [B, H, W, C].
      boxes: float [B, 4] normalized (y1, x1, y2, x2) in [0, 1].
    """
    height, width = _spatial_size(images)
    boxes = tf.cast(boxes, tf.float32)

    def source_coordinates(size, start, end):
        last = tf.cast(size, tf.float32) - 1.0
        output = tf.range(size, dtype=tf.float32)[None, :]
        step = (end - start)[:, None] * last / tf.maximum(last, 1.0)
        return start[:, None] * last + output * step

    return resample_separable(
        images,
        source_coordinates(height, boxes[:, 0], boxes[:, 2]),
        source_coordinates(width, boxes[:, 1], boxes[:, 3]),
    )


def random_resized_crop(images, seed, *, side=(0.80, 0.99)):
    """Per sample, a crop whose side is a fraction U(side) of the image side, resized back.

    The crop is square for square images (the same fraction on both axes) and placed uniformly.
    """
    batch_size = tf.shape(images)[0]
    draws = _uniform([batch_size, 3], _as_seed(seed))
    fraction = side[0] + (side[1] - side[0]) * draws[:, 0]
    top = draws[:, 1] * (1.0 - fraction)
    left = draws[:, 2] * (1.0 - fraction)
    boxes = tf.stack([top, left, top + fraction, left + fraction], axis=1)
    return crop_and_resize(images, boxes)


# The views share sub-seed slots so that, for one seed, normal_view extends easy_view and
# hard_view extends normal_view; callers draw independent views by passing different seeds.
_DIHEDRAL_SLOT, _WARP_SLOT, _ERASE_SLOT, _CROP_SLOT = range(4)


def easy_view(images, seed, parameters=ViewParameters()):
    """Dihedral element + random warp: the student's consistency and pseudo-label input (§3 of
    docs/method.md)."""
    seeds = _split_seed(seed, 4)
    images = dihedral(tf.cast(images, tf.float32), seeds[_DIHEDRAL_SLOT])
    return affine_warp(
        images,
        seeds[_WARP_SLOT],
        probability=parameters.warp_probability,
        shift=parameters.warp_shift,
        scale=parameters.warp_scale,
        aspect=parameters.warp_aspect,
    )


def normal_view(images, seed, parameters=ViewParameters()):
    """Easy view + random erasing (docs/method.md §3): the student's margin-loss input."""
    images = easy_view(images, seed, parameters)
    return random_erasing(
        images,
        _split_seed(seed, 4)[_ERASE_SLOT],
        probability=parameters.erase_probability,
        area=parameters.erase_area,
        aspect=parameters.erase_aspect,
        fill=parameters.erase_fill,
    )


def hard_view(images, seed, parameters=ViewParameters()):
    """Normal view + random resized crop (docs/method.md §3): the teacher's input."""
    images = normal_view(images, seed, parameters)
    return random_resized_crop(images, _split_seed(seed, 4)[_CROP_SLOT], side=parameters.crop_side)


# The three training views by name (paper, Method, "Training details"): `MeanTeacher`'s default.
VIEWS = {"easy": easy_view, "normal": normal_view, "hard": hard_view}
