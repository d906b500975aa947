"""The rxrx1 TFDS builder: both layouts, bit-exact images, exact statistics, bad input, Beam, the CLI."""

import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow_datasets as tfds
from conftest import channel_paths, read_png_stack
from PIL import Image

import tfds_rxrx1  # noqa: F401  (registers rxrx1)
from deepnoise_tf import constants, synthetic
from tfds_rxrx1.rxrx1 import pixels
from tfds_rxrx1.rxrx1.source import SourceError


def build(manual_dir, data_dir, config="native", **download_options):
    builder = tfds.builder(f"rxrx1/{config}", data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=str(manual_dir), try_download_gcs=False, **download_options
        )
    )
    return builder


def examples_by_site(builder) -> dict:
    out = {}
    for split in builder.info.splits:
        for example in tfds.as_numpy(builder.as_dataset(split=split)):
            key = f"{example['id_code'].decode()}_{example['site']}"
            assert key not in out, key
            out[key] = dict(example, split=split)
    return out


def reference_statistics(root, layout, truth, transform=lambda x: x) -> dict:
    """Pooled float64 mean/std per channel of every plate, experiment and cell type, by numpy."""
    pixels = {
        row.site_id: transform(read_png_stack(channel_paths(root, layout, row))).astype(np.float64)
        for row in truth.itertuples()
    }
    keys = {
        "plate": truth.experiment + "_" + truth.plate.astype(str),
        "experiment": truth.experiment,
        "cell_type": truth.cell_type,
    }
    out = {}
    for group, key in keys.items():
        for value in key.unique():
            stack = np.stack([pixels[s] for s in truth.site_id[key == value]])
            out[group, value] = (stack.mean(axis=(0, 1, 2)), stack.std(axis=(0, 1, 2)))
    return out, pixels, keys


def check_against_source(builder, root, layout, truth, transform=lambda x: x, rtol=1e-6):
    examples = examples_by_site(builder)
    assert set(examples) == set(truth.site_id)  # every source site in exactly one split
    statistics, pixels, keys = reference_statistics(root, layout, truth, transform)
    for index, row in enumerate(truth.itertuples()):
        example = examples[row.site_id]
        np.testing.assert_array_equal(example["image"], pixels[row.site_id].astype(np.uint8))
        assert example["split"] == row.dataset
        assert example["experiment"].decode() == row.experiment
        assert example["cell_type"].decode() == row.cell_type
        assert example["well_type"].decode() == row.well_type
        assert (example["plate"], example["well"].decode()) == (row.plate, row.well)
        hidden = layout == "kaggle" and row.dataset == "test" and row.well_type == "treatment"
        assert example["sirna"] == (constants.UNKNOWN_LABEL if hidden else row.sirna)
        for group in ("plate", "experiment", "cell_type"):
            mean, std = statistics[group, keys[group].iat[index]]
            np.testing.assert_allclose(example[f"{group}_mean"], mean, rtol=rtol)
            np.testing.assert_allclose(example[f"{group}_std"], std, rtol=rtol)


@pytest.fixture(scope="module")
def release_build(release_source, tmp_path_factory):
    root, _ = release_source
    return build(root, tmp_path_factory.mktemp("release_build"))


def test_release_layout_is_exact(release_source, release_build):
    root, truth = release_source
    assert release_build.info.splits["train"].num_examples == (truth.dataset == "train").sum()
    check_against_source(release_build, root, "release", truth)


def test_kaggle_layout_with_pixel_stats_is_exact(kaggle_source, tmp_path):
    root, truth = kaggle_source
    check_against_source(build(root, tmp_path, "native_zlib"), root, "kaggle", truth)


def test_kaggle_layout_without_pixel_stats(kaggle_source, tmp_path):
    root, truth = kaggle_source
    source = tmp_path / "source"
    shutil.copytree(root, source, ignore=shutil.ignore_patterns("pixel_stats.csv"))
    check_against_source(build(source, tmp_path / "out"), source, "kaggle", truth)


def block_average(image: np.ndarray, size: int) -> np.ndarray:
    """Independent area average: float64 block means rounded half up."""
    height = image.shape[0]
    factor = height // size
    blocks = image.astype(np.float64).reshape(size, factor, size, factor, -1).mean(axis=(1, 3))
    return np.floor(blocks + 0.5)


