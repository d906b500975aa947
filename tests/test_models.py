"""Tests of the Xception backbones: structure, faithfulness to keras.applications, weights, XLA, sync BN."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from deepnoise_tf import layers, losses, models

TINY = dict(width=0.0625)  # every stage at its minimum of 8 channels


def randomize(model, seed):
    """Random kernels (Glorot-like) and batch-norm parameters and statistics, so that every
    weight matters in a comparison (fresh batch norms are identities)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = []
        for weight in layer.weights:
            shape = tuple(weight.shape)
            name = weight.path.split("/")[-1]
            if name in ("gamma", "moving_variance"):
                values.append(rng.uniform(0.5, 1.5, shape))
            elif name in ("beta", "moving_mean"):
                values.append(rng.normal(0, 0.1, shape))
            else:
                fan_in = np.prod(shape[:-1]) if name != "depthwise_kernel" else np.prod(shape[:2])
                values.append(rng.normal(0, np.sqrt(1.0 / fan_in), shape))
        if values:
            layer.set_weights([v.astype("float32") for v in values])


def keras_reference(input_size=71):
    return keras.applications.Xception(
        include_top=False, weights=None, input_shape=(input_size, input_size, 3)
    )


def test_parameter_counts_match_keras_and_spec():
    reference = keras_reference()
    ours = models.xception((71, 71, 3), stem="3x3")
    assert ours.count_params() == reference.count_params()
    assert len(ours.trainable_weights) == len(reference.trainable_weights)

    xception = models.xception((512, 512, 6))
    # The 7x7 stem over 6 channels replaces the 3x3 stem over 3 channels (32 filters).
    assert xception.count_params() == reference.count_params() + (7 * 7 * 6 - 3 * 3 * 3) * 32
    wide = models.xception_wide((512, 512, 6))
    trainable = [sum(np.prod(w.shape) for w in m.trainable_weights) for m in (xception, wide)]
    assert abs(trainable[0] - 20.8e6) < 0.05e6  # keras.applications.Xception without its top
    assert abs(trainable[1] - 35.8e6) < 0.05e6  # the authors' Xception-Wide (public code)
    assert models.embedding_dim(xception) == models.embedding_dim(wide) == 2048


def save_legacy_h5(model, path):
    """Writes the legacy HDF5 layout of Keras's published ImageNet files."""
    model.save(path)  # Keras 3 writes a whole model in the legacy layout for a .h5 suffix


@pytest.fixture(scope="module")
def reference_and_files(tmp_path_factory):
    reference = keras_reference()
    randomize(reference, seed=0)
    directory = tmp_path_factory.mktemp("weights")
    legacy, keras3 = str(directory / "xception_notop.h5"), str(directory / "xception.weights.h5")
    save_legacy_h5(reference, legacy)
    reference.save_weights(keras3)
    return reference, legacy, keras3


def test_same_feature_maps_as_keras_xception_given_the_same_weights(reference_and_files):
    reference, legacy, keras3 = reference_and_files
    images = np.random.default_rng(1).normal(size=(2, 71, 71, 3)).astype("float32")
    expected = np.asarray(reference(images))  # relu(block14_sepconv2_bn), [2, 3, 3, 2048]
    for path in (legacy, keras3):
        ours = models.xception((71, 71, 3), stem="3x3", weights=path)
        last_bn = keras.Model(
            ours.input, [ours.get_layer("block14_sepconv2_bn").output, ours.output]
        )
        feature_maps, embeddings = (np.asarray(t) for t in last_bn(images))
        tolerance = 1e-5 * np.abs(expected).max()
        np.testing.assert_allclose(np.maximum(feature_maps, 0), expected, atol=tolerance)
        # The embedding is the average pool of the last batch norm, before any ReLU.
        np.testing.assert_allclose(embeddings, feature_maps.mean(axis=(1, 2)), atol=tolerance)
        assert (embeddings < 0).any()


def test_six_channel_stem_adaptation_preserves_grey_image_response(reference_and_files):
    reference, legacy, _ = reference_and_files
    ours = models.xception((71, 71, 6), stem="3x3", weights=legacy)
    grey = np.random.default_rng(2).normal(size=(2, 71, 71, 1)).astype("float32")
    stem = keras.Model(ours.input, ours.get_layer("block1_conv1").output)
    reference_stem = keras.Model(reference.input, reference.get_layer("block1_conv1").output)
    np.testing.assert_allclose(
        np.asarray(stem(np.repeat(grey, 6, axis=-1))),
        np.asarray(reference_stem(np.repeat(grey, 3, axis=-1))),
        atol=1e-5,
    )
    # With the 7x7 stem only the stem stays at initialisation; everything else is loaded.
    seven = models.xception((71, 71, 6), stem="7x7")
    assert models.load_imagenet_weights(seven, legacy) == ("block1_conv1",)
    for name in ("block1_conv2", "block14_sepconv2_bn"):
        for ours_weight, reference_weight in zip(
            seven.get_layer(name).weights, reference.get_layer(name).weights, strict=True
        ):
            np.testing.assert_array_equal(np.asarray(ours_weight), np.asarray(reference_weight))


