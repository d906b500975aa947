"""The ablation (Fig. 3A/3B + linear floor): the floor's regression, the step configs, the table, resuming.

The orchestration is checked with a stand-in trainer and evaluator that hand back crafted logits, so
the expected accuracies come from plain numpy; one smoke run trains a real (tiny) Model 1 through
the command line.
"""

import json
import pathlib
import shutil

import numpy as np
import pandas as pd
import pytest
import scipy.special
import tensorflow_datasets as tfds

from deepnoise_tf import (
    ablation,
    ablation_cache,
    ablation_steps,
    baselines,
    constants,
    evaluation,
    scales,
    schedules,
    synthetic,
)
from deepnoise_tf import config as config_lib
from deepnoise_tf import workdir as workdir_lib

VAL_EXPERIMENTS = ("HEPG2-02", "HUVEC-02")
DATA_PARAMETERS = {"preset": "tiny", "train_experiments": 2, "test_experiments": 1}
# Small enough that a real training takes seconds; applied to every step.
TINY_OVERRIDES = {
    "data.val_experiments": repr(VAL_EXPERIMENTS),
    "data.image_size": "16",
    "model.width": "0.0625",
    "train.epochs": "1",
    "train.steps_per_epoch": "2",
    "train.batch_size": "8",
}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """(data_dir, builder, ground truth) of a tiny release-layout RxRx1 with 2 train experiments per cell type."""
    import tfds_rxrx1  # noqa: F401

    data_dir = tmp_path_factory.mktemp("ablation_data")
    truth = synthetic.write_dataset(data_dir / "manual", layout="release", **DATA_PARAMETERS)
    builder = tfds.builder("rxrx1/native", data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=str(data_dir / "manual"), try_download_gcs=False
        )
    )
    return str(data_dir), "rxrx1/native", truth


# ------------------------------------------------------------------------------------------------
# The linear floor


def reference_objective(parameters, features, targets, num_classes, l2):
    """Mean cross-entropy + l2/2 |W|^2, written independently (logsumexp, explicit loop over rows)."""
    dims = features.shape[1]
    weights = parameters[: dims * num_classes].reshape(dims, num_classes)
    bias = parameters[dims * num_classes :]
    total = 0.0
    for row, target in zip(features, targets, strict=True):
        scores = row @ weights + bias
        total += scipy.special.logsumexp(scores) - scores[target]
    return total / len(features) + 0.5 * l2 * np.sum(weights**2)


def central_gradient(function, point, step=1e-6):
    gradient = np.zeros_like(point)
    for index in range(len(point)):
        offset = np.zeros_like(point)
        offset[index] = step
        gradient[index] = (function(point + offset) - function(point - offset)) / (2 * step)
    return gradient


def test_softmax_regression_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    features, targets = rng.normal(size=(20, 3)), rng.integers(0, 4, size=20)
    parameters = rng.normal(size=3 * 4 + 4)
    loss, gradient = baselines.softmax_regression_objective(parameters, features, targets, 4, 0.3)
    reference = lambda p: reference_objective(p, features, targets, 4, 0.3)  # noqa: E731
    assert loss == pytest.approx(reference(parameters), rel=1e-10)
    np.testing.assert_allclose(gradient, central_gradient(reference, parameters), atol=1e-7)


def test_softmax_regression_reaches_the_optimum_and_solves_a_separable_problem():
    rng = np.random.default_rng(1)
    labels = np.array([3, 17, constants.NEGATIVE_CONTROL])  # arbitrary ids, not 0..K-1
    centres = rng.normal(scale=6.0, size=(3, 5))
    which = rng.integers(0, 3, size=90)
    features = centres[which] + rng.normal(size=(90, 5))
    model = baselines.fit_softmax_regression(features, labels[which], l2=1e-3)

    # First-order optimality of the independent objective on the standardized features.
    standardized = (features - features.mean(0)) / features.std(0)
    parameters = np.concatenate([model.weights.ravel(), model.bias])
    targets = np.searchsorted(model.classes, labels[which])
    reference = lambda p: reference_objective(p, standardized, targets, 3, 1e-3)  # noqa: E731
    assert np.abs(central_gradient(reference, parameters)).max() < 1e-4

    fresh_which = rng.integers(0, 3, size=50)
    fresh = centres[fresh_which] + rng.normal(size=(50, 5))
    for points, truth in ((features, which), (fresh, fresh_which)):
        probabilities = model.probabilities(points)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-12)
        np.testing.assert_array_equal(model.classes[probabilities.argmax(1)], labels[truth])
    full = baselines.full_class_logits(model, fresh)
    assert full.shape == (50, constants.NUM_CLASSES)
    np.testing.assert_array_equal(full.argmax(1), labels[fresh_which])