def test_downsampled_config_stores_area_average_and_its_statistics(tmp_path):
    truth = synthetic.write_dataset(
        tmp_path / "source", layout="release", preset="tiny", image_size=128,
        cell_types=("U2OS",), sirnas_per_group=1, positive_controls=1,
    )  # fmt: skip
    builder = build(tmp_path / "source", tmp_path / "out", config="64")
    check_against_source(
        builder, tmp_path / "source", "release", truth, transform=lambda x: block_average(x, 64)
    )


def test_downsample_non_integer_factor_is_an_area_average():
    image = np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)
    # 96 -> 64 is x2 nearest (192) then 3x3 block means: an exact area average by another route.
    expected = block_average(image.repeat(2, axis=0).repeat(2, axis=1)[..., None], 64)[..., 0]
    difference = np.abs(pixels.downsample(image, 64).astype(int) - expected)
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01  # only float ties may differ


def test_smaller_sources_are_not_upsampled(release_source, tmp_path):
    root, truth = release_source
    builder = build(root, tmp_path, config="128_zlib")
    example = next(iter(tfds.as_numpy(builder.as_dataset(split="train", shuffle_files=False))))
    assert example["image"].shape == (16, 16, 6)


def test_beam_direct_runner_matches_local_build(release_source, release_build, tmp_path):
    from apache_beam.options.pipeline_options import PipelineOptions

    root, _ = release_source
    beam_build = build(root, tmp_path, beam_options=PipelineOptions(["--runner=DirectRunner"]))
    local, distributed = examples_by_site(release_build), examples_by_site(beam_build)
    assert local.keys() == distributed.keys()
    for key, example in local.items():
        for name, value in example.items():
            np.testing.assert_array_equal(distributed[key][name], value, err_msg=f"{key} {name}")


@pytest.mark.slow
def test_tfds_cli_builds_kaggle_layout(kaggle_source, tmp_path):
    root, truth = kaggle_source
    command = [
        sys.executable, "-m", "tensorflow_datasets.scripts.cli.main", "build", "rxrx1",
        "--config", "native", "--imports", "tfds_rxrx1", "--manual_dir", str(root),
        "--data_dir", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    dataset = tfds.load("rxrx1", data_dir=str(tmp_path), split="train")
    assert len(dataset) == (truth.dataset == "train").sum()


# ---------------------------------------------------------------------------------------------------
# Bad input: a clear error naming the file or row, and no version tfds.load would take as complete.


@pytest.fixture(scope="module")
def small_release(tmp_path_factory):
    root = tmp_path_factory.mktemp("small_release")
    truth = synthetic.write_dataset(
        root, layout="release", preset="tiny", cell_types=("RPE",), sirnas_per_group=2,
        positive_controls=1,
    )  # fmt: skip
    return root, truth


def _some_png(root: pathlib.Path, name="B03_s2_w4.png") -> pathlib.Path:
    return next((root / "images").glob(f"*/Plate2/{name}"))


def _save(path, array, **kwargs):
    Image.fromarray(array, **kwargs).save(path)


def _edit_metadata(root, edit):
    metadata = pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False)
    edit(metadata).to_csv(root / "metadata.csv", index=False)


def _missing_png(root):
    path = _some_png(root)
    path.unlink()
    return path.name


def _empty_png(root):
    path = _some_png(root)
    path.write_bytes(b"")
    return path.name


def _truncated_png(root):
    path = _some_png(root)
    path.write_bytes(path.read_bytes()[:60])
    return path.name


def _corrupt_png(root):
    path = _some_png(root)
    data = bytearray(path.read_bytes())
    data[40:80] = bytes(40)
    path.write_bytes(bytes(data))
    return path.name


def _missing_channel(root):
    for path in (root / "images").glob("*/Plate3/B04_s1_w6.png"):
        path.unlink()
    return "B04_s1_w6.png"


def _mixed_sizes(root):
    path = _some_png(root)
    _save(path, np.random.default_rng(0).integers(10, 200, (20, 20), dtype=np.uint8))
    return path.name


