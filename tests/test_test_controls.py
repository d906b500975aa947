"""Test-plate controls are labelled training samples (SPEC §1; RxRx1's test_controls.csv), test
treatments stay unlabelled, and the validation experiments give nothing, on the tiny TFDS build
(release layout: the test treatments' true labels are stored, so a leak would show)."""

import collections

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import tiny_config

from deepnoise_tf import constants, data

VALIDATION = "HEPG2-01"


def config_for(tiny_data, **fields):
    return tiny_config(
        *tiny_data,
        **{
            "data.val_experiments": (VALIDATION,),
            "data.shuffle_buffer": 64,
            "train.batch_size": 4,
            "mean_teacher.labelled_share": 1.0,  # the labelled stream alone
            **fields,
        },
    )


@pytest.fixture(scope="module")
def sites(tiny_data):
    """{image bytes: (split, experiment, id_code, well_type, stored sirna)} of every site."""
    data_dir, builder = tiny_data
    table = {}
    for split in ("train", "test"):
        for e in tfds.load(builder, split=split, data_dir=data_dir).as_numpy_iterator():
            key = e["image"].tobytes()
            assert key not in table, "two sites share an image: the test could not tell them apart"
            table[key] = (
                split,
                e["experiment"].decode(),
                e["id_code"].decode(),
                e["well_type"].decode(),
                int(e["sirna"]),
            )
    return table


def first_epoch(config, count):
    """The first `count` labelled samples of the training stream (one epoch: one site per well)."""
    stream = data.training_dataset(config).unbatch().take(count).as_numpy_iterator()
    return [(sample["image"].tobytes(), int(sample["label"])) for sample in stream]


def test_labelled_stream_holds_the_test_controls_with_their_labels(tiny_data, sites):
    config = config_for(tiny_data)
    index = data.index_splits(config.data)
    samples = first_epoch(config, index.labelled_wells)
    seen = [(sites[image], label) for image, label in samples]
    test_controls = {
        id_code: sirna
        for split, _, id_code, well_type, sirna in sites.values()
        if split == "test" and well_type != "treatment"
    }
    assert test_controls and all(sirna >= constants.NUM_SIRNAS for sirna in test_controls.values())
    got_controls = {
        site[2]: label for site, label in seen if site[0] == "test" and site[3] != "treatment"
    }
    # Every test control well once in the epoch, with its label.
    assert got_controls == test_controls
    assert collections.Counter(site[2] for site, _ in seen if site[0] == "test") == {
        id_code: 1 for id_code in test_controls
    }
    # No test treatment (their stored labels are real here), nothing of the validation experiment.
    assert not [site for site, _ in seen if site[0] == "test" and site[3] == "treatment"]
    assert not [site for site, _ in seen if site[1] == VALIDATION]
    # Every other row is a training well of the train split, with its own label.
    train_wells = {
        site[2] for site in sites.values() if site[0] == "train" and site[1] != VALIDATION
    }
    assert {site[2] for site, _ in seen if site[0] == "train"} == train_wells
    assert all(label == site[4] for site, label in seen)
    assert index.labelled_wells == len(train_wells) + len(test_controls)


def test_test_controls_are_spread_over_the_epoch(tiny_data, sites):
    """Drawn among the training wells, not appended after them (a small shuffle buffer could not
    mix a block at the end of each epoch)."""
    appended = []
    for seed in range(5):  # the interleave is random: one seed could put them all last by chance
        config = config_for(tiny_data, **{"data.shuffle_buffer": 1, "train.seed": seed})
        samples = first_epoch(config, data.index_splits(config.data).labelled_wells)
        is_test = np.array([sites[image][0] == "test" for image, _ in samples])
        count = int(is_test.sum())
        assert count > 0
        appended.append(bool(is_test[-count:].all()))
    # Appended after the training wells, the test controls would fill the last places every time.
    assert not all(appended)


def test_switched_off_the_labelled_stream_is_the_train_split_only(tiny_data, sites):
    config = config_for(tiny_data, **{"data.test_controls": False})
    index = data.index_splits(config.data)
    assert index.test_control_wells == 0
    samples = first_epoch(config, 2 * index.labelled_wells)
    assert {sites[image][0] for image, _ in samples} == {"train"}


def test_unlabelled_rows_of_a_mixed_batch_carry_no_label(tiny_data, sites):
    """With the mean teacher, the test split's unlabelled rows (controls included) stay -1."""
    config = config_for(tiny_data, **{"mean_teacher.labelled_share": 0.5})
    n_labelled = data.labelled_batch_size(4, 0.5, 1)
    for batch in data.training_dataset(config).take(20).as_numpy_iterator():
        assert (batch["label"][n_labelled:] == constants.UNKNOWN_LABEL).all()
        for image, label in zip(
            batch["image"][:n_labelled], batch["label"][:n_labelled], strict=True
        ):
            split, _, _, well_type, sirna = sites[image.tobytes()]
            assert label == sirna and (split == "train" or well_type != "treatment")


def test_controls_only_drops_every_treatment(tiny_data):
    config = config_for(tiny_data)
    rows = list(
        data.load_sites(
            config.data, "test", with_labels=True, with_ids=True, controls_only=True
        ).as_numpy_iterator()
    )
    assert rows and all(row["well_type"] != b"treatment" for row in rows)
    assert all(row["sirna"] >= constants.NUM_SIRNAS for row in rows)
