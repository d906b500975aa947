"""The one path from a model and a data split to site and well logits (and embeddings).

A `Predictor` is anything that maps uint8 images and their normalization statistics to logits and
embeddings: a loaded SavedModel (`load_export`) or trained networks held in memory
(`from_networks`, `from_run_folder`), which run `export.serving_outputs`, the very function the
SavedModel serves, so in-process evaluation and the export agree by construction.

`site_batches` reads a TFDS split (images as stored, the statistics the predictor expects, the site
identifiers, and the label only when asked: with `with_labels=False` the `sirna` feature is never
decoded). `predict_wells` runs predictors over those batches, optionally with the 8 dihedral
test-time views, and averages sites (and views) in logit space (paper, "Model ensemble and
test-time augmentation"). predict, embed, report, the pipeline and the ablation all use it.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_datasets as tfds

from deepnoise_tf import augment, constants, data, evaluation, export


@dataclasses.dataclass(frozen=True)
class Predictor:
    """`serve(image uint8 [B,H,W,6], mean [B,6], std [B,6]) -> {"logits", "embedding", ...}`."""

    serve: object
    normalization: str
    image_size: int
    num_models: int
    class_names: tuple[str, ...]
    keep_alive: object = None  # the loaded SavedModel or the networks: they own the variables
    # `serve` plus `cell_type` string [B]: each cell type's own models (`export.ROUTED_SIGNATURE`).
    serve_by_cell_type: object = None


def load_export(path) -> Predictor:
    """Loads a SavedModel written by `export.export_saved_model` (no custom objects needed).

    `path` is the export itself or a TF Serving base folder (`path/<version>/saved_model.pb`; the
    highest version is loaded, as TF Serving does).

    Security: a SavedModel is a program, not data. Loading runs its TensorFlow graph, which can read
    and write files on this machine; load only exports you or someone you trust wrote.
    """
    path = resolve_export(path)
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
    return Predictor(
        serve=loaded.signatures["serving_default"],
        normalization=normalization,
        image_size=int(metadata["image_size"]),
        num_models=int(metadata["num_models"]),
        class_names=tuple(name.decode() for name in metadata["class_names"]),
        keep_alive=loaded,
        # Exports without per-cell-type models (and those written before them) lack it.
        serve_by_cell_type=loaded.signatures.get(export.ROUTED_SIGNATURE),
    )


def from_networks(networks, *, image_size: int, normalization: str) -> Predictor:
    """In-memory (backbone, head) pairs, served exactly as their export would serve them."""
    networks = list(networks)

    def serve(image, mean, std):
        return export.serving_outputs(networks, image, mean, std, image_size=image_size)

    return Predictor(
        serve=serve,
        normalization=normalization,
        image_size=int(image_size),
        num_models=len(networks),
        class_names=tuple(export.sirna_class_names()),
        keep_alive=networks,
    )


def from_run_folder(run_folder) -> Predictor:
    """A training folder's inference network (the teacher if any; best, else last, checkpoint)."""
    from deepnoise_tf import factory

    config, network = factory.load_inference_network(run_folder)
    return from_networks(
        [network], image_size=int(config.data.image_size), normalization=config.data.normalization
    )


# ------------------------------------------------------------------------------------------------
# Reading sites


def site_count(data_dir, builder: str, split: str) -> int:
    """Number of sites in a split, from the data set's metadata (for the progress bar)."""
    data.register_builder()
    return int(tfds.builder(builder, data_dir=data_dir or None).info.splits[split].num_examples)


