"""Schedules as fractions of the schedule length (issue 17): every shipped config resolves to the
epochs it had as absolute fields, `train.epochs` moves the schedules with it, continued runs keep
theirs through `train.schedule_epochs`, and the old field names fail naming the new ones."""

import json
import pathlib

import pytest
from conftest import cli_error

from deepnoise_tf import config as config_lib
from deepnoise_tf import (
    config_renames,
    finetuning,
    pipeline_config,
    resume,
    scales,
    schedules,
)
from deepnoise_tf import workdir as workdir_lib

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"

# The absolute epochs of the fields before issue 17, written by hand (docs/fidelity.md):
# (length, lr boundaries, margin warm-up, ramp-up, consistency start, EMA boundaries).
PAPER = (160, (100, 140), 0.0, 5.0, 40.0, (1, 10, 20))
CPU = (32, (24, 29), 0.0, 2.0, 8.0, (1, 2, 4))
CPU_MORPHOLOGY = (64, (48, 58), 16.0, 2.0, 32.0, (1, 2, 4))
# The protocols' recipe (issue 17): CPU's fractions of 16 epochs, rounded to the nearest epoch,
# halves up (16 x 29/32 = 14.5 -> 15; EMA 0.5, 1, 2 -> 1, 1, 2: the second stage is empty).
CPU_FAMILY = (16, (12, 15), 0.0, 1.0, 4.0, (1, 1, 2))


def load(spec: str):
    return config_lib.validate(config_lib.load(str(CONFIGS / spec)))


def epochs_of(config) -> tuple:
    schedule = schedules.run_schedule(config)
    return (
        schedule.length,
        schedule.lr_boundaries,
        schedule.arcface_margin_warmup_epochs,
        schedule.rampup_epochs,
        schedule.consistency_start_epoch,
        schedule.ema_boundaries,
    )


@pytest.mark.parametrize(
    "spec, expected",
    [
        *[(f"{name}.py", PAPER) for name in ("model1_softmax", "model2_arcface")],
        *[(f"{name}.py:wide", PAPER) for name in ("model1_softmax", "model3_mean_teacher")],
        ("model3_mean_teacher.py", PAPER),
        ("deepnoise.py", PAPER),
        ("deepnoise.py:own_teacher", PAPER),
        *[(f"{name}.py:cpu", CPU) for name in ("model1_softmax", "model2_arcface")],
        ("model3_mean_teacher.py:cpu", CPU),
        ("model3_mean_teacher.py:cpu,wide", CPU),
        ("deepnoise.py:cpu", CPU),
        ("deepnoise.py:cpu,own_teacher", CPU),
        ("quickstart.py", CPU),
    ],
)
def test_shipped_configs_resolve_to_their_former_epochs(spec, expected):
    config = load(spec)
    assert epochs_of(config) == expected
    assert config.train.epochs == expected[0]
    # The paper-scale pipeline sets its length by hand: its round 0 trains the first 80 epochs.
    paper_pipeline = spec.startswith("deepnoise.py") and ":cpu" not in spec
    assert config.train.schedule_epochs == (160 if paper_pipeline else 0)


@pytest.mark.parametrize(
    "scale, variant, expected",
    [
        ("cpu", ":cpu", CPU),
        ("cpu_family", ":cpu", CPU_FAMILY),
        ("cpu_morphology", ":cpu", CPU_MORPHOLOGY),
        ("paper", "", PAPER),
    ],
)
@pytest.mark.parametrize("name", ["model1_softmax", "model2_arcface", "model3_mean_teacher"])
def test_ablation_scales_resolve_to_their_former_epochs(name, scale, variant, expected):
    config = config_lib.load(str(CONFIGS / f"{name}.py") + variant)
    config = config_lib.validate(scales.apply_ablation_scale(config, scale))
    assert epochs_of(config) == expected
    assert config.train.epochs == expected[0]


