"""`python -m deepnoise_tf.embed --model DIR --data_dir TFDS_DIR --split test --output wells.npz`.

(`--images DIR` instead of `--data_dir` reads an RxRx1 source folder's PNGs, no TFDS build needed.)

Per-well embeddings of any SavedModel of this package, for phenotype analysis (clustering siRNAs,
comparing knock-downs across cell types) rather than classification: the mean of the well's site
embeddings (optionally over the 8 dihedral views too), re-normalized to unit length, since the
ArcFace head compares directions (cosine similarity). Control wells are kept: they are the
references such analyses need.

Output: `.npz` (arrays `embedding` [W, D] float32 plus one array per metadata column),
`.parquet` (one row per well, the metadata columns and `embedding` as a list column) or `.h5ad`
(AnnData, what scanpy-style analyses read: `X` the embeddings, `obs` the wells indexed by id_code
with the truth as `sirna`, `uns["deepnoise"]` the provenance; needs the `embed` extra). A
`sirna_name` column is added when the export or a release-layout `--images` folder names the siRNAs.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pandas as pd

from deepnoise_tf import cli, quiet

FORMATS = (".npz", ".parquet", ".h5ad")


def write_embeddings(
    wells: pd.DataFrame, embeddings: np.ndarray, path, provenance: dict | None = None
) -> pathlib.Path:
    """Writes `.npz`, `.parquet` or `.h5ad` (chosen by the suffix); `provenance` goes to h5ad's uns."""
    path = pathlib.Path(path)
    if path.suffix not in FORMATS:
        raise ValueError(f"output must end in one of {FORMATS}, got {path.name!r}")
    if path.suffix == ".h5ad":
        anndata = import_anndata()  # before any folder is made: a missing extra leaves no trace
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".h5ad":
        write_h5ad(anndata, wells, embeddings, path, provenance or {})
    elif path.suffix == ".npz":
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
    parser.add_argument("--output", required=True, help="wells.npz, wells.parquet or wells.h5ad")
    arguments = parser.parse_args(argv)
    cli.check_model(parser, arguments.model)
    cli.check_output(parser, arguments.output, FORMATS)
    if pathlib.Path(arguments.output).suffix == ".h5ad":
        try:
            import_anndata()
        except ImportError as error:
            parser.error(str(error))  # before minutes of inference, not after
    from deepnoise_tf import inference  # TensorFlow: only after quiet.configure and the checks

    cli.check_source(parser, arguments, {"--split": arguments.split})
    predictor = inference.load_export(arguments.model)
    outputs = cli.well_outputs(arguments, {"model": predictor}, with_embeddings=True)
    embeddings = outputs.embeddings["model"]
    wells = cli.with_sirna_names(outputs.wells, cli.sirna_names(arguments, predictor), "label")
    provenance = provenance_of(arguments, predictor)
    path = write_embeddings(wells, embeddings, arguments.output, provenance)
    print(
        f"[deepnoise] wrote {len(outputs.wells)} well embeddings of size {embeddings.shape[1]} to {path}"
    )
    return path


def import_anndata():
    """The `anndata` module, or an ImportError naming the extra that installs it."""
    try:
        import anndata
    except ImportError as error:
        raise ImportError(
            ".h5ad output needs anndata: pip install 'deepnoise-tf[embed]' (or pip install anndata)"
        ) from error
    return anndata


def write_h5ad(
    anndata, wells: pd.DataFrame, embeddings: np.ndarray, path, provenance: dict
) -> None:
    """AnnData: `X` [W, D] float32, `obs` one row per well indexed by id_code, `uns["deepnoise"]`.

    The truth column is `sirna` (the siRNA id, -1 unknown), as in the RxRx1 metadata, not the
    training code's `label`.
    """
    obs = wells.rename(columns={"label": "sirna"}).set_index("id_code", drop=False)
    obs.index = obs.index.astype(str)
    obs.index.name = None  # anndata refuses an index named like a column
    for name in obs.columns:
        if obs[name].dtype == object:
            obs[name] = obs[name].astype(str)
    adata = anndata.AnnData(X=np.asarray(embeddings, np.float32), obs=obs)
    adata.uns["deepnoise"] = provenance
    adata.write_h5ad(path)


def provenance_of(arguments, predictor) -> dict:
    """Where the embeddings came from: model, its metadata, data source and options, package version."""
    import deepnoise_tf

    return {
        "model": str(pathlib.Path(arguments.model).resolve()),
        "normalization": predictor.normalization,
        "image_size": int(predictor.image_size),
        "num_models": int(predictor.num_models),
        "tta": bool(arguments.tta),
        "source": str(arguments.images or arguments.data_dir),
        "source_kind": "images" if arguments.images else "tfds",
        "builder": "" if arguments.images else arguments.builder,
        "images_size": int(arguments.images_size or 0),  # 0: native
        "split": arguments.split,
        "deepnoise_tf_version": deepnoise_tf.__version__,
    }


if __name__ == "__main__":
    main()