def site_batches(
    data_dir,
    builder: str,
    split: str,
    normalization: str,
    *,
    experiments=(),
    cell_types=(),
    with_labels: bool = True,
    batch_size: int = 64,
) -> tf.data.Dataset:
    """Batches of the sites of `split` in stored order: image (as stored), mean, std, identifiers, label.

    `experiments`/`cell_types` keep only those (empty: all). `label` is the `sirna` feature (-1
    where hidden) when `with_labels`, else -1 without decoding it.
    """
    data.register_builder()
    keep = {name: True for name in ("image", *data.ID_FEATURES)}
    keep.update({name: True for name in data.statistic_features(normalization)})
    if with_labels:
        keep["sirna"] = True
    dataset = tfds.load(
        builder,
        split=split,
        data_dir=data_dir or None,
        shuffle_files=False,
        download=False,  # RxRx1 is built with `tfds build`, never fetched here
        decoders=tfds.decode.PartialDecoding(keep),
    )
    if experiments or cell_types:
        dataset = data.select_experiments(
            dataset, include=tuple(experiments), cell_types=tuple(cell_types)
        )

    def sample(example):
        mean, std = data.normalization_statistics(example, normalization)
        out = {name: example[name] for name in data.ID_FEATURES}
        out.update(image=example["image"], mean=mean, std=std)
        out["label"] = (
            tf.cast(example["sirna"], tf.int32)
            if with_labels
            else tf.constant(constants.UNKNOWN_LABEL, tf.int32)
        )
        return out

    dataset = dataset.map(sample, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# ------------------------------------------------------------------------------------------------
# Running predictors


def batch_function(predictors: dict, tta: bool):
    """One tf.function `(image, mean, std, cell_type) -> {name: (logits, embedding)}` for every
    predictor (each cell type through its own models where the predictor has them), the test-time
    views averaged if `tta`.

    The dihedral views are applied to the uint8 images (they commute with the per-channel
    normalization and the resize); logits are averaged in logit space, embeddings averaged and
    re-normalized to unit length.
    """

    @tf.function(reduce_retracing=True)
    def run(image, mean, std, cell_type):
        if tta:
            views = augment.test_time_views(image)  # [V, B, H, W, C]
            count, batch = tf.shape(views)[0], tf.shape(views)[1]
            image = tf.reshape(views, tf.concat([[count * batch], tf.shape(views)[2:]], 0))
            mean, std = tf.tile(mean, [count, 1]), tf.tile(std, [count, 1])
            cell_type = tf.tile(cell_type, [count])
        outputs = {}
        for name, predictor in predictors.items():
            if predictor.serve_by_cell_type is not None:
                served = predictor.serve_by_cell_type(
                    image=image, mean=mean, std=std, cell_type=cell_type
                )
            else:
                served = predictor.serve(image=image, mean=mean, std=std)
            logits, embedding = served["logits"], served["embedding"]
            if tta:
                logits = tf.reduce_mean(tf.reshape(logits, [count, batch, -1]), 0)
                embedding = tf.reshape(embedding, [count, batch, -1])
                embedding = tf.math.l2_normalize(tf.reduce_mean(embedding, 0), -1)
            outputs[name] = (logits, embedding)
        return outputs

    return run


def _decoded(values: np.ndarray) -> np.ndarray:
    return np.asarray([value.decode() if isinstance(value, bytes) else value for value in values])


def predict_sites(
    predictors: dict[str, Predictor],
    batches: tf.data.Dataset,
    *,
    tta: bool = False,
    with_embeddings: bool = False,
    progress: bool = False,
    total: int | None = None,
):
    """Runs every predictor over the site batches.

    Returns:
      `(sites, logits, embeddings)`: a DataFrame with `evaluation.SITE_COLUMNS`, `{name: [S, C]}`
      float32 logits and `{name: [S, D]}` unit embeddings (None unless `with_embeddings`).
    """
    from tqdm.auto import tqdm

    run = batch_function(predictors, tta)
    columns = {name: [] for name in evaluation.SITE_COLUMNS}
    logits = {name: [] for name in predictors}
    embeddings = {name: [] for name in predictors}
    with tqdm(total=total, unit="site", disable=not progress, desc="predict") as bar:
        for batch in batches:
            image = batch["image"]
            if tta and image.shape[1] != image.shape[2]:
                raise ValueError(f"test-time views need square images, got {image.shape[1:3]}")
            for name, (batch_logits, batch_embedding) in run(
                image, batch["mean"], batch["std"], batch["cell_type"]
            ).items():
                logits[name].append(batch_logits.numpy())
                if with_embeddings:
                    embeddings[name].append(batch_embedding.numpy())
            for name in evaluation.SITE_COLUMNS:
                columns[name].append(batch[name].numpy())
            bar.update(int(image.shape[0]))
    if not columns["id_code"]:
        raise ValueError("no sites to predict (empty split or no matching experiments)")
    sites = pd.DataFrame({name: np.concatenate(values) for name, values in columns.items()})
    for name in ("id_code", "experiment", "well", "cell_type", "well_type"):
        sites[name] = _decoded(sites[name].to_numpy())
    logits = {name: np.concatenate(values) for name, values in logits.items()}
    embeddings = (
        {name: np.concatenate(values) for name, values in embeddings.items()}
        if with_embeddings
        else None
    )
    return sites, logits, embeddings


@dataclasses.dataclass(frozen=True)
class WellOutputs:
    """Every well (`evaluation.WELL_COLUMNS`) with each predictor's site-averaged outputs."""

    wells: pd.DataFrame
    logits: dict[str, np.ndarray]  # [W, C] float64
    embeddings: dict[str, np.ndarray] | None  # [W, D] float32, unit length


def predict_wells(
    predictors: dict[str, Predictor], batches: tf.data.Dataset, **options
) -> WellOutputs:
    """`predict_sites`, then the mean over each well's sites (embeddings re-normalized).

    `options`: `predict_sites`' keywords (tta, with_embeddings, progress, total).
    """
    sites, site_logits, site_embeddings = predict_sites(predictors, batches, **options)
    logits, embeddings, wells = {}, None, None
    for name, values in site_logits.items():
        wells, logits[name] = evaluation.aggregate_wells(sites, values)
    if site_embeddings is not None:
        embeddings = {}
        for name, values in site_embeddings.items():
            _, mean = evaluation.aggregate_wells(sites, values)
            norms = np.maximum(
                np.linalg.norm(mean, axis=1, keepdims=True), np.finfo(np.float64).tiny
            )
            embeddings[name] = (mean / norms).astype(np.float32)
    return WellOutputs(wells, logits, embeddings)


def predict_split(
    predictors: dict[str, Predictor],
    data_dir,
    builder: str,
    split: str,
    *,
    experiments=(),
    cell_types=(),
    with_labels: bool = True,
    batch_size: int = 64,
    **options,
) -> WellOutputs:
    """`predict_wells` over the sites of a TFDS split (all predictors must share a normalization)."""
    normalizations = {predictor.normalization for predictor in predictors.values()}
    if len(normalizations) != 1:
        raise ValueError(f"predictors expect different normalizations: {sorted(normalizations)}")
    batches = site_batches(
        data_dir,
        builder,
        split,
        normalizations.pop(),
        experiments=experiments,
        cell_types=cell_types,
        with_labels=with_labels,
        batch_size=batch_size,
    )
    if options.get("progress") and not (experiments or cell_types):
        options.setdefault("total", site_count(data_dir, builder, split))
    return predict_wells(predictors, batches, **options)


# ------------------------------------------------------------------------------------------------
# Export layouts and class names


def resolve_export(path) -> pathlib.Path:
    """The folder holding `saved_model.pb`: `path` itself, or its highest numeric version folder
    (the TF Serving layout `path/<version>/`); a clear error otherwise."""
    path = pathlib.Path(path)
    if (path / "saved_model.pb").exists():
        return path
    versions = [
        child
        for child in (path.iterdir() if path.is_dir() else ())
        if child.name.isdigit() and (child / "saved_model.pb").exists()
    ]
    if not versions:
        raise FileNotFoundError(
            f"{path} holds no saved_model.pb, neither directly nor in a version folder <n>/"
        )
    return max(versions, key=lambda child: int(child.name))


def sirna_names(predictor: Predictor) -> dict[int, str]:
    """`{sirna id: name}` the export carries; empty when its class names are just the ids."""
    return {index: name for index, name in enumerate(predictor.class_names) if name != str(index)}