def test_paper_pipeline_trains_the_papers_160_epochs_across_its_rounds():
    """Round 0 the first 80 epochs, 8 rounds of 10 the rest, one schedule of 160 epochs over all
    of them: the learning rate steps at 100 and 140 fall in rounds 3 and 7 (paper, "Training
    details": 160 epochs in all; Algorithm 1: pseudo labels inside the training)."""
    config = load("deepnoise.py")
    rounds = [
        pipeline_config.member_config(config, "xception_wide", r)
        for r in range(config.pipeline.pseudo_label_rounds + 1)
    ]
    assert sum(member.train.epochs for member in rounds) == 160
    assert [member.train.epochs for member in rounds] == [80] + [10] * 8
    for member in rounds:  # every round on the paper's schedule, continued by the step counter
        assert epochs_of(member) == PAPER
        assert tuple(member.train.learning_rates) == (3e-4, 1e-4, 1e-5)
    boundaries = schedules.run_schedule(rounds[1]).lr_boundaries  # (100, 140)
    first_epochs = [80 + 10 * (r - 1) for r in range(1, 9)]
    steps = [sum(start <= b < start + 10 for b in boundaries) for start in first_epochs]
    assert steps == [0, 0, 1, 0, 0, 0, 1, 0]


@pytest.mark.parametrize("spec, expected", [("deepnoise.py:cpu", CPU)])
def test_pipeline_rounds_keep_the_first_rounds_schedule(spec, expected):
    config = load(spec)
    retrain_epochs = config.pipeline.retrain_epochs  # 6 (cpu)
    first = pipeline_config.member_config(config, "xception", 0)
    later = pipeline_config.member_config(config, "xception_wide", 2)
    assert first.train.epochs == expected[0] and epochs_of(first) == expected
    # The later round trains a few epochs at a constant rate: no boundaries; the ramp, the start
    # and the EMA steps stay at the epochs of the continued step counter.
    assert later.train.epochs == retrain_epochs < expected[0]
    assert epochs_of(later) == (expected[0], (), *expected[2:])
    # Without the constant rate the later round continues the first round's boundaries.
    with config.unlocked():
        config.pipeline.retrain_learning_rate = 0.0
        config.pipeline.train_epochs = 3 * expected[0]  # round 0 three times longer
    # The schedules follow round 0's length, in round 0 and in the rounds that continue it.
    longer = schedules.run_schedule(
        pipeline_config.member_config(config, "xception", 0)
    )  # fmt: skip
    assert longer.length == 3 * expected[0]
    assert longer.lr_boundaries == tuple(3 * epoch for epoch in expected[1])
    continued = pipeline_config.member_config(config, "xception", 1)
    assert schedules.run_schedule(continued).lr_boundaries == longer.lr_boundaries
    with config.unlocked():
        config.train.schedule_epochs = expected[0]  # a length set by hand wins
    assert epochs_of(pipeline_config.member_config(config, "xception", 0)) == expected


@pytest.mark.parametrize(
    "spec, pipeline_spec, expected, u2os_epochs",
    # cycles x cycle_epochs x r + final_epochs: 4 x 40 x 1 + 5 (paper), 4 x 6 x 1 + 2 (cpu)
    [
        ("model3_mean_teacher.py", "deepnoise.py", PAPER, 165),
        ("model3_mean_teacher.py:cpu", "deepnoise.py:cpu", CPU, 26),
    ],
)
def test_fine_tuning_keeps_the_pretraining_schedule_without_the_labelled_only_phase(
    spec, pipeline_spec, expected, u2os_epochs
):
    config = load(spec)
    cell = config_lib.validate(finetuning.cell_type_config(config, "U2OS"))
    assert cell.train.epochs == u2os_epochs
    length, lr, warmup, rampup, _, ema = expected
    assert epochs_of(cell) == (length, lr, warmup, rampup, 0.0, ema)
    # In the pipeline it fine-tunes round 0's member config, whose length is already set.
    member = pipeline_config.member_config(load(pipeline_spec), "xception", 0)
    huvec = finetuning.cell_type_config(member, "HUVEC")
    assert huvec.train.epochs < length and epochs_of(huvec) == epochs_of(cell)


def test_train_epochs_moves_the_schedules_at_cpu_scale():
    config = config_lib.load(str(CONFIGS / "quickstart.py"))
    config = config_lib.validate(config_lib.apply_overrides(config, {"train.epochs": "96"}))
    length, lr, warmup, rampup, start, ema = epochs_of(config)
    assert length == 96
    assert lr == (72, 87)  # 24/32 x 96, 29/32 x 96
    assert (warmup, rampup, start) == (0.0, 6.0, 24.0)  # 2/32 x 96, 8/32 x 96
    assert ema == (3, 6, 12)  # (1, 2, 4)/32 x 96


def test_schedule_epochs_pins_the_schedules_whatever_train_epochs():
    config = config_lib.load(str(CONFIGS / "quickstart.py"))
    overrides = {"train.epochs": "96", "train.schedule_epochs": "32"}
    config = config_lib.validate(config_lib.apply_overrides(config, overrides))
    assert epochs_of(config) == CPU
    with config.unlocked():
        config.train.schedule_epochs = 0  # 0: the schedule follows train.epochs again
    assert epochs_of(config)[:2] == (96, (72, 87))


