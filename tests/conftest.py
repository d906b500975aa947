"""Shared fixtures: tiny synthetic RxRx1 sources in both layouts and helpers to build and read them."""

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from deepnoise_tf import constants, synthetic


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
        [sys.executable, "-c", _FRESH_PROCESS, str(model_dir), str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    with np.load(tmp_path / "out.npz") as served:
        return {name: served[name] for name in served.files}
