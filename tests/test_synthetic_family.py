"""The seeded family of synthetic designs: each effect against numpy, determinism, and the old presets.

Each technical effect and phenotype kind is checked for what its docstring says (smooth field with
the stated range, blur removes high frequencies, gamma is monotone, texture adds local contrast but
keeps the mean, localisation moves signal between channels, specificity decorrelates cell types);
the hand-tuned presets still render the bytes of the code before the family (git history).
"""

from __future__ import annotations

import pathlib
import subprocess
import types

import numpy as np
import pandas as pd
import pytest

from deepnoise_tf import (
    synthetic,
    synthetic_design,
    synthetic_effects,
    synthetic_family,
    synthetic_images,
)

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
BEFORE_FAMILY = "596f39f"  # main before the family: the presets' reference pixels
PRESETS = ("tiny", "quickstart", "ablation", "ablation_morphology", "benchmark")


def _module_at(commit: str, name: str) -> types.ModuleType:
    try:
        text = subprocess.run(
            ["git", "show", f"{commit}:deepnoise_tf/{name}.py"],
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"git history with {commit} is not available")
    module = types.ModuleType(f"{name}_at_{commit}")
    exec(compile(text, f"{name}@{commit}", "exec"), module.__dict__)
    return module


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_render_the_bytes_of_the_code_before_the_family(preset):
    old_design = _module_at(BEFORE_FAMILY, "synthetic_design")
    old_images = _module_at(BEFORE_FAMILY, "synthetic_images")
    parameters = synthetic_design.resolve_parameters(preset)
    old_parameters = old_design.resolve_parameters(preset)
    sites = synthetic_design.design(parameters, seed=3)
    assert sites.equals(old_design.design(old_parameters, seed=3))
    # A few sites of two plates (of two cell types where the preset has them).
    first = sites[sites["plate"] == 2].head(3)
    last = sites[sites["experiment"] == sites["experiment"].iat[-1]].tail(2)
    for subset in (pd.concat([first, last]),):
        new = [images for _, images in synthetic_images.generate_images(parameters, subset, 3)]
        old = [images for _, images in old_images.generate_images(old_parameters, subset, 3)]
        np.testing.assert_array_equal(np.concatenate(new), np.concatenate(old))


# ------------------------------------------------------------------------------------------------
# Technical effects


def test_illumination_field_is_smooth_with_the_stated_range():
    for seed in range(5):
        field = synthetic_effects.illumination_field(32, 0.3, np.random.default_rng(seed))
        assert field.min() == pytest.approx(0.7) and field.max() == pytest.approx(1.0)
        # Smooth: neighbouring pixels differ by a small share of the range (a quadratic over the
        # image changes at most 4 x range per image side), and the curvature is smaller still.
        assert np.abs(np.diff(field, axis=0)).max() <= 4 * 0.3 / 32 + 1e-12
        assert np.abs(np.diff(field, axis=1)).max() <= 4 * 0.3 / 32 + 1e-12
        assert (
            np.abs(np.diff(field, n=2, axis=1)).max()
            < 0.1 * np.abs(np.diff(field, axis=1)).max() + 1e-3
        )
    np.testing.assert_array_equal(
        synthetic_effects.illumination_field(8, 0.0, np.random.default_rng(0)), np.ones((8, 8))
    )


def _high_frequency_energy(images: np.ndarray) -> float:
    spectrum = np.abs(np.fft.fft2(images)) ** 2
    frequencies = np.abs(np.fft.fftfreq(images.shape[-1]))
    high = (frequencies[:, None] > 0.25) | (frequencies[None, :] > 0.25)
    return float(spectrum[..., high].sum())