def test_fractions_of_the_length_give_back_the_whole_epochs():
    """The rounding rule, brute force: k / L at length L is exactly epoch k, as an int boundary
    (every k <= L <= 200) and as a float ramp (every k <= L <= 60), although (k / L) x L is not k
    in binary floats for some of them (1/49 x 49 = 0.9999999999999999)."""
    assert (1 / 49) * 49 != 1
    config = config_lib.default_config()
    for length in range(1, 201):
        with config.unlocked():
            config.train.epochs = length
            config.train.lr_boundary_fractions = tuple(k / length for k in range(length + 1))
        boundaries = schedules.run_schedule(config).lr_boundaries
        assert boundaries == tuple(range(length + 1))
        assert all(type(boundary) is int for boundary in boundaries)
    for length in range(1, 61):
        for k in range(length + 1):
            with config.unlocked():
                config.train.epochs = length
                config.mean_teacher.rampup_fraction = k / length
            assert schedules.run_schedule(config).rampup_epochs == float(k)


@pytest.mark.parametrize(
    "fraction, length, boundary, ramp",
    [
        (0.125, 4, 1, 0.5),  # half an epoch: the boundary rounds up, the ramp keeps the half
        (0.375, 4, 2, 1.5),
        (0.1, 4, 0, 0.4),
        (0.15, 4, 1, 0.6),
        (1 / 3, 10, 3, 10 / 3),
    ],
)
def test_boundaries_round_to_the_nearest_epoch_and_ramps_stay_fractional(
    fraction, length, boundary, ramp
):
    config = config_lib.default_config()
    with config.unlocked():
        config.train.schedule_epochs = length
        config.train.lr_boundary_fractions = (fraction,)
        config.mean_teacher.ema_boundary_fractions = (fraction,)
        config.mean_teacher.rampup_fraction = fraction
        config.mean_teacher.consistency_start_fraction = fraction
    schedule = schedules.run_schedule(config)
    assert schedule.lr_boundaries == (boundary,) and schedule.ema_boundaries == (boundary,)
    assert schedule.rampup_epochs == pytest.approx(ramp, rel=1e-12)
    assert schedule.consistency_start_epoch == pytest.approx(ramp, rel=1e-12)


# ------------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("train.lr_boundary_fractions", "(0.9, 0.75)", "strictly increasing"),
        ("train.lr_boundary_fractions", "(0.75, 0.75)", "strictly increasing"),
        ("train.lr_boundary_fractions", "(0.75, 1.5)", r"1.5 must be a fraction in \[0, 1\]"),
        ("train.lr_boundary_fractions", "(0.75,)", "train.learning_rates needs one more value"),
        ("mean_teacher.ema_boundary_fractions", "(0.5, 0.25, 0.75)", "strictly increasing"),
        ("mean_teacher.ema_boundary_fractions", "(0.1, 0.2)", "mean_teacher.ema_decays needs"),
        ("mean_teacher.rampup_fraction", "-0.1", "rampup_fraction=-0.1 must be a fraction"),
        ("mean_teacher.consistency_start_fraction", "1.25", "consistency_start_fraction=1.25"),
        ("mean_teacher.consistency_start_fraction", "float('nan')", "must be a fraction"),
        ("model.arcface_margin_warmup_fraction", "2.0", "arcface_margin_warmup_fraction=2.0"),
        ("train.schedule_epochs", "-1", "schedule_epochs=-1 must be a whole number >= 0"),
    ],
)
def test_schedule_validation_names_the_field(field, value, message):
    config = config_lib.load(str(CONFIGS / "quickstart.py"))
    if value == "float('nan')":
        with config.unlocked():
            config.mean_teacher.consistency_start_fraction = float("nan")
    else:
        config = config_lib.apply_overrides(config, {field: value})
    with pytest.raises(ValueError, match=message):
        config_lib.validate(config)


def test_the_edges_of_the_fractions_are_valid():
    overrides = {
        "train.lr_boundary_fractions": "(0.0, 1.0)",
        "mean_teacher.consistency_start_fraction": "1.0",  # labelled only (benchmarks/train.py)
        "mean_teacher.rampup_fraction": "0.0",
    }
    config = config_lib.load(str(CONFIGS / "quickstart.py"))
    config = config_lib.validate(config_lib.apply_overrides(config, overrides))
    assert epochs_of(config)[1:5] == ((0, 32), 0.0, 0.0, 32.0)