def test_weights_need_plain_width_one_xception(reference_and_files):
    _, legacy, _ = reference_and_files
    with pytest.raises(ValueError, match="width"):
        models.xception_wide((71, 71, 6), weights=legacy)
    with pytest.raises(ValueError, match="width"):
        models.xception((71, 71, 6), width=0.5, weights=legacy)


def test_seven_by_seven_stem_is_stride_two_with_zero_padding_three():
    model = models.xception((12, 12, 6), **TINY)
    randomize(model, seed=3)
    stem = keras.Model(model.input, model.get_layer("block1_conv1").output)
    images = np.random.default_rng(4).normal(size=(1, 12, 12, 6))
    kernel = np.asarray(model.get_layer("block1_conv1").kernel, np.float64)
    padded = np.pad(images, ((0, 0), (3, 3), (3, 3), (0, 0)))
    expected = np.zeros((1, 6, 6, kernel.shape[-1]))
    for row in range(6):
        for column in range(6):
            window = padded[0, 2 * row : 2 * row + 7, 2 * column : 2 * column + 7]
            expected[0, row, column] = np.einsum("hwc,hwcf->f", window, kernel)
    np.testing.assert_allclose(np.asarray(stem(images.astype("float32"))), expected, atol=1e-4)


def test_width_multiplier_scales_every_stage():
    assert models.scale_filters(728, 1.0) == 728
    assert models.scale_filters(728, 0.25) == 184  # 182 rounded to a multiple of 8
    assert models.scale_filters(32, 0.0625) == 8  # never below 8
    model = models.xception((64, 64, 6), width=0.25)
    assert models.embedding_dim(model) == 512
    assert model.get_layer("block7_sepconv2").pointwise_kernel.shape == (1, 1, 184, 184)
    wide = models.xception_wide((64, 64, 6), width=0.25)
    assert wide.get_layer("block7_sepconv2").pointwise_kernel.shape == (1, 1, 256, 256)
    fast = models.xception((64, 64, 6), width=0.25, batch_norm_momentum=0.9)
    batch_norms = [x for x in fast.layers if isinstance(x, keras.layers.BatchNormalization)]
    momenta = {layer.momentum for layer in batch_norms}
    assert momenta == {0.9}
    assert models.build("xception_wide", (64, 64, 6), width=0.25).count_params() == (
        wide.count_params()
    )


# count_params() of every backbone and stem at two widths, from docs/models.md's table (measured
# before the backbones became registry entries: checkpoints of either must still load).
@pytest.mark.parametrize(
    "backbone, stem, width, parameters, embedding",
    [
        ("xception", "7x7", 1.0, 20_870_024, 2048),
        ("xception", "3x3", 1.0, 20_862_344, 2048),
        ("xception", "7x7", 0.125, 347_232, 256),
        ("xception_wide", "7x7", 1.0, 35_863_040, 2048),
        ("xception_wide", "3x3", 1.0, 35_847_680, 2048),
        ("xception_wide", "7x7", 0.125, 609_472, 256),
    ],
)
def test_registered_backbones_keep_their_parameter_counts(
    backbone, stem, width, parameters, embedding
):
    model = models.build(backbone, (71, 71, 6), stem=stem, width=width)
    assert model.count_params() == parameters
    assert models.embedding_dim(model) == embedding
    assert model.name == backbone


def test_registry_names_every_backbone_and_rejects_unknown_ones():
    assert models.backbone_names() == ("xception", "xception_wide")
    assert models.build("xception_wide", (32, 32, 6), **TINY).name == "xception_wide"
    with pytest.raises(ValueError) as error:
        models.build("xception_wdie", (32, 32, 6))
    assert "Did you mean 'xception_wide'?" in str(error.value)
    assert "Valid backbones: xception, xception_wide" in str(error.value)
    with pytest.raises(ValueError, match="already registered"):
        models.register_backbone(models.xception)


def layout(model):
    """Layer names with their weights' paths and shapes: what a checkpoint's keys and arrays follow."""
    return [
        (layer.name, [(w.path, tuple(w.shape)) for w in layer.weights]) for layer in model.layers
    ]


def test_factory_builds_the_registered_backbone_with_the_same_layers():
    from deepnoise_tf import config as config_lib
    from deepnoise_tf import factory

    for backbone in models.backbone_names():
        config = config_lib.default_config()
        config.model.backbone, config.model.width, config.model.stem = backbone, 0.0625, "3x3"
        built = factory.build_network(config.model, 32, "student")["backbone"]
        direct = models.build(backbone, (32, 32, 6), stem="3x3", width=0.0625)
        assert built.name == "student_backbone"
        assert len(built.layers) == 132 and layout(built) == layout(direct)


