"""Config loading, variants, overrides, validation, the command line and the ablation scales."""

import pathlib

import pytest
from conftest import cli_error, parse_train_command_line

from deepnoise_tf import config as config_lib
from deepnoise_tf import scales

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"

SHIPPED = (
    [(name, variant) for name in ("model1_softmax", "model2_arcface", "model3_mean_teacher")
     for variant in ("", "cpu", "wide", "cpu,wide", "cpu_wide")]
    + [("deepnoise", variant) for variant in ("", "cpu", "own_teacher", "cpu,own_teacher")]
    + [("quickstart", "")]
)  # fmt: skip


@pytest.mark.parametrize("name, variant", SHIPPED)
def test_every_shipped_config_loads_and_validates(name, variant):
    spec = str(CONFIGS / f"{name}.py") + (f":{variant}" if variant else "")
    config = config_lib.validate(config_lib.load(spec))
    assert config.train.batch_size > 0
    if "cpu" in variant or name == "quickstart":
        assert config.data.image_size <= 128 and config.model.width < 1
    else:
        assert (
            config.data.image_size == 512
            and config.train.epochs == 160
            and config.train.batch_size == 64
        )
    assert config.model.backbone == ("xception_wide" if "wide" in variant else "xception")
    expected_source = "own_teacher" if "own_teacher" in variant else "ensemble"
    assert config.mean_teacher.pseudo_label_source == expected_source


def test_paper_configs_differ_only_where_the_ablation_says():
    from deepnoise_tf import schedules

    model1 = config_lib.load(str(CONFIGS / "model1_softmax.py"))
    model2 = config_lib.load(str(CONFIGS / "model2_arcface.py"))
    model3 = config_lib.load(str(CONFIGS / "model3_mean_teacher.py"))
    assert (model1.model.head, model2.model.head, model3.model.head) == (
        "softmax",
        "arcface",
        "arcface",
    )
    assert (
        not model1.mean_teacher.enabled
        and not model2.mean_teacher.enabled
        and model3.mean_teacher.enabled
    )
    assert model3.train.learning_rates == (
        3e-4,
        1e-4,
        1e-5,
    ) and schedules.run_schedule(model3).lr_boundaries == (100, 140)
    assert model3.train.weight_decay == 2e-4
    assert model3.model.arcface_scale == 30.0 and model3.model.arcface_margin == 0.1


# ------------------------------------------------------------------------------------------------
# Variants


def test_variant_words_are_comma_separated_and_underscore_joined_names_still_work():
    allowed = ("cpu", "own_teacher")
    assert config_lib.parse_variant("", allowed).to_dict() == {"cpu": False, "own_teacher": False}
    assert config_lib.parse_variant("own_teacher", allowed).to_dict() == {
        "cpu": False,
        "own_teacher": True,
    }
    for spelling in ("cpu,own_teacher", "own_teacher,cpu", "cpu_own_teacher", "own_teacher_cpu"):
        assert config_lib.parse_variant(spelling, allowed).to_dict() == {
            "cpu": True,
            "own_teacher": True,
        }


@pytest.mark.parametrize(
    "variant, message",
    [
        ("cpux", "unknown variant 'cpux' (did you mean 'cpu'?); valid variants: cpu, wide"),
        ("cpu_wid", "unknown variant 'wid' in 'cpu_wid' (did you mean 'wide'?)"),
        ("cpux,wide", "unknown variant 'cpux' in 'cpux,wide' (did you mean 'cpu'?)"),
        (
            "tpu_v4",
            "unknown variant 'tpu_v4'; valid variants: cpu, wide (combine them with commas, e.g. :cpu,wide)",
        ),
        ("cpu,cpu", "variant 'cpu,cpu' repeats cpu"),
        ("wide_wide", "repeats wide"),
        ("cpu,", "variant 'cpu,' has an empty word"),
    ],
)
def test_unknown_variant_words_fail_with_the_valid_ones(variant, message):
    with pytest.raises(ValueError) as error:
        config_lib.parse_variant(variant, ("cpu", "wide"))
    assert message in str(error.value)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("model1_softmax.py:gpu", "model1_softmax.py: unknown variant 'gpu'"),
        (
            "deepnoise.py:wide",
            "deepnoise.py: unknown variant 'wide'; valid variants: cpu, own_teacher",
        ),
        ("deepnoise.py:own_teachr", "(did you mean 'own_teacher'?)"),
        ("quickstart.py:cpu", "quickstart.py: this config takes no variant, got 'cpu'"),
    ],
)
def test_shipped_configs_reject_unknown_variants_at_load(spec, message):
    with pytest.raises(config_lib.VariantError) as error:
        config_lib.load(str(CONFIGS / spec))
    assert message in str(error.value)


