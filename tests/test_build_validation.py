"""Nothing lost, nothing silent: every fault of a source is reported, all at once, before writing.

Each test injects a fault into a small synthetic source (the `tiny` preset) and checks the message names
the file or row and the fix. Own fixtures: tests/conftest.py is shared and changes separately.
"""

import logging
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import tfds_rxrx1  # noqa: F401  (registers rxrx1)
from deepnoise_tf import synthetic
from tfds_rxrx1.rxrx1 import rxrx1_dataset_builder, validation
from tfds_rxrx1.rxrx1.source import SourceError, read_source

CARD = pathlib.Path(tfds_rxrx1.__file__).parent / "rxrx1" / "README.md"
SMALL = dict(preset="tiny", cell_types=("RPE",), sirnas_per_group=2, positive_controls=1)


@pytest.fixture(scope="module")
def release_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    synthetic.write_dataset(root, layout="release", seed=1, **SMALL)
    return root


@pytest.fixture(scope="module")
def kaggle_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("kaggle")
    synthetic.write_dataset(root, layout="kaggle", seed=2, pixel_stats=True, **SMALL)
    return root


@pytest.fixture
def release(release_root, tmp_path):
    """A private copy to break."""
    shutil.copytree(release_root, tmp_path / "source")
    return tmp_path / "source"


@pytest.fixture
def kaggle(kaggle_root, tmp_path):
    shutil.copytree(kaggle_root, tmp_path / "source")
    return tmp_path / "source"


def build(manual_dir, data_dir, config="native"):
    builder = tfds.builder(f"rxrx1/{config}", data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=str(manual_dir), try_download_gcs=False
        )
    )
    return builder


def build_error(manual_dir, data_dir) -> str:
    with pytest.raises(SourceError) as error:
        build(manual_dir, data_dir)
    assert not list(pathlib.Path(data_dir).glob("rxrx1/*/1.0.0")), "a failed build left a version"
    return str(error.value)


def pngs(root, pattern) -> list[pathlib.Path]:
    return sorted(root.glob(f"*/*/Plate*/{pattern}"))


def save(path, array):
    Image.fromarray(array).save(path)


# ---------------------------------------------------------------------------------------------------
# 1. The card's first build command builds one config.


def card_commands() -> list[str]:
    """The `tfds build` lines of the card's Building section, continuation lines joined."""
    text = CARD.read_text().split("## Building", 1)[1].split("```")[1]
    return [line for line in text.replace("\\\n", " ").splitlines() if "tfds build" in line]


