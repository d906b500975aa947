"""The synthetic RxRx1 design: generator parameters and presets, and the per-site ground truth.

The real plate hierarchy (experiments of 4 plates, 308 usable wells, one siRNA group per plate rotating
over the plates, a negative control and positive controls on every plate) at a size the parameters
choose. `synthetic_images` renders the pixels, `synthetic` writes the files.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from deepnoise_tf import constants, synthetic_effects

# Canonical positive-control slots of a real RxRx1 plate: rows C, F, H, J, M x columns 03, 07, 11, 15, 19, 22.
CANONICAL_POSITIVE_CONTROL_WELLS = tuple(
    f"{row}{column:02d}" for row in "CFHJM" for column in (3, 7, 11, 15, 19, 22)
)
NEGATIVE_CONTROL_WELL = "B02"
MAX_POSITIVE_CONTROLS = constants.NEGATIVE_CONTROL - constants.FIRST_CONTROL  # 30

# Every parameter the generator understands, with its default. Presets override a few; unknown names fail.
DEFAULT_PARAMETERS = {
    # Design.
    "cell_types": constants.CELL_TYPES,
    "train_experiments": 1,  # per cell type
    "test_experiments": 1,  # per cell type
    "sirnas_per_group": 4,  # 277 on the real plates
    "positive_controls": 4,  # 30 on the real plates
    "sites": constants.SITES_PER_WELL,
    "image_size": 32,
    # False: a plate's wells are the first ones in grid order (row B); True: spread over the plate.
    "spread_wells": False,
    # Cells (sizes are fractions of the image side so every resolution looks alike).
    "cells_per_site": 24.0,
    "cell_sigma": 0.035,
    # Phenotype of each siRNA (log-scale standard deviations).
    "intensity_effect": 0.10,
    "size_effect": 0.22,
    "elongation_effect": 0.35,
    "count_effect": 0.25,
    # Kinds that are off unless set (synthetic_images): granules inside the cells and signal moved
    # from one channel to another; cell-type specificity in [0, 1] of every kind's effect; Dirichlet
    # concentration of each siRNA's mix of kinds (0: every siRNA shows every kind).
    "texture_effect": 0.0,
    "localisation_effect": 0.0,
    "cell_type_specificity": 0.0,
    "phenotype_mix_concentration": 0.0,
    # Biological variation of single cells.
    "cell_brightness_noise": 0.25,
    "cell_size_noise": 0.12,
    # Technical noise: channel gains are log-normal, offsets in grey levels.
    "cell_type_gain": 0.25,
    "cell_type_offset": 8.0,
    "experiment_gain": 0.30,
    "experiment_offset": 5.0,
    "plate_gain": 0.10,
    "plate_offset": 1.5,
    "well_gain": 0.03,
    "pixel_noise": 1.5,
    "background": 20.0,
    "signal_scale": 40.0,
    # Technical noise that plate normalization does not invert (synthetic_effects); 0 = off.
    "illumination_strength": 0.0,
    "focus_blur": 0.0,
    "plate_background": 0.0,
    "gamma_spread": 0.0,
    "well_density": 0.0,
    "edge_effect": 0.0,
    # PNG zlib level: 1 writes fast; files are a bit larger.
    "png_compress_level": 1,
}

# The ablations' plates, splits and image size: 64 siRNAs, 12 training and 4 validation experiments.
_ABLATION_DESIGN = {
    "cell_types": constants.CELL_TYPES,
    "train_experiments": 4,
    "test_experiments": 2,
    "sirnas_per_group": 16,
    "positive_controls": 8,
    "image_size": 64,
}

PRESETS = {
    # Unit tests: two cell types, one train and one test experiment each, 16-pixel images.
    "tiny": {
        "cell_types": ("HEPG2", "HUVEC"),
        "train_experiments": 1,
        "test_experiments": 1,
        "sirnas_per_group": 4,
        "positive_controls": 2,
        "image_size": 16,
        "cells_per_site": 8.0,
        "cell_sigma": 0.06,
    },
    # The embedded default: all four cell types, a few experiments, 64-pixel images (seconds to write).
    "quickstart": {
        "cell_types": constants.CELL_TYPES,
        "train_experiments": 3,
        "test_experiments": 1,
        "sirnas_per_group": 8,
        "positive_controls": 4,
        "image_size": 64,
    },
    # Ablations of the normalization and the training tricks: more classes and experiments.
    "ablation": dict(_ABLATION_DESIGN),
    # The `ablation` design with a phenotype that is mostly cell shape, as on RxRx1. Elongation keeps a
    # channel's mean and std (tests/test_synthetic.py), so a linear model on those moments sees only
    # the weak intensity change (3 %, against 6 % well-to-well gain noise); plate effects are larger
    # than the defaults so that normalization still matters to a CNN reading shapes
    # (docs/ablation.md, "A phenotype of shape": design runs A-K).
    "ablation_morphology": {
        **_ABLATION_DESIGN,
        "cells_per_site": 16.0,
        "cell_sigma": 0.05,
        "intensity_effect": 0.03,
        "size_effect": 0.0,
        "elongation_effect": 1.5,
        "count_effect": 0.0,
        "experiment_gain": 0.25,
        "plate_gain": 0.35,
        "plate_offset": 6.0,
        "well_gain": 0.06,
        "signal_scale": 25.0,
    },
    # One experiment of 512-pixel images with real-size cells (build benchmarks).
    "benchmark": {
        "cell_types": ("HUVEC",),
        "train_experiments": 1,
        "test_experiments": 0,
        "sirnas_per_group": 16,
        "positive_controls": 4,
        "image_size": constants.IMAGE_SIZE,
    },
}


def well_names() -> tuple[str, ...]:
    """The 308 usable wells of a RxRx1 plate in grid order: B02, B03, ..., B23, C02, ..., O23."""
    return tuple(
        f"{row}{column:02d}" for row in constants.WELL_ROWS for column in constants.WELL_COLUMNS
    )


# Parameters added after the hand-tuned presets; recorded with a data set only when not at their default.
EFFECT_PARAMETERS = (
    "spread_wells",
    "texture_effect",
    "localisation_effect",
    "cell_type_specificity",
    "phenotype_mix_concentration",
    *synthetic_effects.TECHNICAL_PARAMETERS,
)


def preset_names() -> tuple[str, ...]:
    """Every name `resolve_parameters` accepts: the hand-tuned PRESETS, then the seeded family."""
    from deepnoise_tf import synthetic_family  # imports this module

    return (*sorted(PRESETS), *synthetic_family.NAMES)


def preset_seed(preset: str | None) -> int:
    """The data seed a preset is rendered with by default: the family seed of a family name, else 0."""
    from deepnoise_tf import synthetic_family

    return synthetic_family.seed_of(preset) if preset in synthetic_family.NAMES else 0


def resolve_parameters(preset: str | None = None, **overrides) -> dict:
    """Defaults, then the preset, then the overrides; unknown names and impossible designs fail loudly.

    `preset` is a name of PRESETS or of the seeded family (`synthetic_family.NAMES`).
    """
    from deepnoise_tf import synthetic_family

    parameters = dict(DEFAULT_PARAMETERS)
    if preset in synthetic_family.NAMES:
        parameters.update(synthetic_family.parameters_for(preset))
    elif preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {list(preset_names())}")
        parameters.update(PRESETS[preset])
    unknown = sorted(set(overrides) - set(DEFAULT_PARAMETERS))
    if unknown:
        raise ValueError(f"unknown parameters {unknown}; known: {sorted(DEFAULT_PARAMETERS)}")
    parameters.update(overrides)
    parameters["cell_types"] = tuple(parameters["cell_types"])
    bad_cell_types = [name for name in parameters["cell_types"] if name not in constants.CELL_TYPES]
    if bad_cell_types or not parameters["cell_types"]:
        raise ValueError(f"cell_types must be a non-empty subset of {constants.CELL_TYPES}")
    per_group = parameters["sirnas_per_group"]
    if not 1 <= per_group <= constants.SIRNAS_PER_PLATE:
        raise ValueError(
            f"sirnas_per_group must be in 1..{constants.SIRNAS_PER_PLATE}, got {per_group}"
        )
    if not 0 <= parameters["positive_controls"] <= MAX_POSITIVE_CONTROLS:
        raise ValueError(f"positive_controls must be in 0..{MAX_POSITIVE_CONTROLS}")
    if parameters["sites"] < 1 or parameters["image_size"] < 8:
        raise ValueError("need at least one site and images of at least 8 pixels")
    if parameters["train_experiments"] + parameters["test_experiments"] < 1:
        raise ValueError("need at least one experiment per cell type")
    if not 0.0 <= parameters["cell_type_specificity"] <= 1.0:
        raise ValueError("cell_type_specificity must be in [0, 1]")
    negative = [name for name in EFFECT_PARAMETERS[1:] if parameters[name] < 0]
    if negative or parameters["illumination_strength"] >= 1.0:
        raise ValueError(
            f"{negative or 'illumination_strength'}: effects are >= 0 (illumination < 1)"
        )
    return parameters


def sirna_group(sirna: np.ndarray | int) -> np.ndarray | int:
    """The siRNA group of a synthetic treatment id (the real groups are a table; ours are id mod 4)."""
    return np.mod(sirna, constants.NUM_PLATE_GROUPS)


def sirna_name(sirna: int) -> str:
    """A plausible, stable siRNA name for the release metadata: `EMPTY` for the negative control."""
    if sirna == constants.NEGATIVE_CONTROL:
        return "EMPTY"
    return f"s{10007 + 7919 * sirna % 989993:06d}"


def _spread_wells(positive_wells: list[str], treatments: int) -> list[str]:
    """B02, the positive-control slots and `treatments` wells evenly spaced over the rest of the plate.

    Spread wells sample the plate's edge and centre alike, so well-position effects
    (`synthetic_effects.edge_distance`) reach some treatments and not others, as on a full plate.
    """
    taken = {NEGATIVE_CONTROL_WELL, *positive_wells}
    rest = [well for well in well_names() if well not in taken]
    chosen = {rest[int(i)] for i in np.linspace(0, len(rest) - 1, treatments).round()}
    return [well for well in well_names() if well in taken or well in chosen]


def plate_layout(parameters: dict, rng: np.random.Generator, group: int) -> pd.DataFrame:
    """One plate's wells: the negative control at B02, positive controls, the group's siRNAs shuffled."""
    per_group = parameters["sirnas_per_group"]
    positive = parameters["positive_controls"]
    wells = list(well_names()[: 1 + positive + per_group])
    canonical = list(CANONICAL_POSITIVE_CONTROL_WELLS[:positive])
    if parameters.get("spread_wells", False):
        wells = _spread_wells(canonical, per_group)
    free = [well for well in wells if well != NEGATIVE_CONTROL_WELL]
    # The real slots when the plate reaches them, else the first free wells.
    positive_wells = canonical if set(canonical) <= set(free) else free[:positive]
    treatment_wells = [well for well in free if well not in positive_wells]
    treatments = np.arange(constants.NUM_PLATE_GROUPS * per_group)
    treatments = treatments[sirna_group(treatments) == group]
    rows = [(NEGATIVE_CONTROL_WELL, constants.NEGATIVE_CONTROL, "negative_control")]
    positive_ids = constants.FIRST_CONTROL + rng.permutation(positive)
    rows += [
        (w, int(s), "positive_control") for w, s in zip(positive_wells, positive_ids, strict=True)
    ]
    rows += [
        (w, int(s), "treatment")
        for w, s in zip(treatment_wells, rng.permutation(treatments), strict=True)
    ]
    layout = pd.DataFrame(rows, columns=["well", "sirna", "well_type"])
    order = {well: index for index, well in enumerate(wells)}
    return layout.sort_values("well", key=lambda column: column.map(order)).reset_index(drop=True)


def design(parameters: dict, seed: int = 0, plate_group_order=None) -> pd.DataFrame:
    """The per-site ground truth of the whole data set (both splits, real labels).

    `plate_group_order`: the cyclic order in which the siRNA groups follow each other over an
    experiment's plates, a permutation of 0..3; default (0, 1, 2, 3), the RxRx1 rule "plate p holds
    group (g1 + p - 1) mod 4". Another order makes a data set on which that rule is wrong and the
    plate design must be learned (`deepnoise_tf.plate_design`). Not a preset parameter: the presets'
    files stay as they are.
    """
    order = np.arange(constants.NUM_PLATE_GROUPS)
    if plate_group_order is not None:
        order = np.asarray(plate_group_order, dtype=np.int64)
        if sorted(order.tolist()) != list(range(constants.NUM_PLATE_GROUPS)):
            raise ValueError(
                f"plate_group_order must be a permutation of 0..{constants.NUM_PLATE_GROUPS - 1}, "
                f"got {plate_group_order}"
            )
    frames = []
    for cell_index, cell_type in enumerate(parameters["cell_types"]):
        count = parameters["train_experiments"] + parameters["test_experiments"]
        for number in range(1, count + 1):
            experiment = f"{cell_type}-{number:02d}"
            rng = np.random.default_rng([seed, 1, cell_index, number])
            first_group = int(rng.integers(constants.NUM_PLATE_GROUPS))
            for plate in range(1, constants.PLATES_PER_EXPERIMENT + 1):
                group = int(order[(first_group + plate - 1) % constants.NUM_PLATE_GROUPS])
                layout = plate_layout(parameters, rng, group)
                layout["experiment"] = experiment
                layout["cell_type"] = cell_type
                layout["plate"] = plate
                layout["plate_group"] = group
                layout["dataset"] = "train" if number <= parameters["train_experiments"] else "test"
                frames.append(layout)
    wells = pd.concat(frames, ignore_index=True)
    wells["id_code"] = wells["experiment"] + "_" + wells["plate"].astype(str) + "_" + wells["well"]
    sites = wells.loc[wells.index.repeat(parameters["sites"])].reset_index(drop=True)
    sites["site"] = np.tile(np.arange(1, parameters["sites"] + 1), len(wells))
    sites["site_id"] = sites["id_code"] + "_" + sites["site"].astype(str)
    sites["sirna_name"] = [sirna_name(s) for s in sites["sirna"]]
    columns = [
        "site_id",
        "id_code",
        "cell_type",
        "dataset",
        "experiment",
        "plate",
        "well",
        "site",
        "well_type",
        "sirna",
        "sirna_name",
        "plate_group",
    ]
    return sites[columns]
