"""Command-line pieces shared by the commands that run a SavedModel over a split (predict, embed).

The split comes from a built TFDS data set (`--data_dir`) or straight from an RxRx1 source folder of
PNGs (`--images`, `deepnoise_tf.raw_images`); both feed the same `inference.predict_wells`.
"""

from __future__ import annotations

import argparse


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of every command that runs an export over a TFDS split (`split_options` reads them)."""
    parser.add_argument("--model", required=True, help="SavedModel directory (e.g. workdir/export)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data_dir", help="TFDS data dir holding rxrx1")
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
    parser.add_argument("--builder", default="rxrx1/native", help="TFDS name/config")
    parser.add_argument("--split", default="test")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


def split_options(arguments: argparse.Namespace) -> dict:
    """`inference.predict_split`'s keywords from the flags of `add_split_arguments`."""
    names = ("builder", "split", "tta", "batch_size", "progress")
    return {name: getattr(arguments, name) for name in names}


def well_outputs(arguments: argparse.Namespace, predictors: dict, **options):
    """`inference.WellOutputs` of the split, from the TFDS data set or, with `--images`, the PNGs."""
    from deepnoise_tf import inference, raw_images

    options = {**split_options(arguments), **options}
    if arguments.images:
        options.pop("builder")
        options["target_size"] = arguments.images_size
        return raw_images.predict_source(predictors, arguments.images, **options)
    return inference.predict_split(predictors, arguments.data_dir, **options)


def sirna_groups(arguments: argparse.Namespace, split: str):
    """The siRNA groups from the labelled `split` of whichever source the flags name."""
    from deepnoise_tf import data, raw_images

    if arguments.images:
        return raw_images.sirna_groups(arguments.images, split)
    return data.sirna_groups_from_split(arguments.data_dir, arguments.builder, split)


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
