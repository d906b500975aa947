"""ImageNet initialisation from a local file laid out as the one Keras downloads
(`xception_weights_tf_dim_ordering_tf_kernels_notop.h5`: legacy HDF5, one group per layer by name,
Keras 2's automatic names for the unnamed shortcut layers). The test writes that file itself from a
randomly initialised `keras.applications.Xception` and checks what the project's backbone makes of it.
"""

import h5py
import keras
import numpy as np
import pytest

from deepnoise_tf import config as config_lib
from deepnoise_tf import factory, models, pipeline_config

SIZE = 71  # the smallest input keras.applications.Xception accepts


def shortcut_names(reference):
    """{reference layer name: Keras 2 name in the downloaded file} for the unnamed shortcut layers,
    and {our name: reference layer name}, both by order in the network (blocks 2, 3, 4, 13)."""
    unnamed = [layer for layer in reference.layers if layer.weights and "block" not in layer.name]
    convs = [layer for layer in unnamed if isinstance(layer, keras.layers.Conv2D)]
    norms = [layer for layer in unnamed if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(convs) == len(norms) == 4
    in_file, ours = {}, {}
    for index, (conv, norm, block) in enumerate(zip(convs, norms, (2, 3, 4, 13), strict=True)):
        in_file[conv.name] = f"conv2d_{index + 1}"
        in_file[norm.name] = f"batch_normalization_{index + 1}"
        ours[f"block{block}_residual_conv"] = conv.name
        ours[f"block{block}_residual_bn"] = norm.name
    return in_file, ours


def write_downloaded_layout(reference, path, *, drop=(), reshape=()):
    """The legacy weights-only HDF5 of Keras's published files, from `reference`'s weights."""
    in_file, _ = shortcut_names(reference)
    names = [in_file.get(layer.name, layer.name) for layer in reference.layers]
    with h5py.File(path, "w") as file:
        file.attrs["layer_names"] = np.array([name.encode() for name in names if name not in drop])
        file.attrs["backend"] = b"tensorflow"
        file.attrs["keras_version"] = b"2.1.2"
        for layer, name in zip(reference.layers, names, strict=True):
            if name in drop:
                continue
            group = file.create_group(name)
            weight_names = []
            for weight in layer.weights:
                weight_name = f"{name}/{weight.path.split('/')[-1]}:0"
                value = np.asarray(weight)
                if name in reshape:
                    value = value[..., :-1]  # one channel short
                group.create_dataset(weight_name, data=value)
                weight_names.append(weight_name.encode())
            group.attrs["weight_names"] = np.array(weight_names, dtype="S")


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory):
    reference = keras.applications.Xception(
        include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)
    )
    rng = np.random.default_rng(0)
    for weight in reference.weights:  # every weight random (fresh batch norms are identities)
        shape, name = tuple(weight.shape), weight.path.split("/")[-1]
        value = (
            rng.uniform(0.5, 1.5, shape) if name == "moving_variance" else rng.normal(size=shape)
        )
        weight.assign(value.astype("float32"))
    path = str(tmp_path_factory.mktemp("imagenet") / "xception_notop.h5")
    write_downloaded_layout(reference, path)
    return reference, path


def file_arrays(path, name):
    with h5py.File(path, "r") as file:
        return [np.asarray(file[name][n]) for n in file[name].attrs["weight_names"]]


