"""Per-cell-type fine-tuning (docs/method.md §7): fresh head on the pretrained backbone, one cell
type's data, SGD under cosine restarts, one export per cell type, reruns that skip finished cell
types.

One tiny fine-tuning of HUVEC (16-pixel images, width 1/16, 8 steps) is shared by the tests. The
pretrained run is a built network with randomly perturbed weights (student and teacher apart), so
"starts from the pretrained teacher" and "fresh head" are both distinguishable from the seed's
initialization. A spy on `fit` records the weights at the start of training and the learning rate
before every step; a spy on `data.select_experiments` records every example that reaches training.
"""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from conftest import TINY_IMAGE_SIZE, perturbed
from conftest import tiny_config as shared_tiny_config

from deepnoise_tf import config as config_lib
from deepnoise_tf import constants, data, factory, finetuning, training
from deepnoise_tf.mean_teacher import MeanTeacher

STEPS_PER_EPOCH = 4
IMAGE_SIZE = TINY_IMAGE_SIZE


def tiny_config(data_dir, builder):
    # HUVEC (r = 0.25): cycles of 2 * 0.25 = 0.5 epochs = 2 steps; 2 cycles, then 1 epoch at 1e-3.
    return shared_tiny_config(
        data_dir,
        builder,
        **{
            "data.val_experiments": (),  # the tiny preset has one train experiment per cell type
            "data.shuffle_buffer": 64,
            "model.width": 0.0625,
            "train.batch_size": 8,
            "train.steps_per_epoch": STEPS_PER_EPOCH,
            "train.epochs": 1,
            "finetune.learning_rate": 0.05,
            "finetune.min_learning_rate": 0.01,
            "finetune.cycles": 2,
            "finetune.cycle_epochs": 2.0,
            "finetune.final_epochs": 1,
            "finetune.final_learning_rate": 1e-3,
        },
    )


@pytest.fixture(scope="module")
def pretrained(tiny_data, tmp_path_factory):
    """A train.py-like workdir whose student and teacher differ from each other and from the seed."""
    workdir = tmp_path_factory.mktemp("pretrained")
    config = tiny_config(*tiny_data)
    model = factory.build_model(config, steps_per_epoch=STEPS_PER_EPOCH)
    initial_head = [w.numpy() for w in model.student_head.weights]
    rng = np.random.default_rng(7)
    weights = {
        "teacher_backbone": perturbed(model.teacher_backbone.weights, rng),
        "teacher_head": perturbed(model.teacher_head.weights, rng),
        "student_backbone": perturbed(model.student_backbone.weights, rng),
        "student_head": perturbed(model.student_head.weights, rng),
    }
    (workdir / "checkpoints").mkdir()
    model.save_weights(str(workdir / "checkpoints" / "last.weights.h5"))
    (workdir / "config.json").write_text(config_lib.to_json(config))
    return {"workdir": str(workdir), "weights": weights, "initial_head": initial_head}


@pytest.fixture(scope="module")
def finetuned(tiny_data, pretrained, tmp_path_factory):
    """Fine-tunes HUVEC once, spying on fit (start weights, learning rates) and on the examples read."""
    workdir = tmp_path_factory.mktemp("finetune_out")
    record = {"starts": [], "steps": [], "experiments": [], "optimizers": []}

    class LearningRateRecorder(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            optimizer = self.model.optimizer
            record["steps"].append((int(optimizer.iterations), float(optimizer.learning_rate)))

    original_fit = MeanTeacher.fit

    def spying_fit(self, *args, **kwargs):
        record["starts"].append(
            {
                name: [w.numpy() for w in getattr(self, name).weights]
                for name in ("student_backbone", "student_head", "teacher_backbone", "teacher_head")
            }
        )
        record["optimizers"].append(self.optimizer)
        kwargs["callbacks"] = [*kwargs["callbacks"], LearningRateRecorder()]
        return original_fit(self, *args, **kwargs)

    original_select = data.select_experiments

    def note(experiment):
        record["experiments"].append(experiment.numpy().decode())
        return experiment

    def spying_select(dataset, **kwargs):
        def spy(example):
            example = dict(example)
            experiment = tf.py_function(note, [example["experiment"]], tf.string)
            example["experiment"] = tf.ensure_shape(experiment, [])
            return example

        return original_select(dataset, **kwargs).map(spy)

    config = tiny_config(*tiny_data)
    with config.unlocked():
        config.data.data_dir = ""  # "" = the pretrained run's data
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MeanTeacher, "fit", spying_fit)
        patch.setattr(data, "select_experiments", spying_select)
        exports = finetuning.run(
            config, str(workdir), init_workdir=pretrained["workdir"], cell_types="HUVEC"
        )
    return {"workdir": workdir, "exports": exports, "config": config, **record}


