"""The `--config FILE[:variant]` and `--config.a.b=value` flags of the training commands.

One parser for every command that takes a config (train, finetune, pipeline, ablation): overrides
are taken out before argparse sees them, and every mistake (unknown field, bad value, bad variant,
missing file) is a one-line command-line error before any work.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import ml_collections

from deepnoise_tf import cli
from deepnoise_tf import config as config_lib

OVERRIDE_PREFIX = "--config."
OVERRIDE_HELP = (
    "Any config field can be overridden with --config.<field>=<value>, the value a Python literal "
    "or a bare string, e.g. --config.train.epochs=3 --config.data.builder=rxrx1/128 "
    "--config.train.learning_rates='(1e-3, 1e-4, 1e-5)'."
)


def argument_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """`--config FILE[:variant]`, `--workdir DIR` and `--verbose`; `parse_arguments` adds `--config.a.b=value`.

    Callers add their own arguments to the returned parser.
    """
    parser = cli.new_parser(prog, description, epilog=OVERRIDE_HELP)
    names = ", ".join(config_lib.bundled_config_names())
    parser.add_argument(
        "--config",
        required=True,
        metavar="FILE[:VARIANT]",
        help="a config file, e.g. configs/model3_mean_teacher.py:cpu,wide (variant words joined "
        "by commas; the file's docstring lists them), or the name alone of a bundled config, from "
        f"any folder: {names}. Override fields with --config.a.b=value, e.g. --config.train.epochs=3",
    )
    parser.add_argument(
        "--workdir", required=True, help="where checkpoints, logs and the export go"
    )
    return parser


def split_overrides(
    parser: argparse.ArgumentParser, argv: Sequence[str]
) -> tuple[list[str], dict[str, str]]:
    """(the other arguments, {dotted field: text}) from `argv`; a malformed override is a CLI error.

    Overrides are taken out before argparse sees them: argparse would read a value with a space,
    e.g. a tuple, as a positional argument.
    """
    rest, overrides = [], {}
    for argument in argv:
        if not argument.startswith(OVERRIDE_PREFIX):
            rest.append(argument)
            continue
        path, equals, text = argument[len(OVERRIDE_PREFIX) :].partition("=")
        if not equals or not path:
            parser.error(f"{argument!r}: overrides look like --config.train.epochs=3")
        overrides[path] = text
    return rest, overrides


def parse_arguments(
    parser: argparse.ArgumentParser, argv: Sequence[str]
) -> tuple[argparse.Namespace, ml_collections.ConfigDict]:
    """(parsed arguments, validated config) from `argv`: the parser's arguments plus overrides.

    Every mistake in the command line (an unknown argument or field, a malformed override, a
    value of the wrong type or out of range, a bad variant, a missing config file) ends in
    `parser.error`: one line on stderr and exit status 2, before any work.
    """
    rest, overrides = split_overrides(parser, argv)
    arguments = parser.parse_args(rest)
    try:
        config = config_lib.load(arguments.config)
    except (FileNotFoundError, config_lib.VariantError) as error:
        parser.error(str(error))
    try:
        config = config_lib.apply_overrides(config, overrides)
    except KeyError as error:
        parser.error(error.args[0])  # str() of a KeyError would quote the message
    except TypeError as error:
        parser.error(str(error))
    try:
        return arguments, config_lib.validate(config)
    except ValueError as error:
        parser.error(str(error))