# ------------------------------------------------------------------------------------------------
# The command line


QUICKSTART = ["--config", str(CONFIGS / "quickstart.py"), "--workdir", "somewhere"]


def test_command_line_overrides_are_typed():
    arguments, config = parse_train_command_line(
        QUICKSTART + [
            "--config.train.epochs=3", "--config.data.builder=rxrx1/128",
            "--config.train.learning_rates=(1e-3, 1e-4, 1e-5)", "--config.mean_teacher.labelled_share=1",
            "--config.data.val_experiments=HEPG2-01",
        ]
    )  # fmt: skip
    assert config.train.epochs == 3
    assert config.data.builder == "rxrx1/128"
    assert config.train.learning_rates == (1e-3, 1e-4, 1e-5)
    assert config.mean_teacher.labelled_share == 1.0 and isinstance(
        config.mean_teacher.labelled_share, float
    )
    assert config.data.val_experiments == ("HEPG2-01",)
    assert arguments.workdir == "somewhere" and arguments.config.endswith("quickstart.py")


def test_unknown_field_suggests_the_closest_instead_of_listing_all(capsys):
    line = cli_error(capsys, QUICKSTART + ["--config.train.epochz=3"])
    assert line.endswith("unknown config field 'train.epochz'; did you mean 'train.epochs'?")
    # a field named without its section: the fields of that name
    line = cli_error(capsys, QUICKSTART + ["--config.weight_decay=0.1"])
    assert "did you mean 'train.weight_decay' or 'finetune.weight_decay'?" in line
    # nothing close: the fields of the section
    line = cli_error(capsys, QUICKSTART + ["--config.finetune.zzz=1"])
    assert "the fields of 'finetune' are finetune.cycle_epochs, finetune.cycle_scale.HEPG2," in line
    line = cli_error(capsys, QUICKSTART + ["--config.train.learning_rate=0.1"])
    assert "did you mean 'train.learning_rates' or 'finetune.learning_rate'?" in line
    with pytest.raises(KeyError, match="did you mean 'model.width'"):
        config_lib.apply_overrides(config_lib.default_config(), {"model.widht": "0.5"})


def test_value_of_the_wrong_type_is_a_cli_error(capsys):
    line = cli_error(capsys, QUICKSTART + ["--config.train.epochs=many"])
    assert line.endswith(
        "config field 'train.epochs' is of type int (now 32); cannot set it to many"
    )
    line = cli_error(capsys, QUICKSTART + ["--config.mean_teacher.enabled=yes"])
    assert (
        "config field 'mean_teacher.enabled' is of type bool (now True); cannot set it to yes"
        in line
    )


def test_bad_variant_is_a_cli_error_with_a_suggestion(capsys):
    line = cli_error(
        capsys, ["--config", str(CONFIGS / "model3_mean_teacher.py") + ":cpux", "--workdir", "w"]
    )
    assert (
        "model3_mean_teacher.py: unknown variant 'cpux' (did you mean 'cpu'?); valid variants: cpu, wide"
        in line
    )


def test_missing_config_file_is_a_cli_error(capsys, tmp_path):
    missing = tmp_path / "nope.py"
    line = cli_error(capsys, ["--config", f"{missing}:cpu", "--workdir", "w"])
    assert line.endswith(f"config file '{missing}' does not exist")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        config_lib.load(str(missing))


def test_invalid_value_and_malformed_override_are_cli_errors(capsys):
    line = cli_error(capsys, QUICKSTART + ["--config.model.head=cosface"])
    assert line.endswith("config.model.head='cosface' is not one of ['arcface', 'softmax']")
    line = cli_error(capsys, QUICKSTART + ["--config.train.epochs"])
    assert "'--config.train.epochs': overrides look like --config.train.epochs=3" in line
    line = cli_error(capsys, QUICKSTART + ["--confg.train.epochs=3"])
    assert "unrecognized arguments: --confg.train.epochs=3" in line


