"""The run folder: what every command writes where, one completion marker, atomic writes.

Every folder that holds a finished piece of work (a training run, a pipeline stage, an ablation
step's evaluation, an export) gets `done.json` written last, atomically: a folder with that file is
complete and is never redone; a folder without it is resumed or redone. Every file a rerun might
read is written through a temporary file and a rename, so a kill never leaves half a file behind.

A training folder (`deepnoise_tf.training.run`) holds `config.json`, `split_index.json`,
`metrics.csv`, `tensorboard/`, `backup/` (while training), `checkpoints/{best,last}.weights.h5`,
`fit_finished.json` (when `fit` ended; `deepnoise_tf.resume`), `export/` and `done.json`.
"""

from __future__ import annotations

import json
import os
import pathlib

import ml_collections
import numpy as np
import pandas as pd

DONE_FILE = "done.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
CHECKPOINTS = ("best.weights.h5", "last.weights.h5")  # preference order of the weights to use

# ------------------------------------------------------------------------------------------------
# Atomic writes


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | set):
        return list(value)
    if isinstance(value, pathlib.Path):
        return str(value)
    raise TypeError(f"cannot write {type(value)} to JSON")


def write_text(path, text: str) -> pathlib.Path:
    """Writes `text` through a temporary file and a rename (creating the folder)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
    return path


def write_json(path, value) -> pathlib.Path:
    """JSON (numpy scalars, tuples and paths converted), written atomically."""
    return write_text(path, json.dumps(value, indent=2, default=_json_default))


def read_json(path) -> dict:
    """A JSON file; the error names the file when it is not valid JSON."""
    path = pathlib.Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error}); delete it to redo that step"
        ) from error


def write_csv(frame: pd.DataFrame, path) -> pathlib.Path:
    """A table without its index, written atomically."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    frame.to_csv(temporary, index=False)
    os.replace(temporary, path)
    return path


def write_npz(path, **arrays) -> pathlib.Path:
    """`np.savez` written atomically (object arrays stored as strings)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp.npz")
    arrays = {
        # `dtype.kind`, not `is np.dtype(object)`: an unpickled array's dtype is an equal copy
        name: value.astype(str)
        if getattr(getattr(value, "dtype", None), "kind", "") == "O"
        else value
        for name, value in arrays.items()
    }
    np.savez(temporary, **arrays)
    os.replace(temporary, path)
    return path


# ------------------------------------------------------------------------------------------------
# The completion marker


def read_done(directory) -> dict | None:
    """The record of a finished folder, or None when the work there has not finished."""
    path = pathlib.Path(directory) / DONE_FILE
    return read_json(path) if path.is_file() else None


def mark_done(directory, record: dict) -> dict:
    """Writes the folder's completion record last (atomically); returns it."""
    write_json(pathlib.Path(directory) / DONE_FILE, record)
    return record


# ------------------------------------------------------------------------------------------------
# Config records


def config_dict(config) -> dict:
    """A config as plain JSON types (what `config.json` holds)."""
    from deepnoise_tf import config as config_lib

    return json.loads(config_lib.to_json(config))


def write_config(directory, config, name: str = CONFIG_FILE) -> pathlib.Path:
    from deepnoise_tf import config as config_lib

    return write_text(pathlib.Path(directory) / name, config_lib.to_json(config))


def read_config(directory, name: str = CONFIG_FILE) -> ml_collections.ConfigDict:
    """The config a run folder was made with."""
    path = pathlib.Path(directory) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {directory} a deepnoise_tf run folder?")
    return ml_collections.ConfigDict(read_json(path))


def fill_missing(stored: dict, reference: dict) -> dict:
    """`stored` with every key it lacks taken from `reference` (recursively).

    A field added to the package after a run was made then reads as its default, not as a change.
    """
    filled = dict(stored)
    for key, value in reference.items():
        if key not in filled:
            filled[key] = value
        elif isinstance(value, dict) and isinstance(filled[key], dict):
            filled[key] = fill_missing(filled[key], value)
    return filled


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """`"path: old -> new"` for every dotted field whose value differs between two config dicts."""
    differences = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differences += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            differences.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return differences


def config_drift(directory, config, name: str = CONFIG_FILE, allowed=()) -> list[str]:
    """Fields where the config a folder was made with differs from `config` (none if no record).

    Keys missing from the stored record are filled from the package defaults first. `allowed`:
    dotted fields (or prefixes ending in ".") that may change without counting as drift.
    """
    from deepnoise_tf import config as config_lib

    path = pathlib.Path(directory) / name
    if not path.is_file():
        return []
    defaults = config_dict(config_lib.default_config())
    stored = fill_missing(read_json(path), defaults)
    new = fill_missing(config_dict(config), defaults)
    return [
        difference
        for difference in config_differences(stored, new)
        if not any(
            difference.split(":")[0] == field
            or (field.endswith(".") and difference.startswith(field))
            for field in allowed
        )
    ]


# ------------------------------------------------------------------------------------------------
# Reading a training folder


def checkpoint(directory) -> pathlib.Path:
    """The weights to use: the best by validation accuracy, else the last."""
    folder = pathlib.Path(directory) / "checkpoints"
    for name in CHECKPOINTS:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder} holds none of {list(CHECKPOINTS)}")


def read_metrics(path) -> pd.DataFrame:
    """`metrics.csv` of a run, one row per epoch in order.

    A resumed run appends to the file; an epoch logged twice (killed between the log line and the
    backup) keeps its last row.
    """
    metrics = pd.read_csv(path)
    if "epoch" not in metrics.columns:
        raise ValueError(f"{path} has no 'epoch' column (columns: {list(metrics.columns)})")
    metrics = metrics.drop_duplicates("epoch", keep="last").sort_values("epoch")
    return metrics.reset_index(drop=True)


def metric_kind(name: str) -> str:
    """`accuracy`, `loss` or `schedule` (learning rate, consistency weight, anything else)."""
    if name.endswith("accuracy"):
        return "accuracy"
    if name.endswith("loss"):
        return "loss"
    return "schedule"


def metrics_summary(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per metric: the last value, the best (max accuracy, min loss) and its 1-based epoch."""
    rows = []
    for name in metrics.columns:
        values = pd.to_numeric(metrics[name], errors="coerce")
        if name == "epoch" or values.isna().all():
            continue
        kind = metric_kind(name)
        if kind == "schedule":
            best, best_epoch = np.nan, np.nan
        else:
            index = values.idxmax() if kind == "accuracy" else values.idxmin()
            best, best_epoch = float(values[index]), int(metrics["epoch"][index]) + 1
        rows.append((name, kind, float(values.iloc[-1]), best, best_epoch))
    summary = pd.DataFrame(rows, columns=["metric", "kind", "last", "best", "best_epoch"])
    summary["best_epoch"] = summary["best_epoch"].astype("Int64")  # schedules have none
    return summary