def test_the_written_file_is_what_keras_loads_as_its_imagenet_file(reference_file):
    reference, path = reference_file
    loaded = keras.applications.Xception(
        include_top=False, weights=path, input_shape=(SIZE, SIZE, 3)
    )
    for ours, theirs in zip(loaded.weights, reference.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_six_channel_backbone_gets_every_layer_and_the_averaged_stem(reference_file):
    reference, path = reference_file
    in_file, ours_to_reference = shortcut_names(reference)
    model = models.xception((SIZE, SIZE, 6), stem="3x3", weights=path)
    loaded = 0
    for layer in model.layers:
        if not layer.weights or layer.name == "block1_conv1":
            continue
        reference_name = ours_to_reference.get(layer.name, layer.name)
        expected = file_arrays(path, in_file.get(reference_name, reference_name))
        got = [np.asarray(w) for w in layer.weights]
        assert len(got) == len(expected), layer.name
        for value, want in zip(got, expected, strict=True):
            np.testing.assert_array_equal(value, want, err_msg=layer.name)
        loaded += 1
    assert loaded == len([layer for layer in reference.layers if layer.weights]) - 1

    # The stem: the mean of the RGB kernels on every one of the 6 channels, times 3/6.
    (rgb,) = file_arrays(path, "block1_conv1")
    (stem,) = model.get_layer("block1_conv1").get_weights()
    np.testing.assert_allclose(stem, np.repeat(rgb.mean(axis=2, keepdims=True), 6, axis=2) / 2)

    # Its property: on any 6-channel image, the stem responds as the RGB stem does to the grey
    # image of the six channels' mean (so a grey image gives exactly the RGB response). It does not
    # reproduce the RGB stem on (r, g, b, r, g, b) unless the RGB kernels are equal.
    images = np.random.default_rng(1).normal(size=(2, SIZE, SIZE, 6)).astype("float32")
    grey = np.repeat(images.mean(axis=-1, keepdims=True), 3, axis=-1)
    ours = keras.Model(model.input, model.get_layer("block1_conv1").output)
    theirs = keras.Model(reference.input, reference.get_layer("block1_conv1").output)
    np.testing.assert_allclose(np.asarray(ours(images)), np.asarray(theirs(grey)), atol=1e-4)


def test_seven_by_seven_stem_keeps_its_initialisation_and_loads_the_rest(reference_file, capsys):
    reference, path = reference_file
    keras.utils.set_random_seed(3)
    fresh = models.xception((SIZE, SIZE, 6), stem="7x7")
    keras.utils.set_random_seed(3)
    loaded = models.xception((SIZE, SIZE, 6), stem="7x7", weights=path)
    assert "except block1_conv1" in capsys.readouterr().out
    np.testing.assert_array_equal(
        loaded.get_layer("block1_conv1").get_weights()[0],
        fresh.get_layer("block1_conv1").get_weights()[0],
    )
    for name in ("block1_conv1_bn", "block1_conv2", "block14_sepconv2_bn"):
        for value, want in zip(
            loaded.get_layer(name).get_weights(), file_arrays(path, name), strict=True
        ):
            np.testing.assert_array_equal(value, want)


def test_a_file_that_does_not_fit_is_named(reference_file, tmp_path):
    reference, path = reference_file
    missing = str(tmp_path / "missing_layer.h5")
    write_downloaded_layout(reference, missing, drop=("block7_sepconv2",))
    with pytest.raises(ValueError, match=r"missing_layer\.h5.*block7_sepconv2"):
        models.xception((SIZE, SIZE, 6), stem="3x3", weights=missing)
    wrong = str(tmp_path / "wrong_shape.h5")
    write_downloaded_layout(reference, wrong, reshape=("block9_sepconv1",))
    with pytest.raises(ValueError, match=r"wrong_shape\.h5.*block9_sepconv1"):
        models.xception((SIZE, SIZE, 6), stem="3x3", weights=wrong)
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        models.xception((SIZE, SIZE, 6), stem="3x3", weights=str(tmp_path / "nowhere.h5"))
    with pytest.raises(ValueError, match="width"):
        models.xception((SIZE, SIZE, 6), width=0.5, weights=path)
    with pytest.raises(ValueError, match="from scratch"):
        models.xception_wide((SIZE, SIZE, 6), weights=path)


def test_the_config_field_loads_the_file_and_the_pipeline_keeps_it_off_xception_wide(
    reference_file,
):
    _, path = reference_file
    config = config_lib.load("configs/deepnoise.py")
    config.model.imagenet_weights = path
    config.model.stem = "3x3"
    network = factory.build_network(config.model, SIZE, "student")
    np.testing.assert_array_equal(
        network["backbone"].get_layer("block5_sepconv1").get_weights()[1],
        file_arrays(path, "block5_sepconv1")[1],
    )
    assert pipeline_config.member_config(config, "xception", 0).model.imagenet_weights == path
    assert pipeline_config.member_config(config, "xception_wide", 0).model.imagenet_weights == ""