def test_head_is_fresh_and_backbone_starts_from_the_pretrained_teacher(finetuned, pretrained):
    (start,) = finetuned["starts"]
    expected_backbone = pretrained["weights"]["teacher_backbone"]  # moving statistics included
    for name in ("student_backbone", "teacher_backbone"):
        assert len(start[name]) == len(expected_backbone)
        for value, expected in zip(start[name], expected_backbone, strict=True):
            np.testing.assert_array_equal(value, expected)
    # Not the pretrained student's backbone (the two differ in the fixture).
    assert not np.allclose(
        start["student_backbone"][0], pretrained["weights"]["student_backbone"][0]
    )
    for name in ("student_head", "teacher_head"):
        for value, initial in zip(start[name], pretrained["initial_head"], strict=True):
            np.testing.assert_array_equal(value, initial)  # the seed's fresh initialization
        for value, trained in zip(start[name], pretrained["weights"][name], strict=True):
            assert np.abs(value - trained).max() > 1e-2


def test_only_the_chosen_cell_type_is_read(finetuned, tiny_data):
    experiments = set(finetuned["experiments"])
    assert experiments, "the spy saw no example"
    assert {finetuning.cell_type_of(experiment) for experiment in experiments} == {"HUVEC"}
    data_dir, builder = tiny_data
    truth = {}
    for split in ("train", "test"):
        sites = tfds.as_numpy(tfds.load(builder, split=split, data_dir=data_dir, batch_size=-1))
        huvec = sites["cell_type"] == b"HUVEC"
        controls = huvec & (sites["well_type"] != b"treatment")
        truth[split] = (
            set(sites["experiment"][huvec].astype(str)),
            len(set(sites["id_code"][huvec])),
            len(set(sites["id_code"][controls])),
        )
    # Labelled HUVEC train plates (and test controls), unlabelled HUVEC test plates, nothing else.
    assert experiments == truth["train"][0] | truth["test"][0]
    index = json.loads((finetuned["workdir"] / "HUVEC" / "split_index.json").read_text())["index"]
    assert index["labelled_wells"] == truth["train"][1] + truth["test"][2]
    assert index["unlabelled_wells"] == truth["test"][1]


def cosine_restarts_reference(step, *, steps_per_epoch, scale, finetune_config):
    """docs/method.md §7 in numpy: cycles of cycle_epochs * r epochs, half-cosine from lr to min,
    then final."""
    cycle_steps = finetune_config.cycle_epochs * scale * steps_per_epoch
    cycle = step // cycle_steps
    if cycle >= finetune_config.cycles:
        return finetune_config.final_learning_rate
    position = (step - cycle * cycle_steps) / cycle_steps
    low, high = finetune_config.min_learning_rate, finetune_config.learning_rate
    return low + (high - low) * 0.5 * (1.0 + math.cos(math.pi * position))


