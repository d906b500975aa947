"""`python -m deepnoise_tf.predict --model DIR --data_dir TFDS_DIR --output submission.csv`.

Runs any SavedModel of this package (one model or an ensemble, `deepnoise_tf.export`) over a split of
the TFDS `rxrx1` data set and writes the Kaggle submission (`id_code,sirna`, one row per treatment
well; the labels of control wells are known, so they are not predicted). SPEC 8: the sites of a well
and the optional 8 dihedral test-time views are averaged in logit space, then the plate prior is
applied (siRNA groups derived from the train split's labels, each test experiment's plate rotation
inferred from the predictions; exact assignment by default). When the predicted wells carry labels
(the release layout), accuracy overall and per cell type, before and after post-processing, is
printed and written to `<output stem>_accuracy.csv`.

Example:
    python -m deepnoise_tf.predict --model workdir/export --data_dir ~/tensorflow_datasets \\
        --split test --output submission.csv --tta
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_datasets as tfds

from deepnoise_tf import augment, constants, metrics, postprocess

# The identifiers of a site that a prediction table carries, in this order.
SITE_COLUMNS = ("id_code", "site", "experiment", "plate", "well", "cell_type", "well_type", "sirna")
WELL_COLUMNS = ("id_code", "experiment", "plate", "well", "cell_type", "well_type", "label")
NEUTRAL_STATISTIC = 127.5  # normalization "none": (x - 127.5) / 127.5 maps 8-bit pixels to [-1, 1]


@dataclasses.dataclass(frozen=True)
class LoadedExport:
    """A loaded SavedModel of this package and what its `metadata` signature says about it."""

    serve: object  # the `serving_default` concrete function
    module: object  # the loaded object: it owns the signature's variables, so it must stay alive
    normalization: str
    image_size: int
    num_models: int
    class_names: tuple[str, ...]


def load_export(path: str) -> LoadedExport:
    """Loads a SavedModel written by `export.export_saved_model` (no custom objects needed)."""
    loaded = tf.saved_model.load(str(path))
    for name in ("serving_default", "metadata"):
        if name not in loaded.signatures:
            raise ValueError(
                f"{path} has no {name!r} signature (has {sorted(loaded.signatures)}); "
                "is it an export of deepnoise_tf?"
            )
    metadata = {key: value.numpy() for key, value in loaded.signatures["metadata"]().items()}
    normalization = metadata["normalization"].decode()
    if normalization not in constants.NORMALIZATIONS:
        raise ValueError(f"{path}: unknown normalization {normalization!r}")
    return LoadedExport(
        serve=loaded.signatures["serving_default"],
        module=loaded,
        normalization=normalization,
        image_size=int(metadata["image_size"]),
        num_models=int(metadata["num_models"]),
        class_names=tuple(name.decode() for name in metadata["class_names"]),
    )


# ------------------------------------------------------------------------------------------------
# Reading the data set


def _register_builder() -> None:
    """Registers the repository's `rxrx1` builder when importable (TFDS can also read without it)."""
    try:
        import tfds_rxrx1  # noqa: F401
    except ImportError:
        pass


def site_count(data_dir: str, builder: str, split: str) -> int:
    """Number of sites (examples) in a split, from the data set's metadata (for the progress bar)."""
    _register_builder()
    return int(tfds.builder(builder, data_dir=data_dir).info.splits[split].num_examples)


