"""The repository's one formatter and linter (ruff, configured in pyproject.toml) report nothing."""

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def ruff(*arguments):
    executable = shutil.which("ruff") or str(pathlib.Path(sys.executable).with_name("ruff"))
    if not pathlib.Path(executable).exists():
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    return subprocess.run([executable, *arguments], cwd=ROOT, capture_output=True, text=True)


def test_code_is_formatted():
    result = ruff("format", "--check", ".")
    assert result.returncode == 0, (
        f"run `ruff format .`:\n{result.stdout[-3000:]}{result.stderr[-1000:]}"
    )


def test_lint_is_clean():
    result = ruff("check", ".")
    assert result.returncode == 0, (
        f"run `ruff check .`:\n{result.stdout[-3000:]}{result.stderr[-1000:]}"
    )