def test_sgd_follows_the_cosine_restarts_schedule(finetuned):
    finetune_config = finetuned["config"].finetune
    (optimizer,) = finetuned["optimizers"]
    assert isinstance(optimizer, keras.optimizers.SGD)
    assert optimizer.momentum == 0.0 and optimizer.weight_decay == pytest.approx(2e-4)
    epochs = math.ceil(2 * 2.0 * 0.25 + 1)  # cycles * cycle_epochs * r(HUVEC) + final_epochs
    steps, rates = zip(*finetuned["steps"], strict=True)
    assert list(steps) == list(range(epochs * STEPS_PER_EPOCH))
    expected = [
        cosine_restarts_reference(
            step, steps_per_epoch=STEPS_PER_EPOCH, scale=0.25, finetune_config=finetune_config
        )
        for step in steps
    ]
    np.testing.assert_allclose(rates, expected, rtol=1e-5)
    assert rates[0] == rates[2] == pytest.approx(0.05)  # the restart
    rows = (finetuned["workdir"] / "HUVEC" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + epochs


def serve(path, inputs):
    loaded = tf.saved_model.load(path)
    outputs = loaded.signatures["serving_default"](**{k: tf.constant(v) for k, v in inputs.items()})
    return {name: value.numpy() for name, value in outputs.items()}, loaded.signatures["metadata"]()


def test_the_cell_type_export_serves_the_finetuned_teacher(finetuned):
    assert finetuned["exports"] == {"HUVEC": str(finetuned["workdir"] / "HUVEC" / "export")}
    rng = np.random.default_rng(0)
    inputs = {
        "image": rng.integers(0, 256, size=(3, IMAGE_SIZE, IMAGE_SIZE, 6), dtype=np.uint8),
        "mean": rng.uniform(20, 60, size=(3, 6)).astype(np.float32),
        "std": rng.uniform(5, 20, size=(3, 6)).astype(np.float32),
    }
    outputs, metadata = serve(finetuned["exports"]["HUVEC"], inputs)
    assert (
        int(metadata["image_size"]) == IMAGE_SIZE and metadata["normalization"].numpy() == b"plate"
    )
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    # Reference: the fine-tuned teacher rebuilt from the cell type's checkpoint, normalized in numpy.
    cell_config = finetuning.cell_type_config(finetuned["config"], "HUVEC")
    model = factory.build_model(cell_config, STEPS_PER_EPOCH)
    model.load_weights(str(finetuned["workdir"] / "HUVEC" / "checkpoints" / "last.weights.h5"))
    normalized = (inputs["image"] - inputs["mean"][:, None, None, :]) / inputs["std"][
        :, None, None, :
    ]
    logits = model.teacher_head(
        model.teacher_backbone(normalized.astype(np.float32), training=False)
    )
    np.testing.assert_allclose(outputs["logits"], np.asarray(logits), atol=1e-4)


def test_rerun_skips_finished_cell_types(finetuned, pretrained, monkeypatch):
    calls = []

    class Stop(Exception):
        pass

    def fake_train(config, workdir, **kwargs):
        calls.append((tuple(config.data.cell_types), config.train.epochs, workdir, kwargs))
        raise Stop

    monkeypatch.setattr(training, "run", fake_train)
    workdir = str(finetuned["workdir"])
    again = finetuning.run(
        finetuned["config"], workdir, init_workdir=pretrained["workdir"], cell_types=["HUVEC"]
    )
    assert again == finetuned["exports"] and calls == []
    with pytest.raises(Stop):
        finetuning.run(
            finetuned["config"],
            workdir,
            init_workdir=pretrained["workdir"],
            cell_types=["HUVEC", "HEPG2"],
        )
    ((cell_types, epochs, cell_dir, kwargs),) = calls  # HUVEC skipped, HEPG2 started
    assert cell_types == ("HEPG2",) and epochs == math.ceil(2 * 2.0 * 0.5 + 1)
    assert cell_dir.endswith("HEPG2") and kwargs["initial_backbone"].endswith(
        finetuning.BACKBONE_FILE
    )


def test_cell_type_config_and_errors(tiny_data):
    config = tiny_config(*tiny_data)
    with config.unlocked():
        config.data.val_experiments = ("HEPG2-03", "HUVEC-16", "U2OS-03")
    cell = finetuning.cell_type_config(config, "HUVEC")
    assert cell.data.cell_types == ("HUVEC",) and cell.data.val_experiments == ("HUVEC-16",)
    assert cell.train.optimizer == "sgd_cosine" and config.train.optimizer == "adam_l2"  # a copy
    assert factory.finetune_epoch_scale(cell) == 0.25
    with pytest.raises(ValueError, match="exactly one cell type"):
        factory.finetune_epoch_scale(config)
    with pytest.raises(ValueError, match="not one of"):
        finetuning.resolve_cell_types(config, "HUVEC,MCF7")
    assert finetuning.resolve_cell_types(config, None) == constants.CELL_TYPES
    other = tiny_config(*tiny_data)
    other.model.width = 0.125
    with pytest.raises(ValueError, match="model.width"):
        finetuning.check_compatible(config, other)