def site_dataset(
    data_dir: str, builder: str, split: str, normalization: str, batch_size: int
) -> tf.data.Dataset:
    """Batches of every site of `split`, in order: image, mean, std and the site identifiers.

    `mean`/`std` are the `<normalization>_mean/_std` features the model was trained with
    (127.5 for "none"). `sirna` is read too: -1 where the label is hidden (Kaggle test treatments).
    """
    _register_builder()
    statistics = ()
    if normalization != "none":
        statistics = (f"{normalization}_mean", f"{normalization}_std")
    keep = {name: True for name in ("image",) + SITE_COLUMNS + statistics}
    dataset = tfds.load(
        builder,
        split=split,
        data_dir=data_dir,
        shuffle_files=False,
        download=False,  # RxRx1 is built with `tfds build`, never fetched here
        decoders=tfds.decode.PartialDecoding(keep),
    )

    def sample(example):
        out = {name: example[name] for name in SITE_COLUMNS}
        out["image"] = example["image"]
        if statistics:
            out["mean"] = tf.cast(example[statistics[0]], tf.float32)
            out["std"] = tf.cast(example[statistics[1]], tf.float32)
        else:
            out["mean"] = tf.fill([constants.NUM_CHANNELS], NEUTRAL_STATISTIC)
            out["std"] = tf.fill([constants.NUM_CHANNELS], NEUTRAL_STATISTIC)
        return out

    dataset = dataset.map(sample, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def sirna_groups_from_split(
    data_dir: str, builder: str, split: str = "train", exclude_experiments=()
) -> np.ndarray | None:
    """The siRNA groups (`postprocess.sirna_groups_from_labels`) from a labelled split; None if absent.

    Reads identifiers and labels only, never images. `exclude_experiments` leaves out e.g. the
    validation experiments, so that scoring them does not use their labels.
    """
    _register_builder()
    info = tfds.builder(builder, data_dir=data_dir).info
    if split not in info.splits:
        return None
    dataset = tfds.load(
        builder,
        split=split,
        data_dir=data_dir,
        download=False,  # RxRx1 is built with `tfds build`, never fetched here
        decoders=tfds.decode.PartialDecoding({"experiment": True, "plate": True, "sirna": True}),
    )
    experiments, plates, sirnas = [], [], []
    for batch in dataset.batch(8192).as_numpy_iterator():
        experiments.append(batch["experiment"])
        plates.append(batch["plate"])
        sirnas.append(batch["sirna"])
    if not experiments:
        return None
    experiments = _decode(np.concatenate(experiments))
    keep = ~np.isin(experiments, list(exclude_experiments))
    groups = postprocess.sirna_groups_from_labels(
        experiments[keep], np.concatenate(plates)[keep], np.concatenate(sirnas)[keep]
    )
    return groups if (groups >= 0).any() else None


# ------------------------------------------------------------------------------------------------
# Running the model


def _decode(values: np.ndarray) -> np.ndarray:
    return np.asarray([value.decode() if isinstance(value, bytes) else value for value in values])


def make_predictor(export: LoadedExport, *, tta: bool = False):
    """`(image uint8, mean, std) -> (logits [B, 1139], embedding [B, D])`, views averaged if `tta`.

    The dihedral views are applied to the uint8 images before the signature (they commute with
    the per-channel normalization and the in-graph resize); logits are averaged in logit space
    (SPEC 8), embeddings averaged and re-normalized to unit length.
    """

    @tf.function(reduce_retracing=True)
    def predict(image, mean, std):
        if not tta:
            outputs = export.serve(image=image, mean=mean, std=std)
            return outputs["logits"], outputs["embedding"]
        views = augment.test_time_views(image)  # [V, B, H, W, C]
        count, batch = tf.shape(views)[0], tf.shape(views)[1]
        flat = tf.reshape(views, tf.concat([[count * batch], tf.shape(views)[2:]], 0))
        outputs = export.serve(
            image=flat, mean=tf.tile(mean, [count, 1]), std=tf.tile(std, [count, 1])
        )
        logits = tf.reshape(outputs["logits"], [count, batch, -1])
        embedding = tf.reshape(outputs["embedding"], [count, batch, -1])
        return tf.reduce_mean(logits, 0), tf.math.l2_normalize(tf.reduce_mean(embedding, 0), -1)

    return predict


def predict_sites(
    export: LoadedExport,
    dataset: tf.data.Dataset,
    *,
    tta: bool = False,
    progress: bool = True,
    total: int | None = None,
    with_embeddings: bool = False,
):
    """Runs the model over site batches.

    Returns:
      `(sites, logits, embeddings)`: a DataFrame with `SITE_COLUMNS`, float32 `[S, 1139]` logits and
      `[S, D]` unit embeddings (None unless `with_embeddings`).
    """
    from tqdm.auto import tqdm

    predictor = make_predictor(export, tta=tta)
    columns = {name: [] for name in SITE_COLUMNS}
    logits, embeddings = [], []
    with tqdm(total=total, unit="site", disable=not progress, desc="predict") as bar:
        for batch in dataset:
            image = batch["image"]
            if tta and image.shape[1] != image.shape[2]:
                raise ValueError(f"TTA needs square images, got {image.shape[1:3]}")
            batch_logits, batch_embedding = predictor(image, batch["mean"], batch["std"])
            logits.append(batch_logits.numpy())
            if with_embeddings:
                embeddings.append(batch_embedding.numpy())
            for name in SITE_COLUMNS:
                columns[name].append(batch[name].numpy())
            bar.update(int(image.shape[0]))
    if not logits:
        raise ValueError("the split holds no sites")
    sites = pd.DataFrame({name: np.concatenate(values) for name, values in columns.items()})
    for name in ("id_code", "experiment", "well", "cell_type", "well_type"):
        sites[name] = _decode(sites[name].to_numpy())
    embedding_array = np.concatenate(embeddings) if with_embeddings else None
    return sites, np.concatenate(logits), embedding_array


def aggregate_wells(
    sites: pd.DataFrame, site_values: np.ndarray
) -> tuple[pd.DataFrame, np.ndarray]:
    """One row per well (first-seen order) and the mean of its sites' values (`metrics.well_logits`).

    The table has `WELL_COLUMNS`; `label` is the well's `sirna` (-1 when unknown).
    """
    wells, values = metrics.well_logits(site_values, sites["id_code"].to_numpy())
    first = sites.drop_duplicates("id_code").set_index("id_code").loc[wells].reset_index()
    table = first.rename(columns={"sirna": "label"})[list(WELL_COLUMNS)]
    table["plate"] = table["plate"].astype(np.int64)
    table["label"] = table["label"].astype(np.int64)
    return table, values


def predict_split_sites(
    model: str | LoadedExport,
    data_dir: str,
    *,
    builder: str = "rxrx1/native",
    split: str = "test",
    tta: bool = False,
    batch_size: int = 64,
    progress: bool = True,
    with_embeddings: bool = False,
):
    """`predict_sites` over every site of a TFDS split, loading the export when given a path.

    The one place that pairs an export with its data (its normalization picks the statistics read,
    the split's size sizes the progress bar), shared by the well-level predict and embed commands.
    """
    export = model if isinstance(model, LoadedExport) else load_export(model)
    dataset = site_dataset(data_dir, builder, split, export.normalization, batch_size)
    total = site_count(data_dir, builder, split)
    return predict_sites(
        export, dataset, tta=tta, progress=progress, total=total, with_embeddings=with_embeddings
    )


def split_well_logits(
    model: str | LoadedExport, data_dir: str, **options
) -> tuple[pd.DataFrame, np.ndarray]:
    """Every well of `split` (`WELL_COLUMNS`, controls included) and its site-averaged logits [W, 1139].

    `options`: `predict_split_sites`'s keywords (builder, split, tta, batch_size, progress).
    """
    sites, site_logits, _ = predict_split_sites(model, data_dir, **options)
    return aggregate_wells(sites, site_logits)


def predict_wells(
    model: str | LoadedExport,
    data_dir: str,
    *,
    builder: str = "rxrx1/native",
    split: str = "test",
    postprocess_method: str = "assign",
    tta: bool = False,
    batch_size: int = 64,
    progress: bool = True,
    sirna_groups: np.ndarray | None | str = "train",
) -> pd.DataFrame:
    """Predicts the siRNA of every treatment well of `split`.

    Args:
      model: a SavedModel directory or a `LoadedExport`.
      data_dir, builder, split: the TFDS data set.
      postprocess_method: "assign" (exact, default), "balance" (greedy, paper) or "none" (argmax,
        restricted to the plate's siRNA group when the groups are known).
      tta: average the 8 dihedral views in logit space.
      sirna_groups: a `[1108]` group per siRNA, None (no plate restriction) or the name of a labelled
        split to derive them from (default "train").

    Returns:
      One row per treatment well: `WELL_COLUMNS`, `raw_prediction` (argmax over the 1108 siRNAs of
      the site-averaged logits) and `sirna` (the post-processed prediction).
    """
    if postprocess_method not in postprocess.METHODS:
        raise ValueError(f"postprocess_method must be one of {postprocess.METHODS}")
    wells, logits = split_well_logits(
        model,
        data_dir,
        builder=builder,
        split=split,
        tta=tta,
        batch_size=batch_size,
        progress=progress,
    )
    treatment = (wells["well_type"] == "treatment").to_numpy()
    wells, logits = wells[treatment].reset_index(drop=True), logits[treatment]
    if isinstance(sirna_groups, str):
        sirna_groups = sirna_groups_from_split(data_dir, builder, sirna_groups)
    log_probs = postprocess.sirna_log_probs(logits)
    wells["raw_prediction"] = np.argmax(log_probs, axis=1)
    wells["sirna"] = postprocess.postprocess_predictions(
        wells, log_probs, method=postprocess_method, sirna_groups=sirna_groups
    )
    return wells


def accuracy_report(wells: pd.DataFrame, method: str) -> pd.DataFrame | None:
    """Accuracy per cell type and overall, before (`raw`) and after post-processing (`method`).

    The stage of `method="none"` is called `plate_group`: the argmax within the plate's siRNA group.
    Returns None when no well has a known label.
    """
    labels = wells["label"].to_numpy()
    if not (labels != constants.UNKNOWN_LABEL).any():
        return None
    tables = []
    for stage, column in (("raw", "raw_prediction"), (method if method != "none" else "plate_group", "sirna")):
        table = metrics.accuracy_table(
            labels, wells[column].to_numpy(), wells["cell_type"].to_numpy()
        )
        table.insert(0, "stage", stage)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def write_submission(wells: pd.DataFrame, path: str | pathlib.Path) -> pathlib.Path:
    """The Kaggle format: `id_code,sirna`, one row per treatment well."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wells[["id_code", "sirna"]].to_csv(path, index=False)
    return path


def accuracy_path(output: str | pathlib.Path) -> pathlib.Path:
    output = pathlib.Path(output)
    return output.with_name(f"{output.stem}_accuracy.csv")


# ------------------------------------------------------------------------------------------------
# Command line


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every command that runs an export over a split shares (`split_options` reads them)."""
    parser.add_argument("--model", required=True, help="SavedModel directory (e.g. workdir/export)")
    parser.add_argument("--data_dir", required=True, help="TFDS data dir holding rxrx1")
    parser.add_argument("--builder", default="rxrx1/native", help="TFDS name/config")
    parser.add_argument("--split", default="test")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


def split_options(arguments: argparse.Namespace) -> dict:
    """`predict_split_sites`'s keywords from the flags of `add_split_arguments`."""
    names = ("builder", "split", "tta", "batch_size", "progress")
    return {name: getattr(arguments, name) for name in names}


def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        prog="python -m deepnoise_tf.predict", description=__doc__.split("\n")[0]
    )
    add_split_arguments(parser)
    parser.add_argument("--output", required=True, help="submission CSV")
    parser.add_argument("--postprocess", choices=postprocess.METHODS, default="assign")
    parser.add_argument(
        "--groups_split", default="train", help="labelled split the siRNA groups come from"
    )
    return parser.parse_args(argv)


def main(argv=None) -> pd.DataFrame:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    wells = predict_wells(
        arguments.model,
        arguments.data_dir,
        postprocess_method=arguments.postprocess,
        sirna_groups=arguments.groups_split or None,
        **split_options(arguments),
    )
    path = write_submission(wells, arguments.output)
    print(f"[deepnoise] wrote {len(wells)} treatment wells to {path}", flush=True)
    report = accuracy_report(wells, arguments.postprocess)
    if report is not None:
        report.to_csv(accuracy_path(path), index=False)
        with pd.option_context("display.width", 120):
            print(report.to_string(index=False, float_format=lambda value: f"{value:.4f}"))
        print(f"[deepnoise] accuracy written to {accuracy_path(path)}", flush=True)
    return wells


if __name__ == "__main__":
    main()
