"""Backbones: a registry of named networks (Xception, Xception-Wide) from images to the embedding.

Each backbone is a builder function registered under its name with `@register_backbone` (as timm's
`@register_model`); `build(name, input_shape, ...)` is the one way configs create them, and
`backbone_names()` is the one list of valid `config.model.backbone` values.

Written with `keras.layers` only, so the same code runs on the TensorFlow and the JAX backends.
Layer names follow `keras.applications.Xception` ("block4_sepconv2_bn", ...), with the residual
shortcuts that Keras leaves unnamed called "block{n}_residual_conv" / "block{n}_residual_bn", so
ImageNet weights map onto ours by name.

Reference: Chollet, "Xception: Deep Learning with Depthwise Separable Convolutions", CVPR 2017.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable

import h5py
import keras
import numpy as np

from deepnoise_tf import constants

STEMS = ("7x7", "3x3")  # the valid `config.model.stem` values; see `xception` for what each is
# Backbones that Keras's Xception ImageNet weights fit (at width 1); the others train from scratch.
IMAGENET_BACKBONES = ("xception",)


@dataclasses.dataclass(frozen=True)
class Widths:
    """Output channels of every stage of an Xception-style network."""

    stem: int  # block1_conv1
    conv2: int  # block1_conv2
    entry: tuple[int, int, int]  # blocks 2, 3, 4
    middle: int  # blocks 5-12
    exit: tuple[int, int]  # block 13: first and second separable conv
    final: tuple[int, int]  # block 14


# Chollet's Xception, as in keras.applications.Xception.
XCEPTION_WIDTHS = Widths(
    stem=32, conv2=64, entry=(128, 256, 728), middle=728, exit=(728, 1024), final=(1536, 2048)
)
# Xception-Wide as trained by DeepNoise. The paper (section "Model ensemble") names only the stem's
# 64 output channels against Xception's 32; the authors' public code widens every stage as below.
XCEPTION_WIDE_WIDTHS = Widths(
    stem=64, conv2=128, entry=(256, 384, 1024), middle=1024, exit=(1024, 1024), final=(1536, 2048)
)

NUM_MIDDLE_BLOCKS = 8  # blocks 5..12
_ENTRY_BLOCKS = (2, 3, 4)
_EXIT_BLOCK = 13


def scale_filters(filters: int, width: float) -> int:
    """Scales a channel count by `width`, rounded to a multiple of 8 (at least 8) for fast kernels."""
    return max(8, int(round(filters * width / 8.0)) * 8)


def _scaled_widths(widths: Widths, width: float) -> Widths:
    def scale(filters):
        return scale_filters(filters, width)

    return Widths(
        stem=scale(widths.stem),
        conv2=scale(widths.conv2),
        entry=tuple(scale(f) for f in widths.entry),
        middle=scale(widths.middle),
        exit=tuple(scale(f) for f in widths.exit),
        final=tuple(scale(f) for f in widths.final),
    )


@dataclasses.dataclass(frozen=True)
class _BatchNormSettings:
    synchronized: bool
    momentum: float


def _batch_norm(name: str, settings: _BatchNormSettings) -> keras.layers.BatchNormalization:
    # Keras's epsilon 1e-3 (and default momentum 0.99) match keras.applications.Xception, which
    # the faithfulness test and the ImageNet weights rely on.
    return keras.layers.BatchNormalization(
        axis=-1, momentum=settings.momentum, synchronized=settings.synchronized, name=name
    )


def _separable(filters: int, name: str) -> keras.layers.SeparableConv2D:
    return keras.layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=name)


def _relu(name: str) -> keras.layers.Activation:
    return keras.layers.Activation("relu", name=name)


def _downsampling_block(
    x, block: int, filters: tuple[int, int], relu_first: bool, batch_norm: _BatchNormSettings
):
    """Entry/exit block: two separable convs, max-pool /2, plus a strided 1x1 shortcut."""
    prefix = f"block{block}"
    residual = keras.layers.Conv2D(
        filters[1], 1, strides=2, padding="same", use_bias=False, name=f"{prefix}_residual_conv"
    )(x)
    residual = _batch_norm(f"{prefix}_residual_bn", batch_norm)(residual)
    if relu_first:
        x = _relu(f"{prefix}_sepconv1_act")(x)
    x = _separable(filters[0], f"{prefix}_sepconv1")(x)
    x = _batch_norm(f"{prefix}_sepconv1_bn", batch_norm)(x)
    x = _relu(f"{prefix}_sepconv2_act")(x)
    x = _separable(filters[1], f"{prefix}_sepconv2")(x)
    x = _batch_norm(f"{prefix}_sepconv2_bn", batch_norm)(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name=f"{prefix}_pool")(x)
    return keras.layers.Add(name=f"{prefix}_add")([x, residual])


def _middle_block(x, block: int, filters: int, batch_norm: _BatchNormSettings):
    """Middle-flow block: three relu-separable-bn units with an identity shortcut."""
    prefix = f"block{block}"
    residual = x
    for unit in (1, 2, 3):
        x = _relu(f"{prefix}_sepconv{unit}_act")(x)
        x = _separable(filters, f"{prefix}_sepconv{unit}")(x)
        x = _batch_norm(f"{prefix}_sepconv{unit}_bn", batch_norm)(x)
    return keras.layers.Add(name=f"{prefix}_add")([x, residual])


def _xception_network(
    input_shape,
    widths: Widths,
    *,
    stem: str,
    width: float,
    sync_batch_norm: bool,
    batch_norm_momentum: float,
    name: str,
) -> keras.Model:
    """The Xception topology (Chollet 2017, Fig. 5) at the stage widths `widths` x `width`."""
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    widths = _scaled_widths(widths, width)
    # keras.layers.BatchNormalization(synchronized=True) is implemented on TensorFlow only.
    batch_norm = _BatchNormSettings(
        synchronized=bool(sync_batch_norm) and keras.backend.backend() == "tensorflow",
        momentum=float(batch_norm_momentum),
    )

    images = keras.Input(shape=tuple(input_shape), name="images")
    if stem == "7x7":
        x = keras.layers.ZeroPadding2D(3, name="block1_pad")(images)
        x = keras.layers.Conv2D(widths.stem, 7, strides=2, use_bias=False, name="block1_conv1")(x)
    else:
        x = keras.layers.Conv2D(widths.stem, 3, strides=2, use_bias=False, name="block1_conv1")(
            images
        )
    x = _batch_norm("block1_conv1_bn", batch_norm)(x)
    x = _relu("block1_conv1_act")(x)
    x = keras.layers.Conv2D(widths.conv2, 3, use_bias=False, name="block1_conv2")(x)
    x = _batch_norm("block1_conv2_bn", batch_norm)(x)
    x = _relu("block1_conv2_act")(x)

    for index, block in enumerate(_ENTRY_BLOCKS):
        filters = widths.entry[index]
        x = _downsampling_block(
            x, block, (filters, filters), relu_first=block != 2, batch_norm=batch_norm
        )
    for block in range(_ENTRY_BLOCKS[-1] + 1, _EXIT_BLOCK):
        x = _middle_block(x, block, widths.middle, batch_norm)
    x = _downsampling_block(x, _EXIT_BLOCK, widths.exit, relu_first=True, batch_norm=batch_norm)

    x = _separable(widths.final[0], "block14_sepconv1")(x)
    x = _batch_norm("block14_sepconv1_bn", batch_norm)(x)
    x = _relu("block14_sepconv1_act")(x)
    x = _separable(widths.final[1], "block14_sepconv2")(x)
    x = _batch_norm("block14_sepconv2_bn", batch_norm)(x)
    # DeepNoise embeds the last batch-norm output directly: no ReLU before pooling.
    embeddings = keras.layers.GlobalAveragePooling2D(name="embedding")(x)

    return keras.Model(images, embeddings, name=name)


_BACKBONES: dict[str, Callable[..., keras.Model]] = {}


def register_backbone(builder: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
    """Decorator: registers `builder` as the backbone named after the function.

    A builder takes `(input_shape, *, stem, width, sync_batch_norm, batch_norm_momentum, weights,
    name)`, the arguments `deepnoise_tf.factory` passes from `config.model`, and returns a
    `keras.Model` from [N, H, W, C] images to [N, D] embeddings.
    """
    if builder.__name__ in _BACKBONES:
        raise ValueError(f"a backbone named {builder.__name__!r} is already registered")
    _BACKBONES[builder.__name__] = builder
    return builder


def backbone_names() -> tuple[str, ...]:
    """The registered backbones: the valid values of `config.model.backbone`."""
    return tuple(_BACKBONES)


def build(backbone: str, input_shape=None, **kwargs) -> keras.Model:
    """Builds the registered backbone `backbone` (e.g. "xception_wide"); kwargs go to its builder.

    `input_shape` defaults to RxRx1's native (512, 512, 6).
    """
    if backbone not in _BACKBONES:
        close = difflib.get_close_matches(backbone, _BACKBONES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown backbone {backbone!r}.{hint} Valid backbones: {', '.join(_BACKBONES)}"
        )
    if input_shape is None:
        input_shape = (constants.IMAGE_SIZE, constants.IMAGE_SIZE, constants.NUM_CHANNELS)
    return _BACKBONES[backbone](input_shape, **kwargs)


@register_backbone
def xception(
    input_shape,
    *,
    stem: str = "7x7",
    width: float = 1.0,
    sync_batch_norm: bool = True,
    batch_norm_momentum: float = 0.99,
    weights: str | None = None,
    name: str | None = None,
) -> keras.Model:
    """Chollet's Xception, from images to the embedding.

    Args:
      input_shape: (height, width, channels) of the normalised float images, e.g. (512, 512, 6).
      stem: "7x7" (DeepNoise's public code: 7x7 stride-2 conv, zero padding 3) or "3x3"
        (Chollet's original 3x3 stride-2 valid conv).
      width: multiplies every stage's channels (rounded to multiples of 8); < 1 for CPU configs.
      sync_batch_norm: on the TensorFlow backend, batch statistics are all-reduced across the
        replicas of a `tf.distribute` strategy, so every replica updates identical moving
        statistics (plain batch norm keeps one diverging copy per replica and checkpoints
        replica 0's). Ignored on JAX, where a data-parallel batch is one global array and the
        statistics are global anyway.
      batch_norm_momentum: momentum of the moving statistics (Keras's 0.99 by default; short
        CPU runs need faster-moving statistics).
      weights: optional local path to Keras's Xception ImageNet weights (.h5 or .weights.h5);
        needs width=1.0. See `load_imagenet_weights`.
      name: model name; defaults to "xception".

    Returns:
      A `keras.Model` mapping [N, H, W, C] images to [N, D] embeddings: the global average pool
      of the last batch-norm output, with no final ReLU and no L2 normalisation (the ArcFace
      head normalises). D = 2048 at width 1.
    """
    if weights is not None and width != 1.0:
        raise ValueError(
            f"ImageNet weights exist only for Xception at width=1.0, got width={width}"
        )
    model = _xception_network(
        input_shape,
        XCEPTION_WIDTHS,
        stem=stem,
        width=width,
        sync_batch_norm=sync_batch_norm,
        batch_norm_momentum=batch_norm_momentum,
        name=name or "xception",
    )
    if weights is not None:
        skipped = load_imagenet_weights(model, weights)
        if skipped:
            print(
                f"[deepnoise] ImageNet weights from {weights} loaded into {model.name}, except "
                f"{', '.join(skipped)} (a {stem} stem has no ImageNet counterpart: fresh initialisation)",
                flush=True,
            )
    return model


@register_backbone
def xception_wide(
    input_shape,
    *,
    stem: str = "7x7",
    width: float = 1.0,
    sync_batch_norm: bool = True,
    batch_norm_momentum: float = 0.99,
    weights: str | None = None,
    name: str | None = None,
) -> keras.Model:
    """Xception-Wide (`XCEPTION_WIDE_WIDTHS`: every stage widened), from images to the embedding.

    Takes the arguments of `xception`, except that `weights` must stay None: there are no ImageNet
    weights for Xception-Wide, which trains from scratch. The name defaults to "xception_wide";
    D = 2048 at width 1.
    """
    if weights is not None:
        raise ValueError(
            "ImageNet weights exist only for Xception at width=1.0; Xception-Wide trains from scratch"
        )
    return _xception_network(
        input_shape,
        XCEPTION_WIDE_WIDTHS,
        stem=stem,
        width=width,
        sync_batch_norm=sync_batch_norm,
        batch_norm_momentum=batch_norm_momentum,
        name=name or "xception_wide",
    )


def embedding_dim(model: keras.Model) -> int:
    """Size D of the [N, D] embeddings a backbone returns."""
    return int(model.outputs[0].shape[-1])


def read_weights_file(path: str) -> dict[str, list[np.ndarray]]:
    """Reads a Keras weights file into {layer name: [arrays in the layer's weight order]}.

    Reads both the legacy HDF5 layout (Keras 2 `save_weights`/`save`, which is how Keras
    publishes its ImageNet files) and Keras 3's `.weights.h5`, directly with h5py, so the
    mapping onto our layers does not depend on Keras's auto-generated layer names.
    """
    result = {}
    with h5py.File(path, "r") as file:
        root = file["model_weights"] if "model_weights" in file else file
        if "layer_names" in root.attrs:  # legacy layout
            for layer_name in root.attrs["layer_names"]:
                layer_name = _text(layer_name)
                group = root[layer_name]
                weight_names = [_text(n) for n in group.attrs.get("weight_names", [])]
                if weight_names:
                    result[layer_name] = [np.asarray(group[n]) for n in weight_names]
        elif "layers" in root:  # Keras 3 .weights.h5
            for group in root["layers"].values():
                variables = group.get("vars")
                if variables is None or len(variables) == 0:
                    continue
                layer_name = _text(variables.attrs.get("name", group.name.split("/")[-1]))
                result[layer_name] = [np.asarray(variables[k]) for k in sorted(variables, key=int)]
        else:
            raise ValueError(f"{path} does not look like a Keras weights file")
    return result


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _residual_source_names(source: dict[str, list[np.ndarray]]) -> dict[str, str]:
    """Maps our named shortcut layers to the file's auto-named ones (by channel count).

    Keras leaves the four 1x1 shortcut convolutions and their batch norms unnamed ("conv2d_3",
    "batch_normalization_1", ...). At width 1 their output channels (128, 256, 728, 1024) are
    distinct, which identifies the block each belongs to.
    """
    channels_to_block = {
        XCEPTION_WIDTHS.entry[0]: 2,
        XCEPTION_WIDTHS.entry[1]: 3,
        XCEPTION_WIDTHS.entry[2]: 4,
        XCEPTION_WIDTHS.exit[1]: 13,
    }
    mapping = {}
    for layer_name, arrays in source.items():
        if layer_name.startswith("block") or layer_name in ("predictions",):
            continue
        channels = arrays[0].shape[-1]
        if channels not in channels_to_block:
            continue
        block = channels_to_block[channels]
        kind = "residual_conv" if arrays[0].ndim == 4 else "residual_bn"
        ours = f"block{block}_{kind}"
        if ours in mapping:
            raise ValueError(f"two layers in the weights file look like {ours}")
        mapping[ours] = layer_name
    return mapping


def adapt_stem_kernel(kernel: np.ndarray, num_channels: int) -> np.ndarray:
    """Adapts an RGB stem kernel [kh, kw, 3, F] to `num_channels` input channels.

    Every new channel gets the mean of the RGB kernels, rescaled by 3 / num_channels, so the
    summed response to a grey image (all channels equal) is the same as the RGB network's.
    """
    mean_kernel = kernel.mean(axis=2, keepdims=True)
    return np.repeat(mean_kernel, num_channels, axis=2) * (kernel.shape[2] / num_channels)


def load_imagenet_weights(model: keras.Model, path: str) -> tuple[str, ...]:
    """Loads Keras's Xception ImageNet weights from a local file into our Xception (width 1).

    The file is the one `keras.applications.Xception(weights="imagenet", include_top=False)`
    downloads (`xception_weights_tf_dim_ordering_tf_kernels_notop.h5`, legacy HDF5, by layer name),
    or any Keras weights file of that network. The stem conv is copied when its shape matches,
    adapted (`adapt_stem_kernel`) when only the number of input channels differs, and left at its
    fresh initialisation when the kernel size differs (the 7x7 stem of the public code: every other
    layer, `block1_conv1_bn` included, is loaded). Extra layers in the file (the ImageNet
    classifier) are ignored.

    Returns:
      Names of our layers that were not loaded (kept at initialisation).

    Raises:
      ValueError: naming `path`, when the file lacks one of our layers or a weight has another shape
      (e.g. a model at width != 1, or another network's file).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"ImageNet weights file {path} does not exist (config.model.imagenet_weights: a local "
            "copy of Keras's xception_weights_tf_dim_ordering_tf_kernels_notop.h5)"
        )
    source = read_weights_file(path)
    residual_names = _residual_source_names(source)
    skipped = []
    for layer in model.layers:
        if not layer.weights:
            continue
        source_name = residual_names.get(layer.name, layer.name)
        if source_name not in source:
            raise ValueError(
                f"{path} does not fit {model.name}: it has no weights for layer {layer.name!r} "
                "(expected Keras's Xception ImageNet weights, e.g. "
                "xception_weights_tf_dim_ordering_tf_kernels_notop.h5)"
            )
        arrays = source[source_name]
        expected = [tuple(w.shape) for w in layer.weights]
        if layer.name == "block1_conv1" and tuple(arrays[0].shape) != expected[0]:
            kernel = arrays[0]
            if kernel.shape[:2] == expected[0][:2] and kernel.shape[3] == expected[0][3]:
                arrays = [adapt_stem_kernel(kernel, expected[0][2])]
            else:
                skipped.append(layer.name)  # e.g. the 7x7 stem: no ImageNet counterpart
                continue
        if [tuple(a.shape) for a in arrays] != expected:
            raise ValueError(
                f"{path} does not fit {model.name}: layer {layer.name!r} has shapes "
                f"{[a.shape for a in arrays]} in the file, {expected} in the model "
                "(ImageNet weights need Xception at width 1)"
            )
        layer.set_weights(arrays)
    return tuple(skipped)
