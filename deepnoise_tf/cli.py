"""Command-line pieces shared by the commands that run a SavedModel over a split (predict, embed)."""

from __future__ import annotations

import argparse


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of every command that runs an export over a TFDS split (`split_options` reads them)."""
    parser.add_argument("--model", required=True, help="SavedModel directory (e.g. workdir/export)")
    parser.add_argument("--data_dir", required=True, help="TFDS data dir holding rxrx1")
    parser.add_argument("--builder", default="rxrx1/native", help="TFDS name/config")
    parser.add_argument("--split", default="test")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


def split_options(arguments: argparse.Namespace) -> dict:
    """`inference.predict_split`'s keywords from the flags of `add_split_arguments`."""
    names = ("builder", "split", "tta", "batch_size", "progress")
    return {name: getattr(arguments, name) for name in names}
