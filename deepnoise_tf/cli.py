"""Command-line pieces every `python -m deepnoise_tf.<command>` shares.

The help format and `--verbose` of every command; the flags and the checks of the commands that run
a SavedModel over a split (predict, embed). The split comes from a built TFDS data set
(`--data_dir`) or straight from an RxRx1 source folder of PNGs (`--images`,
`deepnoise_tf.raw_images`); both feed the same `inference.predict_wells`. The checks run before
any work: a mistake costs one line on stderr and exit status 2 (`parser.error`), not a pass over a
whole split. This module imports no TensorFlow, so `--help` and the cheap checks answer at once;
the checks that read the data set import it when they run, after `quiet.configure`.
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
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data_dir", help="TFDS data dir holding a built rxrx1")
    source.add_argument(
        "--images",
        help="instead of --data_dir: an RxRx1 source folder (release or Kaggle layout) read as PNGs, "
        "statistics computed on the fly (deepnoise_tf.raw_images)",
    )
    parser.add_argument(
        "--images_size",
        type=int,
        default=None,
        help="with --images: the size of the rxrx1/<size> config the model was trained on (pixels "
        "area-averaged and statistics computed as that build does); default native",
    )
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


def check_source(
    parser: argparse.ArgumentParser, arguments: argparse.Namespace, splits: Mapping[str, str]
) -> None:
    """The checks of `--data_dir` (the built config, the named splits) or of `--images` (a folder)."""
    if arguments.images:
        if not pathlib.Path(arguments.images).is_dir():
            parser.error(f"--images {arguments.images!r} is not a folder")
        return
    arguments.builder = resolve_builder(parser, arguments.data_dir, arguments.builder)
    check_splits(parser, arguments.data_dir, arguments.builder, splits)


def well_outputs(arguments: argparse.Namespace, predictors: dict, **options):
    """`inference.WellOutputs` of the split, from the TFDS data set or, with `--images`, the PNGs."""
    from deepnoise_tf import inference, raw_images

    options = {**split_options(arguments), **options}
    if arguments.images:
        options.pop("builder")
        options["target_size"] = arguments.images_size
        return raw_images.predict_source(predictors, arguments.images, **options)
    return inference.predict_split(predictors, arguments.data_dir, **options)


def plate_design(arguments: argparse.Namespace, split: str):
    """The plate design learned from the labelled `split` of whichever source the flags name."""
    from deepnoise_tf import data, raw_images

    if arguments.images:
        return raw_images.plate_design(arguments.images, split)
    return data.plate_design_from_split(arguments.data_dir, arguments.builder, split)


def sirna_names(arguments: argparse.Namespace, predictor) -> dict[int, str]:
    """`{sirna id: name}` known from the export's class names and a release-layout `--images`."""
    from deepnoise_tf import inference, raw_images

    names = inference.sirna_names(predictor)
    if arguments.images:
        names.update(raw_images.sirna_names(arguments.images))
    return names


def with_sirna_names(table, names: dict, id_column: str):
    """`table` plus `sirna_name` (the name of `id_column`'s siRNA, "" if unknown) when names are known."""
    if not names:
        return table
    return table.assign(sirna_name=[names.get(int(value), "") for value in table[id_column]])
