"""`train.mixed_precision` / `train.jit_compile` "auto": the resolver on hand-made GPU lists, the
config values, and a CPU build (deepnoise_tf/precision.py)."""

import keras
import pytest

from deepnoise_tf import config as config_lib
from deepnoise_tf import precision

P40, V100, T4, A100, H100 = (6, 1), (7, 0), (7, 5), (8, 0), (9, 0)


@pytest.mark.parametrize(
    "gpus, expected",
    [
        ([], ("", False)),
        ([A100], ("mixed_bfloat16", True)),
        ([H100, H100, H100, H100], ("mixed_bfloat16", True)),
        ([V100], ("mixed_float16", True)),
        ([T4], ("mixed_float16", True)),
        ([P40], ("", True)),  # Pascal: slow float16, float32 with XLA
        ([None], ("", True)),  # capability unknown: no mixed precision
        ([H100, V100], ("mixed_float16", True)),  # the weakest decides
        ([A100, P40], ("", True)),
    ],
)
def test_auto_resolves_from_the_weakest_gpu(gpus, expected):
    resolution = precision.resolve("auto", "auto", gpus)
    assert (resolution.mixed_precision, resolution.jit_compile) == expected
    assert (expected[0] or "float32") in resolution.reason


@pytest.mark.parametrize("gpus", [[], [P40], [H100]])
def test_explicit_values_override_auto(gpus):
    assert precision.resolve("", False, gpus)[:2] == ("", False)
    assert precision.resolve("mixed_float16", True, gpus)[:2] == ("mixed_float16", True)
    # one field auto, the other set
    assert precision.resolve("mixed_bfloat16", "auto", gpus)[:2] == ("mixed_bfloat16", bool(gpus))
    assert precision.resolve("auto", False, gpus).jit_compile is False


def test_paper_scale_is_auto_and_cpu_scale_is_float32_without_xla():
    paper = config_lib.default_config()
    assert (paper.train.mixed_precision, paper.train.jit_compile) == ("auto", "auto")
    for config in (
        config_lib.cpu_scale(config_lib.default_config()),
        config_lib.load("quickstart.py"),
    ):
        assert config.train.mixed_precision == ""
        assert config.train.jit_compile is False


@pytest.mark.parametrize("text, expected", [("auto", "auto"), ("True", True), ("False", False)])
def test_jit_compile_override_takes_auto_or_a_bool(text, expected):
    for config in (config_lib.default_config(), config_lib.cpu_scale(config_lib.default_config())):
        config_lib.apply_overrides(config, {"train.jit_compile": text})
        assert config.train.jit_compile == expected
        assert type(config.train.jit_compile) is type(expected)
        config_lib.validate(config)


@pytest.mark.parametrize(
    "field, text",
    [("train.jit_compile", "yes"), ("train.jit_compile", "1"), ("train.mixed_precision", "bf16")],
)
def test_unknown_values_are_errors_naming_the_field(field, text):
    config = config_lib.apply_overrides(config_lib.default_config(), {field: text})
    with pytest.raises(ValueError, match=f"config.{field}="):
        config_lib.validate(config)


def test_a_string_field_still_takes_the_text_as_typed():
    config = config_lib.apply_overrides(config_lib.default_config(), {"data.builder": "None"})
    assert config.data.builder == "None"


def test_auto_on_cpu_builds_float32_without_xla(capsys):
    from deepnoise_tf import factory

    config = config_lib.cpu_scale(config_lib.default_config())
    config.data.image_size = 16
    config.data.synthetic_preset = ""
    config.mean_teacher.enabled = False
    config_lib.apply_overrides(
        config, {"train.mixed_precision": "auto", "train.jit_compile": "auto"}
    )
    if precision.visible_gpu_capabilities():
        pytest.skip("a GPU is visible: auto would not resolve to float32")
    policy = keras.config.dtype_policy()
    try:
        model = factory.build_model(config, steps_per_epoch=1)
    finally:
        keras.config.set_dtype_policy(policy)
    assert "float32 (auto), XLA off (auto); no GPU" in capsys.readouterr().out
    assert {variable.dtype for variable in model.student_backbone.weights} == {"float32"}
    assert model.compute_dtype == "float32"
    assert model.jit_compile is False
