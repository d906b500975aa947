"""Shared fixtures: tiny synthetic RxRx1 sources in both layouts, the tiny data set built once per
session, the tiny config, run folders around untrained models, and helpers to read and serve them."""

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from deepnoise_tf import config as config_lib
from deepnoise_tf import constants, synthetic

TINY_IMAGE_SIZE = 16


@pytest.fixture(scope="session")
def release_source(tmp_path_factory):
    """(root, ground truth) of the tiny preset in the release layout."""
    root = tmp_path_factory.mktemp("release_source")
    return root, synthetic.write_dataset(root, layout="release", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def kaggle_source(tmp_path_factory):
    """(root, ground truth) of the tiny preset in the Kaggle layout, with pixel_stats.csv."""
    root = tmp_path_factory.mktemp("kaggle_source")
    truth = synthetic.write_dataset(root, layout="kaggle", preset="tiny", seed=1, pixel_stats=True)
    return root, truth


def _manifest(root: pathlib.Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime)} of every file under `root`."""
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """(data_dir, builder name) of the tiny preset built as TFDS records, release layout (test labels
    known), seed 0. Built once and shared by every file that reads it: no test may change it, which the
    teardown checks (a file added, removed or rewritten fails the session)."""
    data_dir = tmp_path_factory.mktemp("tiny_data")
    builder = synthetic.prepare_tfds(data_dir, preset="tiny", layout="release")
    before = _manifest(data_dir)
    yield str(data_dir), builder
    assert _manifest(data_dir) == before, f"a test changed the shared tiny data set in {data_dir}"


def tiny_config(data_dir, builder, **fields):
    """The CPU-scale default config on the tiny data set (16-pixel images, no synthetic preset to
    generate), validated; `fields` are dotted overrides set after, e.g.
    `tiny_config(data_dir, builder, **{"model.width": 0.125, "train.seed": 1})`. An unknown field fails."""
    config = config_lib.cpu_scale(config_lib.default_config())
    config.data.data_dir = str(data_dir)
    config.data.builder = builder
    config.data.synthetic_preset = ""
    config.data.image_size = TINY_IMAGE_SIZE
    overrides = {field: repr(value) for field, value in fields.items()}
    config = config_lib.apply_overrides(config, overrides)
    return config_lib.validate(config)


@pytest.fixture(scope="session")
def make_run_folder(tmp_path_factory):
    """Makes a training folder as `training.run` leaves it (config.json, checkpoints/best.weights.h5,
    export/) around an untrained model of a config; returns {"workdir", "export", "network"}, the
    network being the in-process (backbone, head) that the export serves."""

    from deepnoise_tf import export, factory

    def make(config, name: str = "run") -> dict:
        workdir = tmp_path_factory.mktemp(name)
        model = factory.build_model(config_lib.validate(config), steps_per_epoch=1)
        (workdir / "checkpoints").mkdir()
        model.save_weights(str(workdir / "checkpoints" / "best.weights.h5"))
        (workdir / "config.json").write_text(config_lib.to_json(config))
        path = export.export_saved_model(
            [model.inference_network()],
            str(workdir / "export"),
            image_size=config.data.image_size,
            normalization=config.data.normalization,
        )
        return {"workdir": workdir, "export": path, "network": model.inference_network()}

    return make


def channel_paths(root: pathlib.Path, layout: str, row) -> list[pathlib.Path]:
    """The six PNG paths of one ground-truth row, written out independently of the builder."""
    top = "images" if layout == "release" else row.dataset
    folder = root / top / row.experiment / f"Plate{row.plate}"
    return [
        folder / f"{row.well}_s{row.site}_w{channel}.png"
        for channel in range(1, constants.NUM_CHANNELS + 1)
    ]


def read_png_stack(paths) -> np.ndarray:
    """(H, W, 6) uint8 straight from the PNG files."""
    return np.stack([np.asarray(Image.open(path)) for path in paths], axis=-1)


_FRESH_PROCESS = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf

    model_dir, inputs_path, outputs_path = sys.argv[1:]
    loaded = tf.saved_model.load(model_dir)
    inputs = np.load(inputs_path)
    outputs = loaded.signatures["serving_default"](
        image=tf.constant(inputs["image"]), mean=tf.constant(inputs["mean"]), std=tf.constant(inputs["std"])
    )
    metadata = loaded.signatures["metadata"]()
    assert not any(name.startswith("deepnoise_tf") for name in sys.modules), "deepnoise_tf was imported"
    np.savez(
        outputs_path,
        image_size=metadata["image_size"].numpy(),
        normalization=metadata["normalization"].numpy().decode(),
        num_models=metadata["num_models"].numpy(),
        **{name: value.numpy() for name, value in outputs.items()},
    )
    """
)


def serve_in_fresh_process(model_dir, inputs: dict, tmp_path: pathlib.Path) -> dict:
    """Runs `serving_default` and `metadata` of a SavedModel in a new interpreter that cannot import
    deepnoise_tf (other working directory, no PYTHONPATH); returns the outputs as numpy arrays."""
    np.savez(tmp_path / "inputs.npz", **inputs)
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            _FRESH_PROCESS,
            str(model_dir),
            str(tmp_path / "inputs.npz"),
            str(tmp_path / "out.npz"),
        ],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    with np.load(tmp_path / "out.npz") as served:
        return {name: served[name] for name in served.files}


def stand_in_backbone(backbone, input_shape, *, name=None, **unused):
    """Images -> embedding in two convolutions (wider for Xception-Wide, so members differ): for
    tests whose subject is not the backbone, where Xception's graph would cost minutes to trace."""
    import keras  # here, so that conftest itself does not load Keras

    del unused
    filters = 16 if backbone == "xception_wide" else 8
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(filters, 3, strides=2, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.Conv2D(2 * filters, 3, strides=2, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name=name)


def perturbed(weights, rng):
    """Trained-looking weights: trainable ones shifted, moving variances scaled (kept positive).
    Assigns them and returns the new values."""
    result = []
    for variable in weights:
        value = variable.numpy()
        if "moving_variance" in variable.path:
            value = value * rng.uniform(0.5, 2.0, value.shape)
        else:
            value = value + rng.normal(0.0, 0.05, value.shape)
        variable.assign(value.astype(np.float32))
        result.append(value.astype(np.float32))
    return result


def parse_train_command_line(argv):
    """`python -m deepnoise_tf.train`'s parser on `argv` (config loaded, overrides applied)."""
    from deepnoise_tf import config_flags

    parser = config_flags.argument_parser("python -m deepnoise_tf.train", "Trains one model.")
    return config_flags.parse_arguments(parser, argv)


def cli_error(capsys, argv) -> str:
    """The `prog: error: ...` line that a bad train command line ends with (exit 2, no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        parse_train_command_line(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("python -m deepnoise_tf.train: error: ")
    assert not any("Traceback" in line for line in lines)
    return lines[-1]
