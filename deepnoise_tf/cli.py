"""Command-line pieces every `python -m deepnoise_tf.<command>` shares.

The help format and `--verbose` of every command; the flags and the checks of the commands that run
a SavedModel over a split (predict, embed). The checks run before any work: a mistake costs one line
on stderr and exit status 2 (`parser.error`), not a pass over a whole split. This module imports
no TensorFlow, so `--help` and the cheap checks answer at once; the checks that read the data set
import it when they run, after `quiet.configure`.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
from collections.abc import Mapping, Sequence

from deepnoise_tf import quiet

BUILD_COMMAND = (
    "tfds build rxrx1 --imports tfds_rxrx1 --manual_dir /path/to/rxrx1 --data_dir {data_dir}"
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" to each option's help, except where there is nothing to show.

    Required options have no default; an empty default means "not given", which the option's help
    explains in words; a plain switch (`--verbose`) is off unless given.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or action.default is None or action.default in ("", argparse.SUPPRESS):
            return action.help
        if action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction):
            return action.help
        return super()._get_help_string(action)


def new_parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """An argument parser with defaults in its help and `--verbose` (read by `quiet.configure`)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter
    )
    parser.add_argument(quiet.VERBOSE_FLAG, action="store_true", help=quiet.VERBOSE_HELP)
    return parser


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of every command that runs an export over a TFDS split (`split_options` reads them)."""
    parser.add_argument("--model", required=True, help="SavedModel folder (e.g. WORKDIR/export)")
    parser.add_argument("--data_dir", required=True, help="TFDS data dir holding a built rxrx1")
    parser.add_argument(
        "--builder",
        default="",
        help="TFDS name/config, e.g. rxrx1/128 (default: the one rxrx1 config built in --data_dir)",
    )
    parser.add_argument("--split", default="test", help="the split to run over")
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also average the 8 dihedral views of every site",
    )
    parser.add_argument("--batch_size", type=int, default=64, help="sites per batch")
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="a progress bar"
    )


def split_options(arguments: argparse.Namespace) -> dict:
    """`inference.predict_split`'s keywords from the flags of `add_split_arguments`."""
    names = ("builder", "split", "tta", "batch_size", "progress")
    return {name: getattr(arguments, name) for name in names}


def check_model(parser: argparse.ArgumentParser, model: str) -> None:
    """Fails unless `model` is a SavedModel folder: before the data set is even opened."""
    if not (pathlib.Path(model) / "saved_model.pb").is_file():
        parser.error(f"--model {model!r} is not a SavedModel folder (no saved_model.pb in it)")


def check_output(
    parser: argparse.ArgumentParser, output: str, suffixes: Sequence[str]
) -> pathlib.Path:
    """Fails unless `output` ends in one of `suffixes` and its folder can be written.

    Creates the folder and writes a probe file there, as writing the result would, so a typo or a
    read-only folder fails now rather than after the whole split was predicted.
    """
    path = pathlib.Path(output)
    if path.suffix not in suffixes:
        parser.error(f"--output {output!r} must end in {' or '.join(suffixes)}")
    if path.is_dir():
        parser.error(
            f"--output {output!r} is a folder; give a file name ending in {' or '.join(suffixes)}"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as error:
        parser.error(
            f"--output {output!r}: cannot write to {str(path.parent)!r} ({error.strerror or error})"
        )
    return path


def resolve_builder(parser: argparse.ArgumentParser, data_dir: str, builder: str) -> str:
    """The TFDS `name/config` to read: `builder` once checked built, else the one built in `data_dir`.

    Without this, TFDS answers a config that is not built with "pass download=True" (46 GB).
    """
    from deepnoise_tf import data  # TensorFlow: only after quiet.configure and the cheap checks

    built = data.built_configs(data_dir)
    build_hint = f"build one first: {BUILD_COMMAND.format(data_dir=data_dir)}"
    if builder:
        try:
            data.require_built(data_dir, builder)
        except FileNotFoundError:
            others = f"built there: {', '.join(built)}" if built else build_hint
            parser.error(f"--builder {builder}: not built in {data_dir!r}; {others}")
        return builder
    if len(built) > 1:
        parser.error(
            f"{data_dir!r} holds several rxrx1 configs ({', '.join(built)}); choose one with --builder"
        )
    if not built:
        parser.error(f"no rxrx1 config is built in {data_dir!r}; {build_hint}")
    print(
        f"[deepnoise] reading {built[0]}, the rxrx1 config built in {data_dir} (--builder)",
        flush=True,
    )
    return built[0]


def check_splits(
    parser: argparse.ArgumentParser, data_dir: str, builder: str, splits: Mapping[str, str]
) -> None:
    """Fails unless every split named in `splits` ({flag: TFDS split spec}) exists; "" names none.

    A spec may slice or add splits (`test[:10%]`, `train+test`); each split it names is checked.
    """
    import tensorflow_datasets as tfds

    from deepnoise_tf import data

    data.register_builder()
    available = list(tfds.builder(builder, data_dir=data_dir or None).info.splits)
    for flag, spec in splits.items():
        names = [part.split("[")[0].strip() for part in spec.split("+")] if spec else []
        for name in names:
            if name not in available:
                parser.error(
                    f"{flag} {spec!r}: {builder} in {data_dir!r} has no split {name!r}; "
                    f"its splits: {', '.join(available)}"
                )
