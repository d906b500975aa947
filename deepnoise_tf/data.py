"""TFDS `rxrx1` examples -> tf.data batches for training, evaluation and prediction.

Batches are dicts: `image` uint8 [B, H, W, 6] (normalization and augmentation run inside the step,
on the device: 4x less host-to-device traffic than float32), the normalization `mean` and `std`
float32 [B, 6] of each image's group, `label` int32 [B] (-1 = unlabelled) and, for unlabelled rows,
`pseudo_label` int32 [B] (-1 = none). Evaluation batches also carry the example's identifiers.

Training never reads a label of a test treatment: the unlabelled stream decodes the test split
without the `sirna` feature at all, and the labelled stream reads the test split's control wells
only, dropping every treatment before its label goes anywhere (`load_sites(controls_only=True)`;
their labels are public, RxRx1's test_controls.csv). tests/test_data.py and
tests/test_test_controls.py prove both.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from deepnoise_tf import constants

ID_FEATURES = ("id_code", "site", "experiment", "plate", "well", "cell_type", "well_type")
_STAT_FEATURES = {
    "plate": ("plate_mean", "plate_std"),
    "experiment": ("experiment_mean", "experiment_std"),
    "cell_type": ("cell_type_mean", "cell_type_std"),
}


NEUTRAL_STATISTIC = 127.5  # normalization "none": (x - 127.5) / 127.5 maps 8-bit pixels to [-1, 1]


def register_builder() -> None:
    """Registers the repository's `rxrx1` builder when importable (TFDS can also read without it)."""
    try:
        import tfds_rxrx1  # noqa: F401
    except ImportError:
        pass


def statistic_features(normalization: str) -> tuple[str, ...]:
    """The features holding the `(mean, std)` of `normalization` (none for "none")."""
    return _STAT_FEATURES.get(normalization, ())


def normalization_statistics(example, normalization: str) -> tuple[tf.Tensor, tf.Tensor]:
    """float32 `(mean, std)` [6] of an example's normalization group (paper, "Plate-based
    normalization"); for "none" the constants that only scale 8-bit pixels to [-1, 1]."""
    if normalization in _STAT_FEATURES:
        mean_key, std_key = _STAT_FEATURES[normalization]
        return tf.cast(example[mean_key], tf.float32), tf.cast(example[std_key], tf.float32)
    neutral = tf.fill([constants.NUM_CHANNELS], NEUTRAL_STATISTIC)
    return neutral, neutral


def _decoded_features(normalization: str, with_labels: bool, with_ids: bool) -> dict:
    keep = {"image": True, "id_code": True, "site": True, "experiment": True, "cell_type": True}
    keep.update({name: True for name in statistic_features(normalization)})
    if with_ids:
        keep.update({name: True for name in ID_FEATURES})
    if with_labels:
        keep["sirna"] = True
    return keep


def load_sites(
    data_config,
    split: str,
    *,
    with_labels: bool,
    with_ids: bool = False,
    shuffle_files: bool = False,
    seed: int | None = None,
    controls_only: bool = False,
) -> tf.data.Dataset:
    """One element per site, only the features needed; `sirna` is not even decoded without labels.

    `controls_only` keeps the control wells (positive and negative) and drops every treatment
    first thing, so a treatment's label never reaches a caller (SPEC §1: controls are labelled on
    test plates too).
    """
    keep = _decoded_features(data_config.normalization, with_labels, with_ids)
    if controls_only:
        keep["well_type"] = True
    read_config = tfds.ReadConfig(shuffle_seed=seed, interleave_cycle_length=4)
    dataset = tfds.load(
        data_config.builder,
        split=split,
        data_dir=data_config.data_dir or None,
        shuffle_files=shuffle_files,
        read_config=read_config,
        download=False,  # RxRx1 is built with `tfds build`, never fetched here
        decoders=tfds.decode.PartialDecoding(keep),
    )
    if not controls_only:
        return dataset
    dataset = dataset.filter(lambda example: tf.not_equal(example["well_type"], "treatment"))
    if with_ids:
        return dataset
    # The same features as the train split's labelled sites, so the two streams can be mixed.
    return dataset.map(lambda example: {k: v for k, v in example.items() if k != "well_type"})


