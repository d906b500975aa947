"""What a rerun of `training.run` finds in a training folder: how far it got, and what it cannot use.

A folder without `done.json` is in one of three states:
  fresh: nothing trained yet;
  interrupted: `backup/` (Keras `BackupAndRestore`) holds the state after the last finished epoch;
  past fit: `fit_finished.json` says `checkpoints/last.weights.h5` is complete. The rerun only
    reloads the best checkpoint, exports and writes `done.json`: it never trains again.
`fit_finished.json` is written when `fit` ends, before `BackupAndRestore` deletes `backup/`, so no
moment exists where neither records the training done. Every file the rerun will read is checked
before anything is written: a damaged one is named with what to do about it, instead of an h5py or
JSON traceback, and nothing is retrained silently. A rerun with another config is refused before
`config.json` is overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

from deepnoise_tf import config_renames
from deepnoise_tf import workdir as workdir_lib

FIT_FINISHED_FILE = "fit_finished.json"
BACKUP_DIR = "backup"
BACKUP_WEIGHTS = "latest.weights.h5"  # file names of keras.callbacks.BackupAndRestore
BACKUP_METADATA = "training_metadata.json"
PREVIOUS_SUFFIX = ".bkp"  # BackupAndRestore(double_checkpoint=True): the epoch before
LAST_WEIGHTS = pathlib.Path("checkpoints") / "last.weights.h5"
BEST_WEIGHTS = pathlib.Path("checkpoints") / "best.weights.h5"
# Fields a rerun may change: neither the model, the data stream nor the optimization depends on
# them (whether to export at the end; how often to validate, which only selects the best
# checkpoint). Anything else, `train.epochs` included, is refused: a run is extended in a new folder
# started from its weights.
RESUMABLE_CHANGES = ("train.export", "train.eval_every_epochs")


class RunFolderError(ValueError):
    """A run folder the rerun must not touch: another config, or a damaged file (named, with a remedy)."""


@dataclasses.dataclass(frozen=True)
class State:
    """How far a training folder got: `fit_finished`, else the number of epochs in `backup/`."""

    fit_finished: bool
    epoch: int


def damage(path) -> str | None:
    """Why the HDF5 file `path` cannot be read in full (None when every dataset in it reads)."""
    import h5py

    def read(_, item):
        if isinstance(item, h5py.Dataset):
            item[()]  # visititems stops at the first non-None return, so return nothing

    try:
        with h5py.File(path, "r") as file:
            file.visititems(read)
    except Exception as error:  # h5py raises OSError, KeyError, RuntimeError... for damaged files
        return f"{type(error).__name__}: {error}"
    return None


def refuse_renamed_fields(folder) -> None:
    """Raises when `folder`'s config.json holds a field renamed since (`config_renames`): its
    schedules were absolute epochs, which the run cannot continue under the new names."""
    path = pathlib.Path(folder) / workdir_lib.CONFIG_FILE
    if not path.is_file():
        return
    stored = workdir_lib.read_json(path)  # invalid JSON: its own message, naming the file
    try:
        config_renames.refuse_renamed_fields(stored)
    except ValueError as error:
        raise RunFolderError(
            f"{path} was written before a rename: {error}. This run folder cannot be resumed: "
            f"use another --workdir, or delete {folder} to start over."
        ) from error


def refuse_config_drift(folder, config) -> None:
    """Raises (before anything is written) when `folder` was trained with another config."""
    refuse_renamed_fields(folder)
    drift = workdir_lib.config_drift(folder, config, allowed=RESUMABLE_CHANGES)
    if drift:
        path = pathlib.Path(folder) / workdir_lib.CONFIG_FILE
        raise RunFolderError(
            f"{path} holds the config this run folder was trained with, and this config changes "
            f"{'; '.join(drift)}. Rerun with the stored values, use another --workdir, or delete "
            f"{folder} to start over (only {', '.join(RESUMABLE_CHANGES)} may change on a rerun)."
        )


def mark_fit_finished(folder, record: dict) -> None:
    workdir_lib.write_json(pathlib.Path(folder) / FIT_FINISHED_FILE, record)


def inspect(folder) -> State:
    """The folder's state; raises RunFolderError naming a damaged file the rerun would read."""
    folder = pathlib.Path(folder)
    last, best = folder / LAST_WEIGHTS, folder / BEST_WEIGHTS
    marker = folder / FIT_FINISHED_FILE
    # A folder written before the marker existed: last.weights.h5 without backup/ is past fit too.
    fit_finished = marker.is_file() or (last.is_file() and not (folder / BACKUP_DIR).is_dir())
    if marker.is_file():
        try:
            workdir_lib.read_json(marker)
        except ValueError as error:
            raise RunFolderError(str(error)) from error
    if fit_finished and (problem := damage(last)):
        raise RunFolderError(
            f"{last} is damaged ({problem}); training had finished, so its weights are lost: "
            f"delete {folder} to train again"
        )
    if best.is_file() and (problem := damage(best)):
        raise RunFolderError(
            f"{best} is damaged ({problem}); delete it to fall back to {last.name} for the export "
            "(a run still training then picks a new best among its remaining epochs)"
        )
    if fit_finished:
        return State(fit_finished=True, epoch=-1)
    return State(fit_finished=False, epoch=backup_epoch(folder / BACKUP_DIR))


