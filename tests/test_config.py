"""Config loading, overrides and validation."""

import pathlib

import pytest

from deepnoise_tf import config as config_lib
from deepnoise_tf import train

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    "name", ["model1_softmax", "model2_arcface", "model3_mean_teacher", "quickstart", "deepnoise"]
)
@pytest.mark.parametrize("variant", ["", "cpu", "wide"])
def test_every_shipped_config_loads_and_validates(name, variant):
    spec = str(CONFIGS / f"{name}.py") + (f":{variant}" if variant else "")
    config = config_lib.validate(config_lib.load(spec))
    assert config.train.batch_size > 0
    if variant == "cpu" or name == "quickstart":
        assert config.data.image_size <= 128 and config.model.width < 1
    else:
        assert config.data.image_size == 512 and config.train.epochs == 160 and config.train.batch_size == 64


def test_paper_configs_differ_only_where_the_ablation_says():
    model1 = config_lib.load(str(CONFIGS / "model1_softmax.py"))
    model2 = config_lib.load(str(CONFIGS / "model2_arcface.py"))
    model3 = config_lib.load(str(CONFIGS / "model3_mean_teacher.py"))
    assert (model1.model.head, model2.model.head, model3.model.head) == ("softmax", "arcface", "arcface")
    assert not model1.mean_teacher.enabled and not model2.mean_teacher.enabled and model3.mean_teacher.enabled
    assert model3.train.learning_rates == (3e-4, 1e-4, 1e-5) and model3.train.lr_epoch_boundaries == (100, 140)
    assert model3.train.weight_decay == 2e-4
    assert model3.model.arcface_scale == 30.0 and model3.model.arcface_margin == 0.1


def test_command_line_overrides_are_typed():
    config, workdir = train.parse_command_line(
        [
            "--config", str(CONFIGS / "quickstart.py"), "--workdir", "somewhere",
            "--config.train.epochs=3", "--config.data.builder=rxrx1/128",
            "--config.train.learning_rates=(1e-3, 1e-4, 1e-5)", "--config.mean_teacher.labelled_share=1",
            "--config.data.val_experiments=HEPG2-01",
        ]
    )
    assert config.train.epochs == 3
    assert config.data.builder == "rxrx1/128"
    assert config.train.learning_rates == (1e-3, 1e-4, 1e-5)
    assert config.mean_teacher.labelled_share == 1.0 and isinstance(config.mean_teacher.labelled_share, float)
    assert config.data.val_experiments == ("HEPG2-01",)
    assert workdir.endswith("somewhere")


def test_unknown_field_lists_the_valid_ones():
    with pytest.raises(KeyError) as error:
        train.parse_command_line(
            ["--config", str(CONFIGS / "quickstart.py"), "--workdir", "w", "--config.train.epochz=3"]
        )
    message = str(error.value)
    assert "train.epochz" in message and "train.epochs" in message and "data.normalization" in message


@pytest.mark.parametrize(
    "field, value",
    [("data.normalization", "well"), ("model.head", "cosface"), ("train.strategy", "tpu"), ("data.cell_types", "('A549',)"),
     ("model.arcface_margin_warmup_epochs", "-1.0"), ("mean_teacher.consistency_start_epoch", "-2.0")],
)
def test_invalid_values_fail_with_the_choices(field, value):
    config = config_lib.load(str(CONFIGS / "quickstart.py"))
    with pytest.raises(ValueError, match=field.split(".")[-1]):
        config_lib.validate(config_lib.apply_overrides(config, {field: value}))


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        config_lib.load(str(tmp_path / "nope.py"))


@pytest.mark.parametrize(
    "name, field, value, attribute, expected",
    [
        # one override for every ablation step: softmax heads have no margin to warm up
        ("model1_softmax", "model.arcface_margin_warmup_epochs", "3.0", "margin_warmup_epochs", 0.0),
        ("model2_arcface", "model.arcface_margin_warmup_epochs", "3.0", "margin_warmup_epochs", 3.0),
        ("model3_mean_teacher", "mean_teacher.consistency_start_epoch", "2.5", "consistency_start_epoch", 2.5),
    ],
)
def test_schedule_fields_reach_the_built_model(name, field, value, attribute, expected):
    from deepnoise_tf import factory

    config = config_lib.load(str(CONFIGS / f"{name}.py") + ":cpu")
    config = config_lib.apply_overrides(config, {field: value, "data.image_size": "32"})
    model = factory.build_model(config_lib.validate(config), steps_per_epoch=2)
    assert getattr(model, attribute) == expected
    assert model.has_teacher == (name == "model3_mean_teacher")