def _in_set(value: tf.Tensor, names) -> tf.Tensor:
    if not names:
        return tf.constant(False)
    return tf.reduce_any(tf.equal(value, tf.constant(list(names))))


def select_experiments(dataset, *, include=(), exclude=(), cell_types=()) -> tf.data.Dataset:
    """Keeps sites of the listed experiments (all if `include` is empty), minus `exclude`."""

    def keep(example):
        wanted = tf.constant(True) if not include else _in_set(example["experiment"], include)
        wanted = tf.logical_and(wanted, tf.logical_not(_in_set(example["experiment"], exclude)))
        if cell_types:
            wanted = tf.logical_and(wanted, _in_set(example["cell_type"], cell_types))
        return wanted

    return dataset.filter(keep)


def one_site_per_well(dataset, seed: int, epoch: tf.Tensor) -> tf.data.Dataset:
    """Keeps one site of each well, picked anew every epoch from a hash of (well, seed, epoch).

    Stateless and order-free, so it streams: no grouping of the two sites is needed
    (docs/method.md §1: a training sample is one well with one site picked at random each time).
    """

    def keep(example):
        key = tf.strings.join([example["id_code"], str(seed), tf.strings.as_string(epoch)], "/")
        picked_site = tf.strings.to_hash_bucket_fast(key, constants.SITES_PER_WELL) + 1
        return tf.equal(tf.cast(example["site"], tf.int64), picked_site)

    return dataset.filter(keep)


def to_sample(example, *, normalization: str, image_size: int, labelled: bool, pseudo_labels=None):
    """Maps a decoded example to the training dict (image stays uint8)."""
    image = example["image"]
    if image_size and (image.shape[0] != image_size or image.shape[1] != image_size):
        # The builder does not declare a static size: resize only when the stored size differs
        # (a float32 resize of every 512 px image to 512 px would cost 4x the pipeline's rate).
        def resized():
            area = tf.image.resize(image, (image_size, image_size), method="area")
            return tf.cast(tf.clip_by_value(tf.round(area), 0, 255), tf.uint8)

        shape = tf.shape(image)
        same = tf.logical_and(tf.equal(shape[0], image_size), tf.equal(shape[1], image_size))
        image = tf.cond(same, lambda: image, resized)
    image = tf.ensure_shape(image, (image_size or None, image_size or None, constants.NUM_CHANNELS))
    mean, std = normalization_statistics(example, normalization)
    sample = {"image": image, "mean": mean, "std": std}
    if labelled:
        sample["label"] = tf.cast(example["sirna"], tf.int32)
    else:
        sample["label"] = tf.constant(constants.UNKNOWN_LABEL, tf.int32)
    if pseudo_labels is not None:
        sample["pseudo_label"] = tf.cast(pseudo_labels.lookup(example["id_code"]), tf.int32)
    else:
        sample["pseudo_label"] = tf.constant(constants.UNKNOWN_LABEL, tf.int32)
    return sample


def pseudo_label_table(id_codes, labels) -> tf.lookup.StaticHashTable:
    """id_code (well) -> pseudo label; wells not listed get -1."""
    initializer = tf.lookup.KeyValueTensorInitializer(
        tf.constant(list(id_codes), tf.string), tf.constant(np.asarray(labels, np.int64), tf.int64)
    )
    return tf.lookup.StaticHashTable(initializer, default_value=constants.UNKNOWN_LABEL)


@dataclasses.dataclass(frozen=True)
class SplitIndex:
    """How many wells each role has; computed once (a pass over ids only) and cached by the caller."""

    labelled_wells: int  # training wells outside validation, plus test control wells if used
    unlabelled_wells: int
    validation_sites: int
    train_experiments: tuple
    test_experiments: tuple
    test_control_wells: int = 0  # of labelled_wells (config.data.test_controls)