def test_intensity_features_are_moments_of_the_normalized_image():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(3, 8, 8, 6), dtype=np.uint8)
    mean, std = rng.uniform(20, 60, size=(3, 6)), rng.uniform(5, 20, size=(3, 6))
    features = baselines.intensity_features(images, mean, std)
    for site in range(3):
        normalized = (images[site].astype(np.float64) - mean[site]) / std[site]
        flat = normalized.reshape(-1, 6)
        np.testing.assert_allclose(features[site], np.r_[flat.mean(0), flat.std(0)], atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Step configs


def differing_fields(a, b):
    return {line.split(":")[0] for line in workdir_lib.config_differences(a.to_dict(), b.to_dict())}


def test_steps_differ_only_where_the_paper_ablation_says():
    configs = {
        step.name: ablation_steps.step_config(
            step, scale="cpu", overrides={"data.normalization": "'none'"}
        )
        for step in ablation_steps.STEPS
        if step.trains
    }
    plate = configs["norm_plate"]
    assert plate.data.normalization == "plate"  # the step wins over an override for every step
    assert configs["norm_cell_type"].data.normalization == "cell_type"
    assert differing_fields(configs["norm_cell_type"], plate) == {"data.normalization"}
    assert differing_fields(configs["norm_experiment"], plate) == {"data.normalization"}
    assert differing_fields(configs["arcface"], plate) == {"model.head"}
    assert configs["arcface"].model.head == "arcface" and plate.model.head == "softmax"
    assert (
        configs["mean_teacher"].mean_teacher.enabled and not configs["arcface"].mean_teacher.enabled
    )
    assert differing_fields(configs["mean_teacher_wide"], configs["mean_teacher"]) == {
        "model.backbone"
    }
    for name, value in scales.ablation_scale_settings("cpu").items():
        section, field = name.split(".")
        assert all(config[section][field] == value for config in configs.values())
    morphology = ablation_steps.step_config(ablation_steps.STEPS[3], scale="cpu_morphology")
    assert differing_fields(morphology, ablation_steps.step_config(ablation_steps.STEPS[3], scale="cpu")) == {
        "data.synthetic_preset", "train.epochs", "train.learning_rates",
        "model.arcface_margin_warmup_fraction", "mean_teacher.consistency_start_fraction",
        "mean_teacher.rampup_fraction", "mean_teacher.ema_boundary_fractions",
    }  # fmt: skip
    assert morphology.data.synthetic_preset == "ablation_morphology"
    schedule = schedules.run_schedule(morphology)
    assert max(schedule.lr_boundaries) < morphology.train.epochs == 64
    assert 0 < schedule.arcface_margin_warmup_epochs < morphology.train.epochs
    assert schedule.consistency_start_epoch == 32.0  # docs/ablation.md's runs
    cpu_rates = ablation_steps.step_config(
        ablation_steps.STEPS[3], scale="cpu"
    ).train.learning_rates
    assert np.allclose(
        np.array(cpu_rates) / np.array(morphology.train.learning_rates), 3.0, rtol=0.02
    )
    paper = ablation_steps.step_config(ablation_steps.STEPS[3], scale="paper")
    assert paper.data.image_size == constants.IMAGE_SIZE and paper.train.epochs == 160
    # The paper's labelled-only phase: a quarter of the 160 epochs (docs/fidelity.md).
    assert schedules.run_schedule(paper).consistency_start_epoch == 40.0


# ------------------------------------------------------------------------------------------------
# The table and resuming, with a stand-in trainer and evaluator


def validation_wells(truth):
    wells = truth[truth["experiment"].isin(VAL_EXPERIMENTS)].drop_duplicates("id_code")
    wells = wells.rename(columns={"sirna": "label"}).reset_index(drop=True)
    return wells[list(evaluation.WELL_COLUMNS)]


def crafted_logits(wells, step_name):
    """Single models: noise plus a bonus for the truth on some wells. Mean teachers: the truth at 6,
    a class of another plate group at 6.5 on every third treatment well (both members), and
    member-specific jitter, so only the plate prior gets everything right."""
    seed = ablation_steps.STEP_NAMES.index(step_name)
    rng = np.random.default_rng(seed)
    labels = wells["label"].to_numpy()
    rows = np.arange(len(wells))
    if step_name in ("mean_teacher", "mean_teacher_wide"):
        logits = rng.normal(scale=0.05, size=(len(wells), constants.NUM_CLASSES))
        logits[rows, labels] = 6.0
        treatment = (wells["well_type"] == "treatment").to_numpy()
        distracted = treatment & (rows % 3 == 0)
        logits[rows[distracted], labels[distracted] + 1] = 6.5  # synthetic groups are id mod 4
        return logits
    logits = rng.normal(size=(len(wells), constants.NUM_CLASSES))
    lucky = rng.random(len(wells)) < 0.2 + 0.1 * seed
    logits[rows[lucky], labels[lucky]] += 10.0
    return logits


def expected_accuracy(wells, logits):
    treatment = (wells["well_type"] == "treatment").to_numpy()
    predicted = logits[treatment, : constants.NUM_SIRNAS].argmax(1)
    return float(np.mean(predicted == wells["label"].to_numpy()[treatment]))


class StandIns:
    """Records calls; 'training' writes what training.run leaves behind for the resume logic."""

    def __init__(self, wells):
        self.wells, self.trained, self.evaluated = wells, [], []

    def trainer(self, config, workdir):
        workdir = pathlib.Path(workdir)
        self.trained.append(workdir.name)
        (workdir / "config.json").write_text(config_lib.to_json(config))
        workdir_lib.mark_done(workdir, {"epochs": config.train.epochs})  # training.run's last write

    def evaluator(self, config, workdir, report_split):
        name = pathlib.Path(workdir).name
        self.evaluated.append(name)
        assert tuple(config.data.val_experiments) == VAL_EXPERIMENTS
        assert report_split == "val"  # the single ablation reports on the validation wells
        return self.wells, crafted_logits(self.wells, name)


@pytest.fixture(scope="module")
def stand_in_run(tiny_data, tmp_path_factory):
    data_dir, builder, truth = tiny_data
    workdir = tmp_path_factory.mktemp("ablation_run")
    stand_ins = StandIns(validation_wells(truth))

    def run(**kwargs):
        kwargs.setdefault("overrides", TINY_OVERRIDES)
        return ablation_steps.run_ablation(
            workdir, data_dir=data_dir, builder=builder, scale="cpu",
            trainer=stand_ins.trainer, evaluator=stand_ins.evaluator, **kwargs,
        )  # fmt: skip

    table = run()
    return workdir, stand_ins, run, table


def test_table_schema_order_and_accuracies_match_numpy(stand_in_run):
    workdir, stand_ins, _, table = stand_in_run
    written = pd.read_csv(workdir / ablation_steps.TABLE_FILE)
    assert written.columns[0] == "step" and written.columns[-1] == "accuracy"
    assert list(written["step"]) == list(ablation_steps.DEFAULT_STEPS)
    assert stand_ins.trained == [step.name for step in ablation_steps.STEPS if step.trains]

    wells = stand_ins.wells
    treatment_wells = int((wells["well_type"] == "treatment").sum())
    assert (written["wells"] == treatment_wells).all()
    accuracy = written.set_index("step")["accuracy"]
    for name in ("norm_cell_type", "norm_experiment", "norm_plate", "arcface", "mean_teacher"):
        assert accuracy[name] == pytest.approx(
            expected_accuracy(wells, crafted_logits(wells, name))
        )
    ensemble = (
        crafted_logits(wells, "mean_teacher") + crafted_logits(wells, "mean_teacher_wide")
    ) / 2
    assert accuracy["ensemble"] == pytest.approx(expected_accuracy(wells, ensemble))
    assert accuracy["ensemble"] < 0.8  # every third well goes to an off-plate class...
    assert accuracy["postprocess"] == 1.0  # ...which the plate prior rules out
    assert 0.0 <= accuracy["linear_floor"] <= 1.0

    by_cell_type = pd.read_csv(workdir / ablation_steps.CELL_TYPE_TABLE_FILE)
    plate = by_cell_type[by_cell_type["step"] == "norm_plate"].set_index("cell_type")
    assert set(plate.index) == {"HEPG2", "HUVEC"}
    assert plate["wells"].sum() == treatment_wells
    assert plate["correct"].sum() == round(accuracy["norm_plate"] * treatment_wells)
    for name in ("figure_3a.png", "figure_3b.png"):
        assert (workdir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ordering_checks_read_the_table():
    table = pd.DataFrame(
        {"step": ["linear_floor", "norm_cell_type", "norm_experiment", "norm_plate", "arcface"],
         "accuracy": [0.3, 0.4, 0.5, 0.6, 0.55]}
    )  # fmt: skip
    checks = dict(ablation_steps.ordering_checks(table))
    assert checks == {
        "3A: plate > experiment > cell-type normalization": True,
        "3B: each step at least as good as the one before": False,
        "every deep model above the linear floor": True,
    }


def test_rerun_skips_finished_steps_and_redoes_only_what_is_missing(stand_in_run, capsys):
    workdir, stand_ins, run, first = stand_in_run
    stand_ins.trained.clear()
    stand_ins.evaluated.clear()
    again = run()
    assert stand_ins.trained == [] and stand_ins.evaluated == []
    pd.testing.assert_frame_equal(again, first)

    # Trained, evaluation unmarked (its logits may be half written): evaluate only.
    (workdir / "arcface" / ablation_cache.EVALUATION_FOLDER / workdir_lib.DONE_FILE).unlink()
    run(steps=("arcface",))
    assert stand_ins.trained == [] and stand_ins.evaluated == ["arcface"]

    shutil.rmtree(workdir / "norm_experiment")
    run(steps=("postprocess", "norm_experiment"))  # the mean teachers are cached
    assert stand_ins.trained == ["norm_experiment"]

    # Another config: a finished step keeps its result (with a note), an unfinished one refuses.
    two_epochs = {**TINY_OVERRIDES, "train.epochs": "2"}
    run(steps=("norm_plate",), overrides=two_epochs)
    assert stand_ins.trained == ["norm_experiment"]
    assert "norm_plate was trained with train.epochs: 1 -> 2" in capsys.readouterr().out
    (workdir / "norm_plate" / workdir_lib.DONE_FILE).unlink()  # training not finished
    (workdir / "norm_plate" / ablation_cache.EVALUATION_FOLDER / workdir_lib.DONE_FILE).unlink()
    with pytest.raises(ValueError, match="train.epochs: 1 -> 2"):
        run(steps=("norm_plate",), overrides=two_epochs)


# ------------------------------------------------------------------------------------------------
# A real run through the command line


@pytest.mark.slow
def test_command_line_trains_a_real_step_and_resumes_without_retraining(
    tiny_data, tmp_path, monkeypatch, capsys
):
    data_dir, builder, _ = tiny_data
    argv = [
        "--workdir", str(tmp_path), "--data_dir", data_dir, "--builder", builder,
        "--steps", "linear_floor", "norm_plate",
        *[f"--config.{name}={value}" for name, value in TINY_OVERRIDES.items()],
    ]  # fmt: skip
    table = ablation.main(argv)
    assert list(table["step"]) == ["linear_floor", "norm_plate"]
    assert table["accuracy"].between(0, 1).all()
    step = tmp_path / "norm_plate"
    assert (step / "export" / "saved_model.pb").is_file() and (step / "metrics.csv").is_file()
    config = json.loads((step / "config.json").read_text())
    assert config["data"]["normalization"] == "plate" and config["model"]["head"] == "softmax"
    assert workdir_lib.read_done(step) is not None
    assert workdir_lib.read_done(step / ablation_cache.EVALUATION_FOLDER)["wells"] > 0
    assert (step / "report" / "training_curves.png").is_file()
    assert (step / "report" / "metrics_summary.csv").is_file()
    assert "norm_plate" in capsys.readouterr().out

    from deepnoise_tf import training

    def no_training(*args, **kwargs):
        raise AssertionError("a finished step was trained again")

    monkeypatch.setattr(training, "run", no_training)
    pd.testing.assert_frame_equal(ablation.main(argv), table)


def test_command_line_takes_overrides_out_before_argparse():
    arguments, overrides = ablation.parse_command_line(
        ["--workdir", "w", "--steps", "arcface", "--config.data.val_experiments=('A-01', 'B-01')",
         "--config.train.epochs=2"]
    )  # fmt: skip
    assert arguments.steps == ["arcface"]
    assert overrides == {"data.val_experiments": "('A-01', 'B-01')", "train.epochs": "2"}
    with pytest.raises(SystemExit):
        ablation.parse_command_line(["--workdir", "w", "--config.train.epochs"])
