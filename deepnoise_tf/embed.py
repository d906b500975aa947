"""`python -m deepnoise_tf.embed --model DIR --data_dir TFDS_DIR --split test --output wells.npz`.

Per-well embeddings of any SavedModel of this package, for phenotype analysis (clustering siRNAs,
comparing knock-downs across cell types) rather than classification: the mean of the well's site
embeddings (optionally over the 8 dihedral views too), re-normalized to unit length, since the
ArcFace head compares directions (cosine similarity). Control wells are kept: they are the
references such analyses need.

Output: `.npz` (arrays `embedding` [W, D] float32 plus one array per metadata column) or
`.parquet` (one row per well, the metadata columns and `embedding` as a list column).
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pandas as pd

from deepnoise_tf import cli, quiet

FORMATS = (".npz", ".parquet")


def write_embeddings(wells: pd.DataFrame, embeddings: np.ndarray, path) -> pathlib.Path:
    """Writes `.npz` or `.parquet` (chosen by the suffix)."""
    path = pathlib.Path(path)
    if path.suffix not in FORMATS:
        raise ValueError(f"output must end in one of {FORMATS}, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        columns = {name: wells[name].to_numpy() for name in wells.columns}
        columns = {
            name: values.astype(str) if values.dtype == object else values
            for name, values in columns.items()
        }
        np.savez(path, embedding=embeddings, **columns)
    else:
        table = wells.copy()
        table["embedding"] = list(embeddings)
        table.to_parquet(path, index=False)
    return path


def main(argv=None) -> pathlib.Path:
    argv = sys.argv[1:] if argv is None else argv
    quiet.configure(argv)
    parser = cli.new_parser("python -m deepnoise_tf.embed", __doc__.split("\n")[0])
    cli.add_split_arguments(parser)
    parser.add_argument("--output", required=True, help="wells.npz or wells.parquet")
    arguments = parser.parse_args(argv)
    cli.check_model(parser, arguments.model)
    cli.check_output(parser, arguments.output, FORMATS)
    from deepnoise_tf import inference  # TensorFlow: only after quiet.configure and the checks

    arguments.builder = cli.resolve_builder(parser, arguments.data_dir, arguments.builder)
    cli.check_splits(parser, arguments.data_dir, arguments.builder, {"--split": arguments.split})
    outputs = inference.predict_split(
        {"model": inference.load_export(arguments.model)},
        arguments.data_dir,
        with_embeddings=True,
        **cli.split_options(arguments),
    )
    embeddings = outputs.embeddings["model"]
    path = write_embeddings(outputs.wells, embeddings, arguments.output)
    print(f"[deepnoise] wrote {len(outputs.wells)} well embeddings of size {embeddings.shape[1]} to {path}")
    return path


if __name__ == "__main__":
    main()