def split_names(data_config) -> tuple[str, ...]:
    """The splits the built data set holds (a supervised run needs only `train`)."""
    register_builder()
    return tuple(
        tfds.builder(data_config.builder, data_dir=data_config.data_dir or None).info.splits
    )


def index_splits(data_config) -> SplitIndex:
    """Counts wells per role, reading only the identifier features.

    A data set without a `test` split has no unlabelled wells: enough for supervised training, and
    `training_dataset` refuses it for the mean teacher.
    """

    def experiments_and_wells(split):
        dataset = load_sites(data_config, split, with_labels=False, with_ids=True)
        dataset = dataset.map(
            lambda e: (e["experiment"], e["id_code"], e["cell_type"], e["well_type"])
        )
        wells, experiments, controls = {}, set(), set()
        for batch in dataset.batch(4096).as_numpy_iterator():
            for exp, well, cell, well_type in zip(*batch, strict=True):
                if data_config.cell_types and cell.decode() not in data_config.cell_types:
                    continue
                experiments.add(exp.decode())
                wells.setdefault(exp.decode(), set()).add(well)
                if well_type.decode() != "treatment":
                    controls.add(well)
        return experiments, wells, controls

    train_experiments, train_wells, _ = experiments_and_wells("train")
    test_experiments, test_wells, test_controls = set(), {}, set()
    if "test" in split_names(data_config):
        test_experiments, test_wells, test_controls = experiments_and_wells("test")
    if not data_config.test_controls:
        test_controls = set()
    val = set(data_config.val_experiments)
    missing = val - train_experiments
    if missing:
        raise ValueError(
            f"config.data.val_experiments {sorted(missing)} are not experiments of the train split "
            f"{sorted(train_experiments)}"
        )
    labelled = sum(len(w) for e, w in train_wells.items() if e not in val)
    if labelled == 0:
        raise ValueError(
            "no labelled training wells left after removing the validation experiments"
        )
    return SplitIndex(
        labelled_wells=labelled + len(test_controls),
        unlabelled_wells=sum(len(w) for w in test_wells.values()),
        validation_sites=2 * sum(len(w) for e, w in train_wells.items() if e in val),
        train_experiments=tuple(sorted(train_experiments)),
        test_experiments=tuple(sorted(test_experiments)),
        test_control_wells=len(test_controls),
    )


def _split_sites(data_config) -> dict[str, int]:
    """Sites per split, from the data set's metadata (no pass over the records)."""
    register_builder()
    splits = tfds.builder(data_config.builder, data_dir=data_config.data_dir or None).info.splits
    return {name: int(splits[name].num_examples) for name in splits}


def _sources(data_config, split, *, labelled, seed, experiments_excluded):
    """[(sites, expected share)] of a stream: `split` minus the excluded experiments and, for the
    labelled train stream with `data.test_controls`, the test split's control wells (labelled in
    RxRx1, SPEC §1; never a treatment of it)."""
    cell_types = tuple(data_config.cell_types)
    base = load_sites(data_config, split, with_labels=labelled, shuffle_files=True, seed=seed)
    sources = [(select_experiments(base, exclude=experiments_excluded, cell_types=cell_types), 1.0)]
    sites = _split_sites(data_config)
    if not labelled or split != "train" or not data_config.test_controls or "test" not in sites:
        return sources
    controls = load_sites(
        data_config, "test", with_labels=True, shuffle_files=True, seed=seed, controls_only=True
    )
    # Only how evenly the two interleave depends on this share (RxRx1: 31 control wells of 308).
    share = sites["test"] * constants.NUM_CONTROLS / constants.WELLS_PER_PLATE / sites["train"]
    return sources + [(select_experiments(controls, cell_types=cell_types), share)]


