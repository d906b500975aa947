"""A seeded family of synthetic RxRx1 designs: development designs for choices, held-out ones for reports.

The hand-tuned presets were shaped on the same validation wells the ablation reports (issue 17). Here a
design's generator parameters are drawn from its seed within fixed ranges (effect sizes, noise levels,
the mix of phenotype kinds), so a recipe can be chosen on DEVELOPMENT designs and reported on HELD_OUT
designs that never informed a choice. Every family name works where a preset name does
(`synthetic_design.resolve_parameters`, `synthetic.prepare_tfds`, `config.data.synthetic_preset`), and
renders with its own seed as the data seed. docs/synthetic_family.md gives the ranges and the protocol.
"""

from __future__ import annotations

import numpy as np

from deepnoise_tf import constants, synthetic_design

DEVELOPMENT = tuple(f"family_dev_{index}" for index in range(1, 5))
HELD_OUT = tuple(f"family_heldout_{index}" for index in range(1, 4))
NAMES = DEVELOPMENT + HELD_OUT
_SEEDS = {
    **{name: 1000 + index for index, name in enumerate(DEVELOPMENT, start=1)},
    **{name: 9000 + index for index, name in enumerate(HELD_OUT, start=1)},
}

# Fixed across the family: one CPU ablation step trains in minutes. 3 training experiments per cell
# type, of which the configs' `{cell type}-03` is the validation one; 32 siRNAs on 4 plate groups.
DESIGN = {
    "cell_types": constants.CELL_TYPES,
    "train_experiments": 3,
    "test_experiments": 1,
    "sirnas_per_group": 8,
    "positive_controls": 4,
    "image_size": 64,
    "spread_wells": True,
}

# Drawn per design, uniform in [low, high] (in this order, from numpy's Generator on the seed).
RANGES = {
    # Cells.
    "cells_per_site": (14.0, 28.0),
    "cell_sigma": (0.035, 0.05),
    # Phenotype: effect sizes of each kind, their mix per siRNA, and how cell-type specific they are.
    "intensity_effect": (0.015, 0.045),
    "size_effect": (0.04, 0.13),
    "elongation_effect": (0.3, 1.0),
    "count_effect": (0.05, 0.15),
    "texture_effect": (0.15, 0.45),
    "localisation_effect": (0.03, 0.12),
    "phenotype_mix_concentration": (0.5, 2.0),
    "cell_type_specificity": (0.1, 0.5),
    # Technical noise: affine channel gains and offsets ...
    "cell_type_gain": (0.15, 0.35),
    "experiment_gain": (0.15, 0.35),
    "plate_gain": (0.05, 0.3),
    "plate_offset": (1.0, 6.0),
    "well_gain": (0.03, 0.08),
    # ... and what plate normalization does not invert (synthetic_effects).
    "illumination_strength": (0.1, 0.4),
    "focus_blur": (0.0, 0.02),
    "plate_background": (0.0, 10.0),
    "gamma_spread": (0.05, 0.2),
    "well_density": (0.05, 0.25),
    "edge_effect": (0.05, 0.3),
}


def seed_of(name: str) -> int:
    """The seed of a family design: 1001.. for DEVELOPMENT, 9001.. for HELD_OUT."""
    if name not in _SEEDS:
        raise ValueError(f"{name!r} is not a family design; choose one of {list(NAMES)}")
    return _SEEDS[name]


def parameters_for(name: str) -> dict:
    """Every `synthetic_design` parameter of the design `name`: defaults, DESIGN, then RANGES drawn."""
    rng = np.random.default_rng(seed_of(name))
    drawn = {key: float(rng.uniform(low, high)) for key, (low, high) in RANGES.items()}
    return {**synthetic_design.DEFAULT_PARAMETERS, **DESIGN, **drawn}


def describe(name: str) -> str:
    """One line: the name, its role and seed, and the drawn parameters that matter most."""
    parameters = parameters_for(name)
    role = "development" if name in DEVELOPMENT else "held-out"
    shown = ", ".join(f"{key} {parameters[key]:.3g}" for key in RANGES)
    return f"{name} ({role}, seed {seed_of(name)}): {shown}"