def test_help_explains_overrides(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_train_command_line(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--config.<field>=<value>" in text and "e.g. --config.train.epochs=3" in text


@pytest.mark.parametrize(
    "field, value",
    [
        ("data.normalization", "well"),
        ("model.head", "cosface"),
        ("train.strategy", "tpu"),
        ("data.cell_types", "('A549',)"),
        ("model.arcface_margin_warmup_fraction", "-1.0"),
        ("mean_teacher.consistency_start_fraction", "-2.0"),
        ("mean_teacher.rampup_fraction", "1.5"),
        ("model.backbone", "resnet50"),
        ("model.stem", "5x5"),
    ],
)
def test_invalid_values_fail_with_the_choices(field, value):
    config = config_lib.load(str(CONFIGS / "quickstart.py"))
    with pytest.raises(ValueError, match=field.split(".")[-1]):
        config_lib.validate(config_lib.apply_overrides(config, {field: value}))


def test_backbone_and_stem_choices_come_from_the_models_module():
    config = config_lib.apply_overrides(config_lib.default_config(), {"model.backbone": "resnet50"})
    with pytest.raises(ValueError, match=r"\['xception', 'xception_wide'\]"):
        config_lib.validate(config)
    config = config_lib.apply_overrides(config_lib.default_config(), {"model.stem": "5x5"})
    with pytest.raises(ValueError, match=r"\['7x7', '3x3'\]"):
        config_lib.validate(config)


# ------------------------------------------------------------------------------------------------
# Ablation scales


def test_ablation_scales_set_their_fields_on_the_cpu_configs():
    from deepnoise_tf import schedules

    assert scales.ABLATION_SCALES == ("cpu", "cpu_family", "cpu_morphology", "paper")
    cpu = config_lib.load(str(CONFIGS / "model2_arcface.py") + ":cpu")
    scaled = scales.apply_ablation_scale(
        config_lib.load(str(CONFIGS / "model2_arcface.py") + ":cpu"), "cpu"
    )
    assert scaled.data.synthetic_preset == "ablation"
    # Idempotent. (apply_ablation_scale works in place: the reference is taken before the second call.)
    once = config_lib.to_json(scaled)
    assert config_lib.to_json(scales.apply_ablation_scale(scaled, "cpu")) == once
    morphology = scales.apply_ablation_scale(cpu, "cpu_morphology")
    assert morphology.data.synthetic_preset == "ablation_morphology"
    schedule = schedules.run_schedule(morphology)
    assert morphology.train.epochs == 64 and schedule.lr_boundaries == (48, 58)
    assert morphology.train.learning_rates == (1e-3, 3.3e-4, 3.3e-5)
    assert schedule.arcface_margin_warmup_epochs == 16.0
    assert schedule.consistency_start_epoch == 32.0
    family = scales.apply_ablation_scale(
        config_lib.load(str(CONFIGS / "model2_arcface.py") + ":cpu"), "cpu_family"
    )  # the protocols' recipe: cpu's, 16 epochs, validation every second epoch, no export
    assert family.train.epochs == 16 and family.train.eval_every_epochs == 2
    assert family.train.export is False
    assert family.train.learning_rates == (3e-3, 1e-3, 1e-4)  # `cpu`'s
    assert family.data.synthetic_preset == "ablation"
    paper = config_lib.load(str(CONFIGS / "model2_arcface.py"))
    assert config_lib.to_json(scales.apply_ablation_scale(paper, "paper")) == config_lib.to_json(
        config_lib.load(str(CONFIGS / "model2_arcface.py"))
    )


def test_unknown_ablation_scale_lists_the_valid_ones():
    with pytest.raises(ValueError) as error:
        scales.apply_ablation_scale(config_lib.default_config(), "cpu_morpholgy")
    assert str(error.value) == (
        "unknown ablation scale 'cpu_morpholgy' (did you mean 'cpu_morphology'?); "
        "valid scales: cpu, cpu_family, cpu_morphology, paper"
    )


@pytest.mark.parametrize(
    "name, field, value, attribute, expected",
    [
        # one override for every ablation step: softmax heads have no margin to warm up
        # fractions of the :cpu variant's 32 epochs: 3 / 32 = 0.09375, 2.5 / 32 = 0.078125
        (
            "model1_softmax",
            "model.arcface_margin_warmup_fraction",
            "0.09375",
            "margin_warmup_epochs",
            0.0,
        ),
        (
            "model2_arcface",
            "model.arcface_margin_warmup_fraction",
            "0.09375",
            "margin_warmup_epochs",
            3.0,
        ),
        (
            "model3_mean_teacher",
            "mean_teacher.consistency_start_fraction",
            "0.078125",
            "consistency_start_epoch",
            2.5,
        ),
    ],
)
def test_schedule_fields_reach_the_built_model(name, field, value, attribute, expected):
    from deepnoise_tf import factory

    config = config_lib.load(str(CONFIGS / f"{name}.py") + ":cpu")
    config = config_lib.apply_overrides(config, {field: value, "data.image_size": "32"})
    model = factory.build_model(config_lib.validate(config), steps_per_epoch=2)
    assert getattr(model, attribute) == expected
    assert model.has_teacher == (name == "model3_mean_teacher")