def test_blur_lowers_high_frequency_energy_and_keeps_constants():
    images = np.random.default_rng(0).standard_normal((3, 2, 24, 24))
    blurred = synthetic_effects.blur(images, [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(blurred[0], images[0])
    energies = [_high_frequency_energy(blurred[i]) for i in range(3)]
    assert energies[2] < energies[1] < 0.5 * energies[0]
    constant = np.full((1, 1, 16, 16), 7.0)
    np.testing.assert_allclose(synthetic_effects.blur(constant, 1.5), constant)


def test_gamma_is_monotone_nonlinear_and_fixes_the_ends():
    values = np.linspace(-10.0, 300.0, 1000)
    for gamma in (0.7, 1.0, 1.4):
        curve = synthetic_effects.gamma_curve(values, gamma)
        assert np.all(np.diff(curve) >= 0)
        assert curve[0] == 0.0 and curve[-1] == pytest.approx(255.0)
    assert (
        synthetic_effects.gamma_curve(127.5, 1.4)
        < 127.5
        < synthetic_effects.gamma_curve(127.5, 0.7)
    )


def test_plate_effects_edge_wells_and_density():
    assert synthetic_effects.edge_distance("B02") == 0
    assert synthetic_effects.edge_distance("O23") == 0
    assert synthetic_effects.edge_distance("C03") == 1
    assert synthetic_effects.edge_distance("H12") == 6
    parameters = synthetic_design.resolve_parameters("tiny", edge_effect=0.4, image_size=16)
    wells = np.array(["B02", "B02", "C03", "H12"])
    effects = synthetic_effects.plate_effects(parameters, 0, wells, 0, 1, 1)
    np.testing.assert_allclose(effects.brightness, [0.6, 0.6, 0.8, 1 - 0.4 / 64])
    np.testing.assert_allclose(effects.density, effects.brightness)  # well_density is 0
    assert (
        synthetic_effects.plate_effects(
            synthetic_design.resolve_parameters("tiny"), 0, wells, 0, 1, 1
        )
        is None
    )


# ------------------------------------------------------------------------------------------------
# Phenotype kinds


def test_texture_adds_local_contrast_and_keeps_the_mean():
    rng = np.random.default_rng(0)
    cells = np.zeros((40, 1, 32, 32), np.float32)
    cells[:, :, 8:24, 8:24] = 1.0  # a flat cell
    field = synthetic_images.texture_field(np.full((40, 1), 0.5), 32, 1.0, rng)
    textured = cells * field
    assert textured.mean() == pytest.approx(cells.mean(), rel=0.05)

    def local_contrast(images):  # GLCM-like: mean squared difference of horizontal neighbours
        return float(np.mean(np.diff(images, axis=-1) ** 2))

    assert local_contrast(textured[..., 9:23, 9:23]) > 0.01 > local_contrast(cells[..., 9:23, 9:23])
    assert np.all(textured[cells == 0] == 0)  # spots only inside cells
    none = synthetic_images.texture_field(np.zeros((2, 1)), 16, 1.0, rng)
    np.testing.assert_allclose(none, 1.0)


def test_localisation_moves_signal_between_channels():
    signal = np.random.default_rng(0).uniform(0, 1, (2, 6, 8, 8)).astype(np.float32)
    fraction = np.array([0.25, 0.0])
    channels = np.array([[0, 3], [1, 2]])
    moved = synthetic_images.localise(signal, fraction, channels)
    np.testing.assert_allclose(moved[0, 0], 0.75 * signal[0, 0], rtol=1e-6)
    np.testing.assert_allclose(moved[0, 3], signal[0, 3] + 0.25 * signal[0, 0], rtol=1e-6)
    np.testing.assert_allclose(moved[0, [1, 2, 4, 5]], signal[0, [1, 2, 4, 5]])
    np.testing.assert_allclose(moved.sum(axis=1), signal.sum(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(moved[1], signal[1])


def _log_effects(phenotypes):
    return np.concatenate(
        [
            np.log(phenotypes.intensity).ravel(),
            np.log(phenotypes.size).ravel(),
            phenotypes.texture.ravel(),
        ]
    )


@pytest.mark.parametrize("specificity", [0.0, 0.5, 1.0])
def test_cell_type_specificity_sets_the_correlation_between_cell_types(specificity):
    parameters = synthetic_design.resolve_parameters(
        "tiny", texture_effect=0.3, localisation_effect=0.1, cell_type_specificity=specificity
    )
    first = synthetic_images._phenotypes(parameters, 5, cell_index=0)
    second = synthetic_images._phenotypes(parameters, 5, cell_index=2)
    if specificity == 0.0:
        for name in ("intensity", "size", "elongation", "count", "texture", "localisation"):
            np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    # Log-intensity and log-size are linear in the draws: their correlation is 1 - s.
    for name in ("intensity", "size"):
        correlation = np.corrcoef(
            np.log(getattr(first, name)).ravel(), np.log(getattr(second, name)).ravel()
        )[0, 1]
        assert correlation == pytest.approx(1.0 - specificity, abs=0.05)


def test_dirichlet_mix_gives_each_sirna_few_kinds():
    def share_without_intensity(concentration):
        parameters = synthetic_design.resolve_parameters(
            "tiny", texture_effect=0.3, phenotype_mix_concentration=concentration
        )
        intensity = np.log(synthetic_images._phenotypes(parameters, 1).intensity)
        return np.mean(np.abs(intensity).max(axis=1) < 0.1 * parameters["intensity_effect"])

    assert share_without_intensity(0.0) < 0.01
    assert share_without_intensity(0.05) > 0.5  # most siRNAs lean on one kind, not intensity
    # The mix keeps the phenotype's total variance on average: E[K w_k] = 1.
    parameters = synthetic_design.resolve_parameters("tiny", phenotype_mix_concentration=1.0)
    intensity = np.log(synthetic_images._phenotypes(parameters, 1).intensity)
    assert np.std(intensity) == pytest.approx(parameters["intensity_effect"], rel=0.1)


@pytest.mark.parametrize(
    "effect",
    ["illumination_strength", "focus_blur", "plate_background", "gamma_spread", "well_density",
     "edge_effect", "texture_effect", "localisation_effect"],
)  # fmt: skip
def test_each_effect_changes_the_pixels_and_is_off_by_default(effect):
    value = {"illumination_strength": 0.5, "focus_blur": 0.05, "plate_background": 20.0}.get(
        effect, 0.5
    )
    base = synthetic_design.resolve_parameters("tiny")
    assert base[effect] == 0.0
    sites = synthetic_design.design(base, 0).head(4)

    def render(parameters):
        return np.concatenate(
            [images for _, images in synthetic_images.generate_images(parameters, sites, 0)]
        )

    changed = render(synthetic_design.resolve_parameters("tiny", **{effect: value}))
    assert not np.array_equal(changed, render(base))


# ------------------------------------------------------------------------------------------------
# The family


def test_family_names_seeds_and_roles():
    assert synthetic_family.NAMES == synthetic_family.DEVELOPMENT + synthetic_family.HELD_OUT
    assert len(set(synthetic_family.NAMES)) == 7
    assert [synthetic_family.seed_of(n) for n in synthetic_family.DEVELOPMENT] == [
        1001,
        1002,
        1003,
        1004,
    ]
    assert [synthetic_family.seed_of(n) for n in synthetic_family.HELD_OUT] == [9001, 9002, 9003]
    assert not set(map(synthetic_family.seed_of, synthetic_family.DEVELOPMENT)) & set(
        map(synthetic_family.seed_of, synthetic_family.HELD_OUT)
    )
    assert set(synthetic_family.NAMES) <= set(synthetic_design.preset_names())
    with pytest.raises(ValueError, match="not a family design"):
        synthetic_family.seed_of("family_dev_9")
    lines = [synthetic_family.describe(name) for name in synthetic_family.NAMES]
    assert all(
        "\n" not in line and name in line
        for line, name in zip(lines, synthetic_family.NAMES, strict=True)
    )


def test_family_parameters_are_complete_deterministic_distinct_and_in_range():
    drawn = {name: synthetic_family.parameters_for(name) for name in synthetic_family.NAMES}
    for name, parameters in drawn.items():
        assert set(parameters) == set(synthetic_design.DEFAULT_PARAMETERS)
        assert parameters == synthetic_family.parameters_for(name)
        assert parameters == synthetic_design.resolve_parameters(name)
        for key, (low, high) in synthetic_family.RANGES.items():
            assert low <= parameters[key] <= high
    keys = list(synthetic_family.RANGES)
    assert len({tuple(p[k] for k in keys) for p in drawn.values()}) == len(drawn)


def test_family_design_has_the_configs_validation_experiments():
    parameters = synthetic_design.resolve_parameters("family_heldout_1")
    sites = synthetic_design.design(parameters, synthetic_design.preset_seed("family_heldout_1"))
    train = set(sites.loc[sites["dataset"] == "train", "experiment"])
    for cell_type in parameters["cell_types"]:
        assert f"{cell_type}-03" in train
    assert sites["sirna"][sites["well_type"] == "treatment"].nunique() == 32
    assert sites["well"].str[0].nunique() > 3  # spread over the plate, not one row


def test_family_pixels_are_a_function_of_the_name(tmp_path):
    small = {"cell_types": ("RPE",), "train_experiments": 1, "test_experiments": 0,
             "sirnas_per_group": 1, "positive_controls": 0, "image_size": 16, "sites": 1}  # fmt: skip
    first = synthetic.write_dataset(tmp_path / "a", preset="family_dev_2", **small)
    synthetic.write_dataset(tmp_path / "b", preset="family_dev_2", **small)
    synthetic.write_dataset(tmp_path / "c", preset="family_dev_2", seed=0, **small)
    names = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(names) == len(first) * 6
    same = [(tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in names]
    other = [(tmp_path / "a" / n).read_bytes() == (tmp_path / "c" / n).read_bytes() for n in names]
    assert all(same) and not all(other)  # the default data seed is the family seed, not 0
    parameters = synthetic_design.resolve_parameters("family_dev_2", **small)
    expected = np.concatenate(
        [images for _, images in synthetic_images.generate_images(parameters, first, 1002)]
    )
    from PIL import Image

    row = first.iloc[0]
    path = (
        tmp_path
        / "a"
        / synthetic.image_relative_path(
            "release", row["dataset"], row["experiment"], row["plate"], row["well"], row["site"], 1
        )
    )
    np.testing.assert_array_equal(np.asarray(Image.open(path)), expected[0, 0])


def test_validate_rejects_an_unknown_synthetic_preset():
    from deepnoise_tf import config as config_lib

    config = config_lib.default_config()
    config.data.synthetic_preset = "family_dev_2"
    config_lib.validate(config)
    config.data.synthetic_preset = "family_dev2"
    with pytest.raises(ValueError, match="did you mean 'family_dev_2'"):
        config_lib.validate(config)
