"""Shared fixtures: tiny synthetic RxRx1 sources in both layouts and helpers to build and read them."""

import pathlib

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