def test_card_first_command_builds_only_the_native_config(release_root, tmp_path):
    first = card_commands()[0].split("#")[0]
    assert "rxrx1/native" in first.split()  # `tfds build rxrx1` alone would build all 7 configs
    arguments = shlex.split(first.replace("DIR", str(release_root)).replace("OUT", str(tmp_path)))
    assert arguments[:2] == ["tfds", "build"]
    command = [sys.executable, "-m", "tensorflow_datasets.scripts.cli.main", *arguments[1:]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    configs = sorted(path.name for path in (tmp_path / "rxrx1").iterdir())
    assert [name for name in configs if not name.startswith(".")] == ["native"]  # .config: TFDS's
    assert (tmp_path / "rxrx1" / "native" / "1.0.0" / "dataset_info.json").exists()


# ---------------------------------------------------------------------------------------------------
# 2. Every bad file in one error, before anything is written; the validate-only command.


def break_four_files(root) -> list[pathlib.Path]:
    files = pngs(root, "B0*_s*_w*.png")
    truncated, corrupt, colour, sixteen_bit = files[3], files[20], files[41], files[70]
    truncated.write_bytes(truncated.read_bytes()[:60])
    data = bytearray(corrupt.read_bytes())
    data[40:80] = bytes(40)
    corrupt.write_bytes(bytes(data))
    save(colour, np.full((16, 16, 3), 9, np.uint8))
    save(sixteen_bit, np.arange(256, dtype=np.uint16).reshape(16, 16) * 200)
    return [truncated, corrupt, colour, sixteen_bit]


def test_all_bad_files_are_reported_at_once_before_writing(release, tmp_path, monkeypatch):
    broken = break_four_files(release)

    def no_writing(*args, **kwargs):
        raise AssertionError("an example was made before the source was validated")

    monkeypatch.setattr(rxrx1_dataset_builder, "make_example", no_writing)
    message = build_error(release, tmp_path / "out")
    assert message.startswith("4 problems")
    for path in broken:
        assert str(path) in message
    assert "truncated or corrupt" in message and "colour" in message and "16-bit" in message


def test_constant_channels_of_all_sites_in_one_error(release, tmp_path):
    blank = pngs(release, "B02_s1_w3.png")[:2]
    for path in blank:
        save(path, np.full((16, 16), 5, np.uint8))
    message = build_error(release, tmp_path / "out")
    assert all(str(path) in message for path in blank) and "constant" in message


def test_validate_command_reports_without_writing(release, capsys):
    assert validation.main(["--manual_dir", str(release), "--decode"]) == 0
    assert "OK:" in capsys.readouterr().out
    broken = break_four_files(release)
    assert validation.main(["--manual_dir", str(release)]) == 1
    error = capsys.readouterr().err
    assert all(str(path) in error for path in broken)


def test_validate_command_runs_as_a_module(release_root):
    command = [
        sys.executable,
        "-m",
        "tfds_rxrx1.rxrx1.validation",
        "--manual_dir",
        str(release_root),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "release layout" in result.stdout


# ---------------------------------------------------------------------------------------------------
# 3. pixel_stats.csv is checked against the pixels.


def test_wrong_pixel_stats_is_refused_by_name(kaggle, tmp_path):
    stats = pd.read_csv(kaggle / "pixel_stats.csv")
    plate = (stats.experiment == stats.experiment.iat[0]) & (stats.plate == 2)
    stats.loc[plate, "mean"] *= 3
    stats.to_csv(kaggle / "pixel_stats.csv", index=False, float_format="%.17g")
    message = build_error(kaggle, tmp_path / "out")
    assert str(kaggle / "pixel_stats.csv") in message
    assert f"plate/{stats.experiment.iat[0]}_2" in message and "mean" in message
    assert "200.0%" in message  # the largest disagreement: 3x


def test_validate_decode_checks_pixel_stats(kaggle, capsys):
    stats = pd.read_csv(kaggle / "pixel_stats.csv")
    stats.loc[stats.plate == 1, "std"] *= 0.5
    stats.to_csv(kaggle / "pixel_stats.csv", index=False, float_format="%.17g")
    assert validation.main(["--manual_dir", str(kaggle)]) == 0  # headers only: not decoded
    capsys.readouterr()
    assert validation.main(["--manual_dir", str(kaggle), "--decode"]) == 1
    assert "pixel_stats.csv disagrees" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# 4. Misleading messages made precise.


def test_kaggle_id_code_disagreeing_with_its_columns(kaggle, tmp_path):
    train = pd.read_csv(kaggle / "train.csv", dtype=str, keep_default_na=False)
    wrong = train.id_code.iat[1].rsplit("_", 1)[0] + "_O23"
    train.loc[1, "id_code"] = wrong
    train.to_csv(kaggle / "train.csv", index=False)
    message = build_error(kaggle, tmp_path / "out")
    assert f"{kaggle / 'train.csv'}:3: id_code is {wrong!r}" in message
    assert (
        repr(train.experiment.iat[1] + "_" + train.plate.iat[1] + "_" + train.well.iat[1])
        in message
    )


def test_extra_site_is_unexpected_not_a_missing_site_elsewhere(kaggle, tmp_path):
    for path in pngs(kaggle, "B02_s1_w*.png")[:6]:
        shutil.copy(path, path.with_name(path.name.replace("_s1_", "_s3_")))
    message = build_error(kaggle, tmp_path / "out")
    assert "unexpected site number s3" in message and "_s3_w1.png" in message
    assert "missing" not in message and "has no images" not in message


def test_mixed_sizes_name_the_odd_files_not_the_first(release, tmp_path):
    _, sites = read_source(release)
    first = pathlib.Path(sites[0].paths[0])  # the file an earlier version took as the reference
    odd = [first, pngs(release, "B03_s2_w5.png")[-1]]
    for path in odd:
        save(path, np.random.default_rng(0).integers(10, 200, (20, 20), dtype=np.uint8))
    message = build_error(release, tmp_path / "out")
    assert message.startswith("2 problems")
    lines = [line for line in message.splitlines() if "mixed image sizes" in line]
    assert sorted(line.split()[0] for line in lines) == sorted(map(str, odd))
    assert all("is 20x20 but" in line and "are 16x16" in line for line in lines)


def test_upper_case_png_is_named_as_a_case_problem(release, tmp_path):
    path = pngs(release, "B03_s2_w4.png")[0]
    path.rename(path.with_suffix(".PNG"))
    message = build_error(release, tmp_path / "out")
    assert str(path.with_suffix(".PNG")) in message and "upper/lower case" in message


def test_whitespace_in_a_csv_is_named(release, tmp_path):
    metadata = pd.read_csv(release / "metadata.csv", dtype=str, keep_default_na=False)
    metadata.loc[4, "experiment"] += " "
    metadata.to_csv(release / "metadata.csv", index=False)
    message = build_error(release, tmp_path / "out")
    assert f"{release / 'metadata.csv'}:6: experiment=" in message and "whitespace" in message


def test_manual_dir_that_is_a_file(release, tmp_path):
    message = build_error(release / "metadata.csv", tmp_path / "out")
    assert "is a file, not a folder" in message


# ---------------------------------------------------------------------------------------------------
# 5, 6. Stale incomplete folders are removed; long passes log progress.


def test_stale_incomplete_folders_are_removed_and_progress_logged(release_root, tmp_path, caplog):
    stale = tmp_path / "rxrx1" / "native" / "incomplete.ABC123_1.0.0"
    other_version = tmp_path / "rxrx1" / "native" / "incomplete.XYZ789_0.9.0"
    other_config = tmp_path / "rxrx1" / "64" / "incomplete.QWE456_1.0.0"
    for folder in (stale, other_version, other_config):
        folder.mkdir(parents=True)
        (folder / "rxrx1-train.tfrecord-00000-of-00001").write_bytes(b"partial")
    with caplog.at_level(logging.INFO):
        build(release_root, tmp_path)
    assert not stale.exists() and other_version.exists() and other_config.exists()
    assert not list((tmp_path / "rxrx1" / "native").glob("incomplete.*_1.0.0"))
    log = caplog.text
    assert f"removing {stale}" in log
    sites = 64
    assert re.search(rf"statistics pass, sites: {sites}/{sites} \(100%\)", log), log[-2000:]
    assert f"image check, files: {6 * sites}/{6 * sites}" in log