# ------------------------------------------------------------------------------------------------
# The old names


def test_an_old_name_on_the_command_line_names_the_new_field_and_its_value(capsys):
    argv = ["--config", str(CONFIGS / "quickstart.py"), "--workdir", "w"]
    line = cli_error(capsys, [*argv, "--config.train.lr_epoch_boundaries=(24, 29)"])
    assert line == (
        "python -m deepnoise_tf.train: error: config field 'train.lr_epoch_boundaries' was "
        "replaced by 'train.lr_boundary_fractions' (issue 17): schedules are fractions of the "
        "schedule length, fraction = epochs / train.epochs (train.schedule_epochs when set); "
        "(24, 29) of 32 epochs is --config.train.lr_boundary_fractions=(0.75, 0.90625)"
    )
    line = cli_error(capsys, [*argv, "--config.mean_teacher.rampup_epochs=4"])
    assert "'mean_teacher.rampup_fraction'" in line and line.endswith("rampup_fraction=0.125")


@pytest.mark.parametrize("old, new", sorted(config_renames.RENAMED_FIELDS.items()))
def test_every_old_name_fails_naming_its_replacement(old, new):
    config = config_lib.load(str(CONFIGS / "model3_mean_teacher.py"))
    with pytest.raises(KeyError) as error:
        config_lib.apply_overrides(config, {old: "1"})
    assert f"replaced by {new!r}" in error.value.args[0]
    assert "fraction = epochs / train.epochs" in error.value.args[0]
    assert old.split(".")[0] == new.split(".")[0]
    section, field = new.split(".")
    assert field in config[section]  # the replacement exists


def test_a_config_file_setting_an_old_name_fails_naming_the_new_field(tmp_path, capsys):
    file = tmp_path / "old_style.py"
    file.write_text(
        "from deepnoise_tf.config import cpu_scale, default_config\n\n"
        "def get_config():\n"
        "    config = cpu_scale(default_config())\n"
        "    config.mean_teacher.consistency_start_epoch = 16.0\n"
        "    return config\n"
    )
    with pytest.raises(ValueError, match="'mean_teacher.consistency_start_fraction'.*=0.5$"):
        config_lib.validate(config_lib.load(str(file)))
    line = cli_error(capsys, ["--config", str(file), "--workdir", "w"])
    assert "replaced by 'mean_teacher.consistency_start_fraction'" in line


def old_run_folder(folder: pathlib.Path, config, name: str = workdir_lib.CONFIG_FILE) -> dict:
    """Writes `config` as a config.json from before issue 17: the absolute-epoch field names."""
    stored = workdir_lib.config_dict(config)
    stored["train"]["lr_epoch_boundaries"] = [24, 29]
    del stored["train"]["lr_boundary_fractions"]
    stored["mean_teacher"]["rampup_epochs"] = 2.0
    del stored["mean_teacher"]["rampup_fraction"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(stored))
    return stored


def test_an_old_run_folder_is_refused_naming_the_field(tmp_path):
    config = load("quickstart.py")
    old_run_folder(tmp_path / "run", config)
    with pytest.raises(resume.RunFolderError) as error:
        resume.refuse_config_drift(tmp_path / "run", config)
    message = str(error.value)
    assert "'train.lr_epoch_boundaries' was replaced by 'train.lr_boundary_fractions'" in message
    assert (
        "[24, 29] of 32 epochs is --config.train.lr_boundary_fractions=(0.75, 0.90625)" in message
    )
    assert "cannot be resumed" in message and "\n" not in message
    # Reading it for inference: a ValueError naming the field, not a KeyError.
    with pytest.raises(ValueError, match="replaced by 'train.lr_boundary_fractions'"):
        schedules.run_schedule(workdir_lib.read_config(tmp_path / "run"))
    # A current run folder passes.
    workdir_lib.write_config(tmp_path / "new", config)
    resume.refuse_config_drift(tmp_path / "new", config)


def test_an_old_pipeline_workdir_is_refused_naming_the_field(tmp_path):
    config = load("deepnoise.py:cpu")
    old_run_folder(tmp_path, config, pipeline_config.CONFIG_FILE)
    with pytest.raises(ValueError, match="before a rename .*'train.lr_boundary_fractions'"):
        pipeline_config.check_run_config(config, tmp_path)