def test_mixed_precision_backbone_feeds_float32_head_and_loss():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        backbone = models.xception((32, 32, 6), **TINY)
        labels = keras.Input((), dtype="int32", name="labels")
        logits = layers.ArcFace(5)(backbone.output, labels)
        model = keras.Model([backbone.input, labels], logits)
    finally:
        keras.config.set_dtype_policy(previous)
    assert backbone.output.dtype == "float16" and logits.dtype == "float32"
    assert backbone.get_layer("block1_conv1").kernel.dtype == "float32"  # float32 master weights
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=lambda y, p: losses.classification_loss(y, p),
        jit_compile=False,
    )
    rng = np.random.default_rng(5)
    images = rng.normal(size=(4, 32, 32, 6)).astype("float32")
    targets = np.array([0, 1, -1, 4], "int32")
    history = model.fit([images, targets], targets, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_xla_forward_and_gradients_match_eager():
    # Batch statistics of the last layers need enough values (4 images x 2 x 2) to be stable.
    model = models.xception((48, 48, 6), **TINY)
    randomize(model, seed=6)
    rng = np.random.default_rng(7)
    images = rng.normal(size=(4, 48, 48, 6)).astype("float32")
    # Per-example weights: a batch-norm output summed over the batch would not depend on x.
    upstream = rng.normal(size=(4, models.embedding_dim(model))).astype("float32")

    def loss_and_gradients(x):
        with tf.GradientTape() as tape:
            embeddings = model(x, training=True)
            loss = tf.reduce_sum(embeddings * upstream)
        return embeddings, tape.gradient(loss, model.trainable_variables)

    compiled = tf.function(loss_and_gradients, jit_compile=True, autograph=False)
    compiled_embeddings, compiled_gradients = compiled(images)
    eager_embeddings, eager_gradients = loss_and_gradients(images)
    np.testing.assert_allclose(compiled_embeddings, eager_embeddings, atol=1e-4)
    for compiled_gradient, eager_gradient in zip(compiled_gradients, eager_gradients, strict=True):
        scale = np.abs(eager_gradient).max() + 1e-6
        np.testing.assert_allclose(compiled_gradient, eager_gradient, atol=1e-3 * scale)


# Runs in a fresh interpreter: logical devices must be configured before TensorFlow starts.
_SYNC_BATCH_NORM_SCRIPT = textwrap.dedent(
    """
    import json
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from deepnoise_tf import models

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    images = np.random.default_rng(0).normal(size=(8, 32, 32, 6)).astype("float32")
    images[4:] += 3.0  # the two replicas see differently distributed halves
    result = {}
    for sync in (True, False):
        with strategy.scope():
            model = models.xception((32, 32, 6), width=0.0625, sync_batch_norm=sync)
            model.compile(optimizer="sgd", loss="mse", jit_compile=False)
        stem = keras.Model(model.input, model.get_layer("block1_conv1").output)
        stem_output = np.asarray(stem(images), np.float64)  # before the step changes the kernel
        targets = np.zeros((8, models.embedding_dim(model)), "float32")
        model.fit(images, targets, batch_size=8, epochs=1, shuffle=False, verbose=0)
        moving_mean = model.get_layer("block1_conv1_bn").moving_mean.value
        result[str(sync)] = {
            "replicas": [np.asarray(v).tolist() for v in moving_mean.values],
            "global_batch_mean": stem_output.mean(axis=(0, 1, 2)).tolist(),
            "half_batch_means": [
                stem_output[:4].mean(axis=(0, 1, 2)).tolist(),
                stem_output[4:].mean(axis=(0, 1, 2)).tolist(),
            ],
        }
    print("RESULT" + json.dumps(result))
    """
)


@pytest.mark.slow
def test_synchronized_batch_norm_keeps_replicas_identical_under_mirrored_strategy():
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    completed = subprocess.run(
        [sys.executable, "-c", _SYNC_BATCH_NORM_SCRIPT],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(x for x in completed.stdout.splitlines() if x.startswith("RESULT"))
    result = json.loads(line[len("RESULT") :])
    momentum = 0.99  # keras.layers.BatchNormalization default; moving stats start at 0

    synchronized = result["True"]
    replica_0, replica_1 = (np.array(r) for r in synchronized["replicas"])
    np.testing.assert_array_equal(replica_0, replica_1)
    np.testing.assert_allclose(
        replica_0, (1 - momentum) * np.array(synchronized["global_batch_mean"]), atol=1e-6
    )

    # The hazard the flag removes: plain batch norm updates each replica's copy from its own
    # half of the batch, so the copies diverge (and a checkpoint keeps replica 0's).
    plain = result["False"]
    replicas = sorted(np.array(r).tolist() for r in plain["replicas"])
    halves = sorted(((1 - momentum) * np.array(h)).tolist() for h in plain["half_batch_means"])
    np.testing.assert_allclose(replicas, halves, atol=1e-6)
    assert not np.allclose(replicas[0], replicas[1], atol=1e-4)
