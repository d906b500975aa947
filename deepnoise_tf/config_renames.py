"""Config fields that were renamed, and the one-line error that names the replacement.

Issue 17: the schedules were absolute epochs, so `--config.train.epochs=96` at `:cpu` left the
learning-rate steps at epochs 24 and 29 and ran most of the run at the lowest rate. They are now
fractions of the schedule length (`train.schedule_epochs`, 0 = `train.epochs`; converted to epochs
in one place, `schedules.run_schedule`). An old name is never read silently as a new one: a
command line, a config file or a run folder that still uses it fails naming the new field and the
conversion, fraction = epochs / train.epochs.
"""

from __future__ import annotations

from typing import Any

# old dotted name -> new dotted name
RENAMED_FIELDS = {
    "train.lr_epoch_boundaries": "train.lr_boundary_fractions",
    "model.arcface_margin_warmup_epochs": "model.arcface_margin_warmup_fraction",
    "mean_teacher.rampup_epochs": "mean_teacher.rampup_fraction",
    "mean_teacher.consistency_start_epoch": "mean_teacher.consistency_start_fraction",
    "mean_teacher.ema_epoch_boundaries": "mean_teacher.ema_boundary_fractions",
}


def _as_fraction(value: Any, length: int) -> Any:
    """`value` epochs (a number or a sequence of them) as fractions of `length` epochs, rounded for
    display."""
    if isinstance(value, list | tuple):
        return tuple(round(float(item) / length, 6) for item in value)
    return round(float(value) / length, 6)


def renamed_field_message(old: str, value: Any = None, length: int | None = None) -> str:
    """One line: `old` is now `RENAMED_FIELDS[old]`, the conversion, and, given the old value in
    epochs and the schedule length, the new value to use."""
    new = RENAMED_FIELDS[old]
    message = (
        f"config field {old!r} was replaced by {new!r} (issue 17): schedules are fractions of the "
        "schedule length, fraction = epochs / train.epochs (train.schedule_epochs when set)"
    )
    try:
        suggestion = _as_fraction(value, length) if value is not None and length else None
    except (TypeError, ValueError):
        suggestion = None
    if suggestion is not None:
        message += f"; {value!r} of {length} epochs is --config.{new}={suggestion!r}"
    return message


def _leaf(tree: Any, path: str) -> tuple[bool, Any]:
    """(whether the dotted `path` exists in `tree`, nested dicts or ConfigDicts, its value)."""
    node = tree
    for key in path.split("."):
        if not hasattr(node, "keys") or key not in node.keys():
            return False, None
        node = node[key]
    return True, node


def renamed_fields_in(tree: Any) -> dict[str, Any]:
    """{old dotted name: its value} for every renamed field that `tree` (a ConfigDict or the dict of
    a `config.json`) still holds."""
    found = {}
    for old in RENAMED_FIELDS:
        present, value = _leaf(tree, old)
        if present:
            found[old] = value
    return found


def refuse_renamed_fields(tree: Any) -> None:
    """Raises ValueError (one line, `renamed_field_message`) when `tree` holds a renamed field."""
    found = renamed_fields_in(tree)
    if found:
        old, value = next(iter(found.items()))
        train = tree.get("train", {})
        length = train.get("schedule_epochs", 0) or train.get("epochs")
        raise ValueError(renamed_field_message(old, value, length))