def _training_stream(
    data_config, split, *, labelled, seed, experiments_excluded, pseudo_labels=None
):
    """An endless, reshuffled-every-epoch stream of one-site-per-well samples (the labelled train
    stream holds the test controls too, drawn at random among the training wells: `_sources`)."""
    sources = _sources(
        data_config, split, labelled=labelled, seed=seed, experiments_excluded=experiments_excluded
    )

    def one_epoch(epoch):
        parts = [one_site_per_well(source, seed, epoch) for source, _ in sources]
        epoch_data = parts[0]
        if len(parts) > 1:  # every site of both, in a random interleave
            epoch_data = tf.data.Dataset.sample_from_datasets(
                parts, weights=[share for _, share in sources], seed=seed,
                stop_on_empty_dataset=False,
            )  # fmt: skip
        return epoch_data.shuffle(
            data_config.shuffle_buffer, seed=seed, reshuffle_each_iteration=True
        )

    stream = tf.data.Dataset.counter().flat_map(one_epoch)
    return stream.map(
        lambda e: to_sample(
            e,
            normalization=data_config.normalization,
            image_size=data_config.image_size,
            labelled=labelled,
            pseudo_labels=pseudo_labels,
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def interleave_per_replica(labelled, unlabelled, num_replicas: int):
    """Concatenates two batches so every replica's contiguous slice holds the same labelled share.

    A distribution strategy splits a global batch into contiguous slices; plain concatenation would
    hand replica 0 all the labelled rows.
    """

    def merge(a, b):
        def one(x, y):
            x = tf.reshape(x, tf.concat([[num_replicas, -1], tf.shape(x)[1:]], 0))
            y = tf.reshape(y, tf.concat([[num_replicas, -1], tf.shape(y)[1:]], 0))
            merged = tf.concat([x, y], axis=1)
            return tf.reshape(merged, tf.concat([[-1], tf.shape(merged)[2:]], 0))

        return {key: one(a[key], b[key]) for key in a}

    return tf.data.Dataset.zip(labelled, unlabelled).map(merge)


def labelled_batch_size(batch_size: int, labelled_share: float, num_replicas: int) -> int:
    """Labelled rows per global batch: a multiple of the replica count, at least one per replica."""
    per_replica = batch_size // num_replicas
    labelled = max(1, min(per_replica, round(per_replica * labelled_share)))
    return labelled * num_replicas


def training_dataset(
    config, *, num_replicas: int = 1, pseudo_labels=None, skip_batches: int = 0
) -> tf.data.Dataset:
    """Endless batches of the global batch size for `model.fit(steps_per_epoch=...)`.

    Labelled rows: the train split minus the validation experiments. With the mean teacher, each
    batch also holds unlabelled rows of the test split, in the fixed share `labelled_share`.
    The stream is a deterministic function of `train.seed`; `skip_batches` starts it that many
    batches in, so a run resumed after k epochs of s steps (`skip_batches=k * s`) sees exactly the
    batches an uninterrupted run sees from epoch k on (skipped batches are read, not trained on).
    """
    batches = _training_batches(config, num_replicas, pseudo_labels)
    if skip_batches:
        batches = batches.skip(skip_batches)
    return batches.prefetch(tf.data.AUTOTUNE)


def _training_batches(config, num_replicas: int, pseudo_labels) -> tf.data.Dataset:
    """The endless batches of `training_dataset`, before skipping and prefetching."""
    data_config, batch_size = config.data, config.train.batch_size
    if batch_size % num_replicas:
        raise ValueError(
            f"train.batch_size={batch_size} is not divisible by the {num_replicas} replicas"
        )
    seed = config.train.seed
    val = tuple(data_config.val_experiments)
    labelled_stream = _training_stream(
        data_config, "train", labelled=True, seed=seed, experiments_excluded=val
    )
    if not config.mean_teacher.enabled or config.mean_teacher.labelled_share >= 1.0:
        return labelled_stream.batch(batch_size, drop_remainder=True)
    if "test" not in split_names(data_config):
        raise ValueError(
            f"the mean teacher needs the unlabelled `test` split, which {data_config.builder} in "
            f"{data_config.data_dir or 'the TFDS default data_dir'} lacks; set "
            "mean_teacher.enabled=False to train supervised, or build the data set with its test split"
        )
    n_labelled = labelled_batch_size(batch_size, config.mean_teacher.labelled_share, num_replicas)
    unlabelled_stream = _training_stream(
        data_config,
        "test",
        labelled=False,
        seed=seed + 1,
        experiments_excluded=(),
        pseudo_labels=pseudo_labels,
    )
    return interleave_per_replica(
        labelled_stream.batch(n_labelled, drop_remainder=True),
        unlabelled_stream.batch(batch_size - n_labelled, drop_remainder=True),
        num_replicas,
    )


def plate_design_from_split(data_dir, builder: str, split: str = "train", exclude_experiments=()):
    """The plate design (`plate_design.learn_plate_design`: siRNA groups and their order over the
    plates) learned from the labelled wells of a split, leaving out `exclude_experiments` (e.g. the
    validation experiments being scored).

    Reads identifiers and labels only, never images. None when the split is absent or holds no
    labelled treatment well.
    """
    from deepnoise_tf import plate_design

    register_builder()
    if split not in tfds.builder(builder, data_dir=data_dir or None).info.splits:
        return None
    dataset = tfds.load(
        builder,
        split=split,
        data_dir=data_dir or None,
        download=False,  # RxRx1 is built with `tfds build`, never fetched here
        decoders=tfds.decode.PartialDecoding({"experiment": True, "plate": True, "sirna": True}),
    )
    experiments, plates, labels = [], [], []
    for batch in dataset.batch(8192).as_numpy_iterator():
        names = np.asarray([name.decode() for name in batch["experiment"]])
        keep = ~np.isin(names, list(exclude_experiments))
        experiments.append(names[keep])
        plates.append(batch["plate"][keep])
        labels.append(batch["sirna"][keep])
    if not experiments:
        return None
    design = plate_design.learn_plate_design(
        np.concatenate(experiments), np.concatenate(plates), np.concatenate(labels)
    )
    return design if (design.sirna_groups >= 0).any() else None


def require_built(data_dir, builder: str) -> None:
    """Fails in one line unless the data set is built: `tfds.load` would otherwise start a download,
    and TFDS's own error for a data set it cannot find lists every data set it knows (~500 lines).
    """
    register_builder()
    where = data_dir or os.path.expanduser("~/tensorflow_datasets")
    try:
        prepared = tfds.builder(builder, data_dir=data_dir or None).is_prepared()
    except tfds.core.registered.DatasetNotFoundError:
        prepared = False
    if not prepared:
        raise FileNotFoundError(
            f"{builder} is not built in {where}; build it with `tfds build {builder} --imports "
            f"tfds_rxrx1 --manual_dir <the RxRx1 download> --data_dir {where}` "
            "or set config.data.data_dir to where it is built"
        )


def built_configs(data_dir, name: str = "rxrx1") -> list[str]:
    """The configs of `name` built in `data_dir`, e.g. `["rxrx1/64"]`, sorted.

    So a command given only `--data_dir` reads what is there instead of assuming `rxrx1/native`
    (which TFDS would offer to download, 46 GB). A build is finished once TFDS wrote
    `data_dir/<name>/<config>/<version>/dataset_info.json`; its unfinished builds sit in folders
    whose name is no version. Reads folder names only.
    """
    root = str(data_dir or tfds.core.constants.DATA_DIR)
    pattern = tf.io.gfile.join(root, name, "*", "*", "dataset_info.json")
    folders = [path.replace("\\", "/").split("/") for path in tf.io.gfile.glob(pattern)]
    versions = [parts for parts in folders if tfds.core.Version.is_valid(parts[-2])]
    return sorted({f"{name}/{parts[-3]}" for parts in versions})
