"""The tf.data pipeline on a tiny synthetic TFDS build: normalization stats, site picking, mixing,
and the guarantee that training never reads a test-split label."""

import collections

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config as shared_tiny_config

from deepnoise_tf import constants, data, inference


@pytest.fixture(scope="module")
def tiny_config(tiny_data):
    """The shared tiny config (validation on HEPG2-01); the module's tests may change its fields, never
    the data set."""
    return shared_tiny_config(
        *tiny_data,
        **{
            "data.synthetic_preset": "quickstart",  # cpu_scale's; the data functions do not read it
            "data.val_experiments": ("HEPG2-01",),
            "data.shuffle_buffer": 64,
            "train.batch_size": 8,
        },
    )


def examples(config, split):
    import tensorflow_datasets as tfds

    return list(
        tfds.load(
            config.data.builder, split=split, data_dir=config.data.data_dir
        ).as_numpy_iterator()
    )


def test_samples_carry_the_example_statistics_of_the_chosen_normalization(tiny_config):
    source = {(e["id_code"], e["site"]): e for e in examples(tiny_config, "train")}
    for normalization in ("plate", "experiment", "cell_type"):
        with tiny_config.unlocked():
            tiny_config.data.normalization = normalization
        sites = inference.site_batches(
            tiny_config.data.data_dir, tiny_config.data.builder, "train", normalization,
            experiments=("HEPG2-01",),
        )  # fmt: skip
        batch = next(iter(sites.as_numpy_iterator()))
        for row in range(len(batch["label"])):
            example = source[(batch["id_code"][row], batch["site"][row])]
            np.testing.assert_array_equal(batch["image"][row], example["image"])
            np.testing.assert_array_equal(batch["mean"][row], example[f"{normalization}_mean"])
            np.testing.assert_array_equal(batch["std"][row], example[f"{normalization}_std"])
            assert batch["label"][row] == example["sirna"]
    with tiny_config.unlocked():
        tiny_config.data.normalization = "plate"


def test_one_site_per_well_each_epoch_and_both_sites_over_epochs(tiny_config):
    dataset = data.load_sites(tiny_config.data, "train", with_labels=False)
    wells = {e["id_code"] for e in examples(tiny_config, "train")}
    picked = collections.defaultdict(set)
    for epoch in range(6):
        sites = collections.Counter()
        for example in data.one_site_per_well(
            dataset, seed=0, epoch=tf.constant(epoch, tf.int64)
        ).as_numpy_iterator():
            sites[example["id_code"]] += 1
            picked[example["id_code"]].add(int(example["site"]))
        assert set(sites) == wells and set(sites.values()) == {1}
    # Over several epochs most wells were seen at both sites (hash of well, seed, epoch).
    assert np.mean([len(s) == 2 for s in picked.values()]) > 0.8


def test_training_batches_mix_a_fixed_labelled_share_per_replica(tiny_config):
    replicas = 2
    config = tiny_config.copy_and_resolve_references()
    config.mean_teacher.labelled_share = (
        0.5  # 8 rows over 2 replicas: 2 labelled + 2 unlabelled each
    )
    batch = next(iter(data.training_dataset(config, num_replicas=replicas).as_numpy_iterator()))
    assert (
        batch["image"].shape == (8, 16, 16, constants.NUM_CHANNELS)
        and batch["image"].dtype == np.uint8
    )
    labelled = (batch["label"] >= 0).reshape(replicas, -1)
    # Every replica's contiguous slice holds the same number of labelled rows, first.
    np.testing.assert_array_equal(labelled.sum(axis=1), [2, 2])
    assert labelled[:, :2].all()


def test_training_never_reads_a_test_label(tiny_config, monkeypatch):
    """The unlabelled test split is decoded without `sirna`; test labels are read only with the
    treatments filtered out (controls, tests/test_test_controls.py)."""
    truth = examples(tiny_config, "test")
    assert any(e["sirna"] >= 0 for e in truth)  # the release layout has real test labels
    requested = []
    original = data.load_sites

    def recording_load_sites(data_config, split, *, with_labels, **kwargs):
        requested.append((split, with_labels, kwargs.get("controls_only", False)))
        return original(data_config, split, with_labels=with_labels, **kwargs)

    monkeypatch.setattr(data, "load_sites", recording_load_sites)
    dataset = data.training_dataset(tiny_config)
    assert ("test", False, False) in requested and ("test", True, False) not in requested
    unlabelled = data.load_sites(tiny_config.data, "test", with_labels=False)
    assert "sirna" not in unlabelled.element_spec
    for batch in dataset.take(4).as_numpy_iterator():
        n_labelled = data.labelled_batch_size(8, tiny_config.mean_teacher.labelled_share, 1)
        assert (batch["label"][n_labelled:] == constants.UNKNOWN_LABEL).all()


def test_validation_experiments_are_held_out_of_training(tiny_config):
    tiny_config.mean_teacher.labelled_share = 1.0
    stream = data.training_dataset(tiny_config).unbatch().take(64)
    means = {tuple(e["mean"]) for e in stream.as_numpy_iterator()}
    held_out = {
        tuple(e["plate_mean"])
        for e in examples(tiny_config, "train")
        if e["experiment"] == b"HEPG2-01"
    }
    assert held_out and not means & held_out
    tiny_config.mean_teacher.labelled_share = 0.5


def test_pseudo_labels_are_looked_up_by_well(tiny_config):
    test_wells = sorted({e["id_code"] for e in examples(tiny_config, "test")})
    labels = np.arange(len(test_wells)) % 7
    table = data.pseudo_label_table(test_wells, labels)
    expected = dict(zip(test_wells, labels, strict=True))
    stream = data._training_stream(
        tiny_config.data,
        "test",
        labelled=False,
        seed=0,
        experiments_excluded=(),
        pseudo_labels=table,
    )
    for sample in stream.take(20).as_numpy_iterator():
        assert sample["label"] == -1
        assert sample["pseudo_label"] in set(labels)
    known = data.pseudo_label_table(test_wells[:1], [3])
    assert int(known.lookup(tf.constant(test_wells[0]))) == 3
    assert int(known.lookup(tf.constant("nowhere"))) == -1
    assert expected  # table built from every well


def test_index_counts_wells_per_role(tiny_config):
    index = data.index_splits(tiny_config.data)
    train = examples(tiny_config, "train")
    expected_labelled = len({e["id_code"] for e in train if e["experiment"] != b"HEPG2-01"})
    test_controls = {
        e["id_code"] for e in examples(tiny_config, "test") if e["well_type"] != b"treatment"
    }
    assert test_controls and index.test_control_wells == len(test_controls)
    assert index.labelled_wells == expected_labelled + len(test_controls)
    assert index.validation_sites == sum(e["experiment"] == b"HEPG2-01" for e in train)
    with tiny_config.unlocked():
        tiny_config.data.val_experiments = ("NOPE-01",)
    with pytest.raises(ValueError, match="NOPE-01"):
        data.index_splits(tiny_config.data)
    with tiny_config.unlocked():
        tiny_config.data.val_experiments = ("HEPG2-01",)
