"""The command lines: bundled configs by name (also from a built wheel), quiet by default, checks
before work, help text. Subprocess and wheel tests are marked slow (each starts a Python or a build)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

from deepnoise_tf import (
    ablation,
    cli,
    config_flags,
    embed,
    finetune,
    pipeline,
    predict,
    quiet,
    report,
    train,
)
from deepnoise_tf import config as config_lib
from deepnoise_tf import ensemble as ensemble_command

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_NAMES = sorted(path.name for path in (ROOT / "configs").glob("*.py"))
COMMANDS = {
    "train": train.main,
    "finetune": finetune.main,
    "pipeline": pipeline.main,
    "ablation": ablation.main,
    "predict": predict.main,
    "embed": embed.main,
    "report": report.main,
    "ensemble": ensemble_command.main,
}


@pytest.fixture(autouse=True)
def _restore_tf_log_level(monkeypatch):
    """Commands run here set TF_CPP_MIN_LOG_LEVEL (`quiet.configure`); undone after each test."""
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)


def cli_error(capsys, command, argv) -> str:
    """The last stderr line of a command that must stop with a usage error (exit status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        command(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


# ------------------------------------------------------------------------------------------------
# 1. Bundled configs


def test_bundled_configs_load_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_lib.bundled_config_names() == CONFIG_NAMES
    for spec in ("quickstart.py", "model3_mean_teacher.py:cpu", "deepnoise.py:cpu"):
        path, _, variant = spec.partition(":")
        by_path = config_lib.load(
            f"{ROOT / 'configs' / path}:{variant}" if variant else str(ROOT / "configs" / path)
        )
        assert config_lib.load(spec).to_dict() == by_path.to_dict()
    assert config_lib.load("quickstart").to_dict() == config_lib.load("quickstart.py").to_dict()
    arguments, config = config_flags.parse_arguments(
        config_flags.argument_parser("prog", "description"),
        ["--config", "model3_mean_teacher.py:cpu", "--workdir", "w", "--config.train.epochs=2"],
    )
    assert config.train.epochs == 2 and arguments.workdir == "w"


def test_a_file_in_the_working_folder_wins_over_a_bundled_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart.py").write_text(
        "from deepnoise_tf.config import default_config\n\n"
        "def get_config():\n    config = default_config()\n    config.train.epochs = 7\n    return config\n"
    )
    assert config_lib.load("quickstart.py").train.epochs == 7


def test_unknown_config_name_lists_the_bundled_configs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        config_lib.load("quickstrat.py:cpu")
    message = str(error.value)
    assert "'quickstrat.py'" in message and "did you mean 'quickstart.py'?" in message
    assert message.endswith(", ".join(CONFIG_NAMES))
    line = cli_error(capsys, train.main, ["--config", "nope.py", "--workdir", "w"])
    assert "bundled configs" in line and "quickstart.py" in line
    # A path names exactly that file: no fallback to the bundled one of the same name.
    with pytest.raises(FileNotFoundError, match="does not exist$"):
        config_lib.load("elsewhere/quickstart.py")


def test_ablation_steps_read_the_bundled_configs_from_any_folder(tmp_path, monkeypatch):
    from deepnoise_tf import ablation_steps

    monkeypatch.chdir(tmp_path)
    step = next(step for step in ablation_steps.STEPS if step.trains)
    bundled = ablation_steps.step_config(step)
    explicit = ablation_steps.step_config(step, configs_dir=ROOT / "configs")
    assert bundled.to_dict() == explicit.to_dict()
    arguments, _ = ablation.parse_command_line(["--workdir", "w"])
    assert arguments.configs_dir == ""  # run_ablation then reads the bundled configs


@pytest.mark.slow
def test_the_wheel_carries_the_configs_and_every_module(tmp_path):
    """A plain (non-editable) wheel, built from a copy of the tree, holds configs/ as
    deepnoise_tf/configs; unpacked alone (an install), `--config quickstart.py` resolves there."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("configs", "deepnoise_tf", "tfds_rxrx1"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, "-w", str(tmp_path / "wheel"), str(source)], check=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "wheel").glob("deepnoise_tf-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"deepnoise_tf/configs/{name}" for name in CONFIG_NAMES} <= names
    sources = [path.relative_to(ROOT).as_posix() for package in ("deepnoise_tf", "tfds_rxrx1")
               for path in (ROOT / package).rglob("*.py") if "dummy_data" not in path.parts]  # fmt: skip
    assert set(sources) <= names, sorted(set(sources) - names)
    assert {"tfds_rxrx1/rxrx1/README.md", "tfds_rxrx1/rxrx1/checksums.tsv"} <= names

    installed = tmp_path / "installed"
    zipfile.ZipFile(wheel).extractall(installed)
    probe = (
        "from deepnoise_tf import config; "
        "print(config.bundled_configs_dir()); print(config.load('model3_mean_teacher.py:cpu').train.epochs)"
    )
    environment = {**os.environ, "PYTHONPATH": str(installed)}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    folder, epochs = result.stdout.split()
    assert pathlib.Path(folder) == installed / "deepnoise_tf" / "configs" and int(epochs) > 0


# ------------------------------------------------------------------------------------------------
# 2. Quiet by default

_NOISE_SCRIPT = """
import sys
from deepnoise_tf import predict
try:
    predict.main(sys.argv[1:])  # stops at the data check, after importing TensorFlow
except SystemExit as stop:
    print("exit status", stop.code, file=sys.stderr)
import keras, numpy as np, tensorflow as tf, tensorflow_datasets as tfds
tfds.features.Tensor(shape=(), dtype=np.int32).dtype  # TFDS's own readers do this
model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
model.compile(loss="mse")
pairs = tf.data.Dataset.from_tensor_slices((np.zeros((4, 1)), np.zeros((4, 1)))).batch(2)
model.fit(pairs, epochs=1, steps_per_epoch=3, verbose=0)  # 2 batches for 3 steps: runs out
"""
_NOISE = (
    "cpu_feature_guard",
    "absl::InitializeLog",
    "FeatureConnector.dtype` is deprecated",
    "ran out of data",
)


@pytest.mark.slow
def test_commands_are_quiet_unless_verbose(tmp_path):
    """Two fresh interpreters (TensorFlow reads its log level once, at import), run side by side."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"")
    argv = [
        "--model",
        str(model),
        "--data_dir",
        str(tmp_path / "empty"),
        "--output",
        str(tmp_path / "o.csv"),
    ]
    environment = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT), environment.get("PYTHONPATH", "")])
    runs = {
        verbose: subprocess.Popen(
            [sys.executable, "-c", _NOISE_SCRIPT, *argv, *(["--verbose"] if verbose else [])],
            cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for verbose in (False, True)
    }  # fmt: skip
    outputs = {verbose: run.communicate(timeout=600)[0] for verbose, run in runs.items()}
    for output in outputs.values():
        assert "no rxrx1 config is built in" in output and "tfds build rxrx1" in output, output
        assert "exit status 2" in output, output
    assert not [
        line for line in outputs[False].splitlines() if any(noise in line for noise in _NOISE)
    ]
    assert "FeatureConnector.dtype` is deprecated" in outputs[True]
    assert "ran out of data" in outputs[True]


def test_configure_filters_only_the_known_messages(monkeypatch):
    import logging
    import warnings

    assert quiet.configure(["--verbose"]) is True and "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # the user's choice is kept
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert quiet.configure([]) is False
        quiet.configure([])
        warnings.warn(
            "Your input ran out of data; interrupting training.", UserWarning, stacklevel=1
        )
        warnings.warn(
            "Can save best model only with val_teacher_well_accuracy available, skipping.",
            UserWarning, stacklevel=1,
        )  # fmt: skip
        warnings.warn("another warning", UserWarning, stacklevel=1)
        warnings.warn("Model can save best model only with x", UserWarning, stacklevel=1)
    assert [str(warning.message) for warning in caught] == [
        "another warning", "Model can save best model only with x"
    ]  # fmt: skip
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    absl = logging.getLogger("absl")
    assert absl.filters.count(quiet._drop_known_absl_warnings) == 1
    record = absl.makeRecord(
        "absl", logging.WARNING, "f", 1, "`FeatureConnector.dtype` is deprecated.", (), None
    )
    assert not absl.filter(record)
    assert absl.filter(absl.makeRecord("absl", logging.WARNING, "f", 1, "other", (), None))


@pytest.mark.parametrize(
    "line, noise",
    [
        (
            "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
            True,
        ),
        (
            "I0000 00:00:1796513247.164177    8124 port.cc:153] oneDNN custom operations are on.\n",
            True,
        ),
        (
            "I1205 23:25:56.779890 6542 cpu_feature_guard.cc:227] This TensorFlow binary is optimized\n",
            True,
        ),
        ("W0000 00:00:1796513247.164177    8124 port.cc:153] a C++ warning\n", False),
        ("E0000 00:00:1796513247.164177    8124 cuda_dnn.cc:8] an error\n", False),
        ("Information: I0000 is not at the start of this line\n", False),
        ("Traceback (most recent call last):\n", False),
    ],
)
def test_only_cpp_info_records_and_the_absl_preamble_are_import_noise(line, noise):
    """What the captured `import tensorflow` drops: level-1 semantics (INFO) and absl's preamble."""
    assert quiet._is_import_noise(line) is noise


# ------------------------------------------------------------------------------------------------
# 3. predict and embed check before they work


@pytest.fixture
def fake_model(tmp_path):
    """Enough of a SavedModel folder for the checks (they only look for saved_model.pb)."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"")
    return str(model)


def test_output_and_model_are_checked_first(tmp_path, fake_model, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    common = ["--data_dir", str(tmp_path / "never_read")]
    line = cli_error(
        capsys, predict.main, ["--model", fake_model, *common, "--output", str(tmp_path / "s.txt")]
    )
    assert line.endswith("must end in .csv")
    line = cli_error(
        capsys, predict.main, ["--model", fake_model, *common, "--output", str(blocker / "s.csv")]
    )
    assert "cannot write to" in line
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    line = cli_error(
        capsys, predict.main, ["--model", fake_model, *common, "--output", str(folder)]
    )
    assert "is a folder" in line
    line = cli_error(
        capsys,
        predict.main,
        ["--model", str(tmp_path), *common, "--output", str(tmp_path / "s.csv")],
    )
    assert "is not a SavedModel folder" in line
    line = cli_error(
        capsys, embed.main, ["--model", fake_model, *common, "--output", str(tmp_path / "e.csv")]
    )
    assert line.endswith("must end in .npz or .parquet or .h5ad")
    assert not (tmp_path / "never_read").exists()


def _fake_build(data_dir: pathlib.Path, config: str, version: str = "1.0.0") -> None:
    folder = data_dir / "rxrx1" / config / version
    folder.mkdir(parents=True)
    (folder / "dataset_info.json").write_text("{}")


def test_built_configs_are_found_and_unfinished_builds_ignored(tmp_path, capsys):
    from deepnoise_tf import data

    parser = cli.new_parser("prog", "description")
    assert data.built_configs(tmp_path) == []
    line = cli_error(capsys, lambda _: cli.resolve_builder(parser, str(tmp_path), ""), [])
    assert f"no rxrx1 config is built in '{tmp_path}'" in line
    assert (
        f"tfds build rxrx1 --imports tfds_rxrx1 --manual_dir /path/to/rxrx1 --data_dir {tmp_path}"
        in line
    )
    _fake_build(tmp_path, "64")
    _fake_build(tmp_path, "native", version="incomplete.AB12CD_1.0.0")  # a build still running
    assert data.built_configs(tmp_path) == ["rxrx1/64"]
    assert cli.resolve_builder(parser, str(tmp_path), "") == "rxrx1/64"
    assert "reading rxrx1/64" in capsys.readouterr().out
    _fake_build(tmp_path, "128_zlib")
    assert data.built_configs(str(tmp_path)) == ["rxrx1/128_zlib", "rxrx1/64"]
    line = cli_error(capsys, lambda _: cli.resolve_builder(parser, str(tmp_path), ""), [])
    assert "several rxrx1 configs (rxrx1/128_zlib, rxrx1/64); choose one with --builder" in line


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A tiny synthetic rxrx1/native (splits train and test)."""
    from deepnoise_tf import synthetic

    data_dir = tmp_path_factory.mktemp("tiny_data")
    return str(data_dir), synthetic.prepare_tfds(data_dir, preset="tiny")


def test_missing_splits_and_unbuilt_builders_are_errors(tiny_data, fake_model, tmp_path, capsys):
    data_dir, builder = tiny_data
    argv = ["--model", fake_model, "--data_dir", data_dir, "--output", str(tmp_path / "s.csv")]
    with pytest.raises(SystemExit):
        predict.main([*argv, "--groups_split", "validation"])
    out, err = capsys.readouterr()
    assert f"reading {builder}, the rxrx1 config built in {data_dir}" in out
    assert (
        err.strip()
        .splitlines()[-1]
        .endswith(
            f"--groups_split 'validation': {builder} in '{data_dir}' has no split 'validation'; "
            "its splits: train, test"
        )
    )
    line = cli_error(capsys, predict.main, [*argv, "--split", "tset[:10%]"])
    assert "--split 'tset[:10%]'" in line and "no split 'tset'" in line
    line = cli_error(capsys, embed.main, [*argv[:-1], str(tmp_path / "e.npz"), "--split", "valid"])
    assert "no split 'valid'" in line
    line = cli_error(capsys, predict.main, [*argv, "--builder", "rxrx1/64"])
    assert line.endswith(f"--builder rxrx1/64: not built in '{data_dir}'; built there: {builder}")
    assert not (tmp_path / "s.csv").exists()


# ------------------------------------------------------------------------------------------------
# 4. Help


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_shows_verbose_defaults_and_overrides(name, capsys, monkeypatch):
    helps = {}
    format_help = cli.HelpFormatter._get_help_string

    def recording(formatter, action):
        helps[action.dest] = action.help
        return format_help(formatter, action)

    monkeypatch.setattr(cli.HelpFormatter, "_get_help_string", recording)
    monkeypatch.setenv("COLUMNS", "200")  # one line per option
    with pytest.raises(SystemExit) as exit_info:
        COMMANDS[name](["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert {dest for dest, help_text in helps.items() if not help_text} == set(), text
    assert "--verbose" in text
    if name in ("train", "finetune", "pipeline", "ablation"):
        assert "--config.<field>=<value>" in text
    if name in ("train", "finetune", "pipeline"):
        assert "quickstart.py" in text  # the bundled configs, usable by name
    if name == "predict":
        assert "(default: test)" in text and "(default: 64)" in text and "(default: assign)" in text