def _sixteen_bit(root):
    path = _some_png(root)
    values = np.random.default_rng(0).integers(0, 60000, (16, 16)).astype(np.uint16)
    Image.fromarray(values).save(path)
    return "16-bit"


def _colour(root):
    path = _some_png(root)
    _save(path, np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    return "colour"


def _constant_channel(root):
    path = _some_png(root)
    _save(path, np.full((16, 16), 7, np.uint8))
    return "constant"


def _row_without_images(root):
    def edit(metadata):
        extra = metadata.iloc[[0]].copy()
        extra["well"] = "O23"
        extra["well_id"] = extra["experiment"] + "_" + extra["plate"] + "_O23"
        extra["site_id"] = extra["well_id"] + "_" + extra["site"]
        return pd.concat([metadata, extra], ignore_index=True)

    _edit_metadata(root, edit)
    return "has no images"


def _images_without_row(root):
    _edit_metadata(root, lambda metadata: metadata.iloc[1:])
    return "B02_s1_w1.png has no metadata row"


def _duplicate_id(root):
    _edit_metadata(root, lambda metadata: pd.concat([metadata, metadata.iloc[[3]]]))
    return "duplicate id"


def _unknown_cell_type(root):
    def edit(metadata):
        metadata.loc[5, "cell_type"] = "HELA"
        return metadata

    _edit_metadata(root, edit)
    return "metadata.csv:7: cell_type='HELA'"


def _wrong_manual_dir(root):
    shutil.rmtree(root / "images")
    (root / "metadata.csv").unlink()
    (root / "notes.txt").write_text("not RxRx1")
    return "holds neither RxRx1 layout"


def _empty_manual_dir(root):
    shutil.rmtree(root / "images")
    (root / "metadata.csv").unlink()
    return "missing or empty"


BAD_INPUTS = {
    "missing_png": _missing_png,
    "empty_png": _empty_png,
    "truncated_png": _truncated_png,
    "corrupt_png": _corrupt_png,
    "missing_channel": _missing_channel,
    "mixed_sizes": _mixed_sizes,
    "sixteen_bit": _sixteen_bit,
    "colour": _colour,
    "constant_channel": _constant_channel,
    "row_without_images": _row_without_images,
    "images_without_row": _images_without_row,
    "duplicate_id": _duplicate_id,
    "unknown_cell_type": _unknown_cell_type,
    "wrong_manual_dir": _wrong_manual_dir,
    "empty_manual_dir": _empty_manual_dir,
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_clearly_and_leaves_nothing_complete(case, small_release, tmp_path):
    root, _ = small_release
    source = tmp_path / "source"
    shutil.copytree(root, source)
    expected = BAD_INPUTS[case](source)
    with pytest.raises(SourceError) as error:
        build(source, tmp_path / "out")
    assert expected in str(error.value), str(error.value)
    if case not in (
        "wrong_manual_dir",
        "empty_manual_dir",
        "sixteen_bit",
        "colour",
        "constant_channel",
    ):
        assert str(source) in str(error.value)  # names the file or row
    assert not tfds.builder("rxrx1", data_dir=str(tmp_path / "out")).is_prepared()
    assert not list((tmp_path / "out").glob("rxrx1/*/1.0.0"))
    with pytest.raises(Exception):  # noqa: B017  (any refusal will do: nothing to load)
        tfds.load("rxrx1", data_dir=str(tmp_path / "out"), download=False)


def test_kaggle_unknown_cell_type_and_duplicates_name_the_row(kaggle_source, tmp_path):
    root, _ = kaggle_source
    source = tmp_path / "source"
    shutil.copytree(root, source)
    controls = pd.read_csv(source / "train_controls.csv")
    pd.concat([controls, controls.iloc[[2]]]).to_csv(source / "train_controls.csv", index=False)
    with pytest.raises(SourceError, match="duplicate id .*train_controls.csv"):
        build(source, tmp_path / "out")
    controls.to_csv(source / "train_controls.csv", index=False)
    train = pd.read_csv(source / "train.csv")
    train.loc[0, "experiment"] = "HELA-01"
    train.to_csv(source / "train.csv", index=False)
    with pytest.raises(SourceError, match="train.csv:2: cell_type='HELA'"):
        build(source, tmp_path / "out")
