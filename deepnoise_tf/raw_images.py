"""Raw RxRx1 PNGs -> the channel statistics and site batches a SavedModel needs, without a TFDS build.

The export's `serving_default(image, mean, std)` needs each image's per-channel mean and std of its
plate (or experiment, or cell type; the export's `metadata` says which). A client with new plates
must compute them exactly as the TFDS builder does, or the model sees differently normalized pixels
than in training. This module does that by reusing the builder's own pieces: `tfds_rxrx1.rxrx1.source`
lists and validates the sites of either layout (release `metadata.csv` + `images/`, Kaggle
`train.csv`... + `train/ test/`), `pixels` decodes them, and `channel_statistics` pools exact
integer moments. `source_batches` then yields the very batch dicts `inference.site_batches` yields
(image, mean, std, identifiers, label), so `inference.predict_wells` runs unchanged on them.

Example:
    statistics = raw_images.source_statistics("/data/rxrx1")  # {"plate/HEPG2-08_1": (mean, std), ...}
    outputs = raw_images.predict_source({"model": inference.load_export(path)}, "/data/rxrx1")
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from etils import epath

from deepnoise_tf import constants, data, inference
from tfds_rxrx1.rxrx1 import channel_statistics, pixels, source


def pooled_statistics(keyed_images) -> dict:
    """`{key: (mean [6], std [6])}` float64 of any images grouped by key (e.g. "plate/EXP_1").

    Args:
      keyed_images: iterable of `(key, image uint8 [H, W, 6])`; images of one key are pooled as one
        pixel population (population std), as the builder pools a plate's sites.
    """
    pooled: dict = {}
    for key, image in keyed_images:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != constants.NUM_CHANNELS:
            raise ValueError(
                f"{key}: expected uint8 [H, W, 6] images, got {image.dtype} {image.shape}"
            )
        moments = channel_statistics.image_moments(image)
        pooled[key] = (
            channel_statistics.add_moments(pooled[key], moments) if key in pooled else moments
        )
    return {key: channel_statistics.finish_moments(key, moments) for key, moments in pooled.items()}


def read_sites(root, target_size: int | None = None):
    """`(sites, decode settings)` of a source folder, decoded as the builder's config would store them.

    `target_size` is the builder config's image size (None: native, as `rxrx1/native`); like the
    builder, a source at or below it is never upsampled. The statistics depend on it: they are
    moments of the stored (area-averaged) pixels.
    """
    root = source.find_source_root(epath.Path(root))
    _, sites = source.read_source(root)
    first = pixels.decode_png(sites[0].paths[0])
    if target_size is not None and max(first.shape) <= target_size:
        target_size = None
    settings = pixels.DecodeSettings(
        source_shape=first.shape, reference_path=sites[0].paths[0], target_size=target_size
    )
    return sites, settings


def source_statistics(root, target_size: int | None = None) -> dict:
    """`{group key: (mean, std)}` of every plate, experiment and cell type of a source folder.

    Keys are `Site.group_keys()`: "plate/{experiment}_{plate}", "experiment/{experiment}",
    "cell_type/{cell type}". Pools every site of the folder (both splits), as the builder does, and
    uses Kaggle's `pixel_stats.csv` for native-size sources when present, as the builder does.
    """
    sites, settings = read_sites(root, target_size)
    return _statistics(root, sites, settings)


def _statistics(root, sites, settings) -> dict:
    known = None
    stats_path = source.find_source_root(epath.Path(root)) / "pixel_stats.csv"
    if settings.target_size is None and stats_path.exists():
        shape = settings.source_shape
        known = channel_statistics.read_pixel_stats(stats_path, shape[0] * shape[1])
    return channel_statistics.compute_statistics(sites, settings, known)


def _site_statistics(site: source.Site, statistics: dict, normalization: str):
    if normalization == "none":
        neutral = np.full(constants.NUM_CHANNELS, data.NEUTRAL_STATISTIC, np.float32)
        return neutral, neutral
    mean, std = statistics[site.group_keys()[normalization]]
    # float32 as the TFDS feature stores them, so both paths feed the model identical numbers.
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def source_batches(
    root,
    normalization: str,
    *,
    split: str | None = "test",
    experiments=(),
    cell_types=(),
    with_labels: bool = True,
    batch_size: int = 64,
    target_size: int | None = None,
) -> tf.data.Dataset:
    """The batches `inference.site_batches` yields (image, mean, std, identifiers, label), from PNGs.

    `split` keeps the sites of that split ("train"/"test"; None: all); `experiments`/`cell_types`
    keep only those (empty: all). Statistics are pooled over the whole folder first, as in the build.
    """
    if normalization not in constants.NORMALIZATIONS:
        raise ValueError(
            f"normalization must be one of {constants.NORMALIZATIONS}, got {normalization!r}"
        )
    sites, settings = read_sites(root, target_size)
    statistics = _statistics(root, sites, settings) if normalization != "none" else {}
    chosen = [
        site
        for site in sites
        if (split is None or site.split == split)
        and (not experiments or site.experiment in experiments)
        and (not cell_types or site.cell_type in cell_types)
    ]
    if not chosen:
        raise ValueError(
            f"{root}: no sites of split {split!r} match {experiments or cell_types or 'all'}"
        )

    def generate():
        for site in chosen:
            mean, std = _site_statistics(site, statistics, normalization)
            label = site.sirna if with_labels else constants.UNKNOWN_LABEL
            yield {
                "image": pixels.read_site(site, settings),
                "mean": mean,
                "std": std,
                **site.identifiers(),
                "label": label,
            }

    text, integer = tf.TensorSpec((), tf.string), tf.TensorSpec((), tf.int32)
    vector = tf.TensorSpec((constants.NUM_CHANNELS,), tf.float32)
    signature = {
        "image": tf.TensorSpec((None, None, constants.NUM_CHANNELS), tf.uint8),
        "mean": vector,
        "std": vector,
        **{name: text for name in ("id_code", "experiment", "well", "cell_type", "well_type")},
        **{name: integer for name in ("site", "plate", "label")},
    }
    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def predict_source(predictors: dict, root, *, split: str | None = "test", **options):
    """`inference.predict_wells` over a source folder's sites (the `predict_split` of raw images).

    `options`: `source_batches`' keywords (experiments, cell_types, with_labels, batch_size,
    target_size) and `predict_wells`' (tta, with_embeddings, progress, total).
    """
    normalizations = {predictor.normalization for predictor in predictors.values()}
    if len(normalizations) != 1:
        raise ValueError(f"predictors expect different normalizations: {sorted(normalizations)}")
    names = ("experiments", "cell_types", "with_labels", "batch_size", "target_size")
    batch_options = {name: options.pop(name) for name in names if name in options}
    batches = source_batches(root, normalizations.pop(), split=split, **batch_options)
    return inference.predict_wells(predictors, batches, **options)


def plate_design(root, split: str = "train"):
    """The plate design (`plate_design.learn_plate_design`) learned from a source folder's labels.

    The raw-image counterpart of `data.plate_design_from_split`; reads metadata only, no pixels.
    """
    from deepnoise_tf import plate_design as plate_design_lib

    _, sites = source.read_source(source.find_source_root(epath.Path(root)))
    labelled = [site for site in sites if site.split == split]
    if not labelled:
        return None
    design = plate_design_lib.learn_plate_design(
        [site.experiment for site in labelled],
        [site.plate for site in labelled],
        [site.sirna for site in labelled],
    )
    return design if (design.sirna_groups >= 0).any() else None


def sirna_names(root) -> dict[int, str]:
    """`{sirna id: siRNA name}` from a release-layout folder's `metadata.csv` (`sirna_id`, `sirna`).

    The TFDS builder keeps only the id; the names are what biologists look up. Empty for the Kaggle
    layout, whose tables carry ids only.
    """
    root = source.find_source_root(epath.Path(root))
    if source.detect_layout(root) != "release":
        return {}
    table = source.read_table(root / "metadata.csv", ("sirna_id", "sirna"))
    ids = source.as_int(table, "sirna_id", 0, constants.NEGATIVE_CONTROL)
    names: dict[int, str] = {}
    for sirna_id, name, row in zip(ids, table["sirna"], table["row"], strict=True):
        if names.setdefault(int(sirna_id), name) != name:
            raise source.SourceError(
                f"{row}: sirna_id {sirna_id} is named {name!r} here but {names[int(sirna_id)]!r} "
                "elsewhere; one id has one name: fix the metadata."
            )
    return names