def backup_epoch(backup) -> int:
    """Epochs trained according to `backup/` (0 without one), as BackupAndRestore will restore it.

    BackupAndRestore falls back to the `.bkp` pair when the latest weights cannot be opened; this
    follows it, and raises where it would fail or restart at epoch 0 with trained weights.
    """
    backup = pathlib.Path(backup)
    weights, metadata = backup / BACKUP_WEIGHTS, backup / BACKUP_METADATA
    if not weights.is_file():
        return 0  # killed before the first epoch ended: nothing to restore
    start_over = f"delete {backup.parent} to start over"
    if problem := damage(weights):
        previous = weights.with_name(weights.name + PREVIOUS_SUFFIX)
        if not previous.is_file() or damage(previous):
            raise RunFolderError(
                f"{weights} is damaged ({problem}) and no readable {previous.name} precedes it; "
                f"{start_over} (deleting {backup.name}/ alone would retrain from epoch 0)"
            )
        metadata = metadata.with_name(metadata.name + PREVIOUS_SUFFIX)
    try:
        return int(json.loads(metadata.read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunFolderError(
            f"{metadata} cannot be read ({type(error).__name__}: {error}); without it training would "
            f"restart at epoch 0 from trained weights. Replace {BACKUP_WEIGHTS} and "
            f"{BACKUP_METADATA} by their {PREVIOUS_SUFFIX} copies to resume one epoch earlier, or "
            f"{start_over}"
        ) from error


def load_weights(model, path, remedy: str) -> None:
    """`model.load_weights(path)`; a failure names the file and `remedy`."""
    try:
        model.load_weights(str(path))
    except Exception as error:  # h5py and Keras raise many kinds for a damaged or mismatched file
        raise RunFolderError(
            f"cannot load {path} ({type(error).__name__}: {error}); {remedy}"
        ) from error


def fit_finished_callback(folder, epochs: int):
    """Saves `last.weights.h5`, then `fit_finished.json`, when `fit` ends.

    Put it before `BackupAndRestore` in the callback list: callbacks run in order, so the marker
    exists before `backup/` is deleted. An exception in `fit` skips `on_train_end`, leaving backup/.
    """
    import keras

    class FitFinished(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            path = pathlib.Path(folder) / LAST_WEIGHTS
            path.parent.mkdir(parents=True, exist_ok=True)
            self.model.save_weights(str(path))
            mark_fit_finished(folder, {"epochs": epochs, "weights": str(LAST_WEIGHTS)})

    return FitFinished()
