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

import argparse
import pathlib
import sys

import numpy as np
import pandas as pd

from deepnoise_tf import predict

FORMATS = (".npz", ".parquet")


def well_embeddings(model, data_dir: str, **options) -> tuple[pd.DataFrame, np.ndarray]:
    """`(wells, embeddings)`: one row per well (`predict.WELL_COLUMNS`) and float32 unit `[W, D]`.

    `options`: `predict.predict_split_sites`'s keywords (builder, split, tta, batch_size, progress).
    """
    sites, _, site_embeddings = predict.predict_split_sites(
        model, data_dir, with_embeddings=True, **options
    )
    wells, mean_embeddings = predict.aggregate_wells(sites, site_embeddings)
    norms = np.linalg.norm(mean_embeddings, axis=1, keepdims=True)
    embeddings = mean_embeddings / np.maximum(norms, np.finfo(np.float64).tiny)
    return wells, embeddings.astype(np.float32)


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
    parser = argparse.ArgumentParser(
        prog="python -m deepnoise_tf.embed", description=__doc__.split("\n")[0]
    )
    predict.add_split_arguments(parser)
    parser.add_argument("--output", required=True, help="wells.npz or wells.parquet")
    arguments = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if pathlib.Path(arguments.output).suffix not in FORMATS:
        parser.error(f"--output must end in one of {FORMATS}")
    wells, embeddings = well_embeddings(
        arguments.model, arguments.data_dir, **predict.split_options(arguments)
    )
    path = write_embeddings(wells, embeddings, arguments.output)
    print(f"[deepnoise] wrote {len(wells)} well embeddings of size {embeddings.shape[1]} to {path}")
    return path


if __name__ == "__main__":
    main()
