"""Synthetic RxRx1 pixels: per-siRNA phenotypes, technical noise and the rendered cells.

Technical noise (cell-type look, experiment, plate and well channel gains and offsets) swamps a weaker
per-siRNA phenotype: a small per-channel intensity change and a mean-neutral morphology (cell size,
elongation and count; the cell brightness is compensated so the channel mean does not move).
Off unless set (the seeded family, docs/synthetic_family.md): texture (granules inside the cells),
localisation (signal moved from one channel's cells to another), cell-type-specific effects, a
Dirichlet mix of these kinds per siRNA, and the non-affine noise of `synthetic_effects`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from deepnoise_tf import constants, synthetic_effects


@dataclasses.dataclass(frozen=True)
class Phenotypes:
    """Per-class phenotype table of one cell type (the same in every cell type at specificity 0)."""

    intensity: np.ndarray  # (classes, 6) multiplicative brightness
    size: np.ndarray  # (classes, 6) cell size factor
    elongation: np.ndarray  # (classes, 6) >= 1, aspect ratio of the cells in that channel
    count: np.ndarray  # (classes,) cell density factor
    # Off (None) unless `texture_effect` / `localisation_effect` are set.
    texture: np.ndarray | None = None  # (classes, 6) >= 0, contrast of the spots inside the cells
    localisation: np.ndarray | None = None  # (classes,) in [0, 1), share of signal moved
    localisation_channels: np.ndarray | None = None  # (classes, 2) source and target channel


# The phenotype kinds an siRNA mixes (Dirichlet weights per siRNA, `phenotype_mix_concentration`).
PHENOTYPE_KINDS = ("intensity", "size", "elongation", "count", "texture", "localisation")


def _phenotype_draws(parameters: dict, seed: int, cell_index: int) -> dict:
    """Standard normal draws of each kind, (classes, 6) or (classes,), shared or cell-type specific.

    Specificity s mixes a shared draw z and one per cell type z_t as sqrt(1 - s) z + sqrt(s) z_t:
    the correlation of a kind's effect between two cell types is 1 - s (0: identical, 1: independent).
    """
    rng = np.random.default_rng([seed, 2])
    shape = (constants.NUM_CLASSES, constants.NUM_CHANNELS)
    shapes = {"intensity": shape, "size": shape, "elongation": shape}
    shapes["count"] = (constants.NUM_CLASSES,)
    draws = {kind: rng.standard_normal(kind_shape) for kind, kind_shape in shapes.items()}
    if parameters.get("texture_effect", 0.0) or parameters.get("localisation_effect", 0.0):
        extra_rng = np.random.default_rng([seed, 2, 1])
        shapes.update(texture=shape, localisation=(constants.NUM_CLASSES,))
        draws["texture"] = extra_rng.standard_normal(shape)
        draws["localisation"] = extra_rng.standard_normal(constants.NUM_CLASSES)
    specificity = parameters.get("cell_type_specificity", 0.0)
    if specificity:
        specific_rng = np.random.default_rng([seed, 2, 2, cell_index])
        for kind, kind_shape in shapes.items():
            specific = specific_rng.standard_normal(kind_shape)
            draws[kind] = np.sqrt(1.0 - specificity) * draws[kind] + np.sqrt(specificity) * specific
    concentration = parameters.get("phenotype_mix_concentration", 0.0)
    if concentration:
        # Weights w over the kinds per siRNA; effect k scaled by sqrt(K w_k): on average the total
        # variance of the phenotype stays, but each siRNA leans on a few kinds.
        mix_rng = np.random.default_rng([seed, 2, 3])
        weights = mix_rng.dirichlet(
            np.full(len(PHENOTYPE_KINDS), concentration), constants.NUM_CLASSES
        )
        for index, kind in enumerate(PHENOTYPE_KINDS):
            if kind in draws:
                scale = np.sqrt(len(PHENOTYPE_KINDS) * weights[:, index])
                draws[kind] = draws[kind] * scale.reshape((-1,) + (1,) * (draws[kind].ndim - 1))
    return draws


def _phenotypes(parameters: dict, seed: int, cell_index: int = 0) -> Phenotypes:
    draws = _phenotype_draws(parameters, seed, cell_index)
    extra = {}
    if "texture" in draws:
        extra["texture"] = parameters["texture_effect"] * np.abs(draws["texture"])
        extra["localisation"] = 1.0 - np.exp(
            -parameters["localisation_effect"] * np.abs(draws["localisation"])
        )
        # Which channel gives signal to which (e.g. nucleus to cytoplasm): per siRNA, never the same.
        channel_rng = np.random.default_rng([seed, 2, 4])
        source = channel_rng.integers(constants.NUM_CHANNELS, size=constants.NUM_CLASSES)
        step = channel_rng.integers(1, constants.NUM_CHANNELS, size=constants.NUM_CLASSES)
        extra["localisation_channels"] = np.stack(
            [source, (source + step) % constants.NUM_CHANNELS], 1
        )
    phenotypes = Phenotypes(
        intensity=np.exp(parameters["intensity_effect"] * draws["intensity"]),
        size=np.exp(parameters["size_effect"] * draws["size"]),
        elongation=np.exp(np.abs(parameters["elongation_effect"] * draws["elongation"])),
        count=np.exp(parameters["count_effect"] * draws["count"]),
        **extra,
    )
    # The negative control is the unperturbed cell.
    for table in (phenotypes.intensity, phenotypes.size, phenotypes.elongation, phenotypes.count):
        table[constants.NEGATIVE_CONTROL] = 1.0
    for table in (phenotypes.texture, phenotypes.localisation):
        if table is not None:
            table[constants.NEGATIVE_CONTROL] = 0.0
    return phenotypes


def localise(signal: np.ndarray, fraction: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """Moves `fraction[site]` of channel `channels[site, 0]`'s signal into channel `channels[site, 1]`.

    The moved signal keeps the source channel's cell shapes (a protein leaving the nucleus for the
    cytoplasm); the sum over channels is unchanged.
    """
    sites = np.arange(len(signal))
    moved = fraction[:, None, None].astype(signal.dtype) * signal[sites, channels[:, 0]]
    result = signal.copy()
    result[sites, channels[:, 0]] -= moved
    result[sites, channels[:, 1]] += moved
    return result


def texture_field(
    strength: np.ndarray, size: int, spot_sigma: float, rng: np.random.Generator
) -> np.ndarray:
    """(sites, 6, H, W) multiplicative spots exp(t n - t^2 / 2), n smooth unit noise: mean about 1.

    Multiplying the cell signal by it makes granules inside the cells (nothing outside them) while the
    channel mean stays, so only texture-aware features see it.
    """
    noise = rng.standard_normal((*strength.shape, size, size))
    spots = synthetic_effects.blur(noise.reshape(-1, 1, size, size), spot_sigma).reshape(
        noise.shape
    )
    spots -= spots.mean(axis=(-2, -1), keepdims=True)
    spots /= spots.std(axis=(-2, -1), keepdims=True) + 1e-12
    strength = strength[..., None, None]
    return np.exp(strength * spots - 0.5 * strength**2)


def _lognormal(rng: np.random.Generator, sigma: float, size) -> np.ndarray:
    """exp(N(0, sigma)) clipped at two sigma, so no draw pushes the images into saturation."""
    return np.exp(sigma * np.clip(rng.standard_normal(size), -2.0, 2.0))


def _cell_signal(
    sirnas: np.ndarray,
    look: dict,
    phenotypes: Phenotypes,
    parameters: dict,
    rng: np.random.Generator,
    density: np.ndarray | None,
) -> np.ndarray:
    """(sites, 6, H, W) float32 cell signal before gains: blobs with the classes' morphology.

    Each cell is an axis-aligned Gaussian blob shared by all channels in position; its size, elongation
    and brightness are channel-specific. Blob sums are separable, so a site is one batched matmul.
    `density` (sites,) multiplies the expected cell count without brightness compensation (technical).
    """
    size = parameters["image_size"]
    channels = constants.NUM_CHANNELS
    sites = len(sirnas)
    mean_count = parameters["cells_per_site"] * look["density"] * phenotypes.count[sirnas]
    if density is not None:
        mean_count = mean_count * density
    max_cells = int(np.ceil(3 * parameters["cells_per_site"] * 1.6)) + 4
    cells = np.minimum(rng.poisson(mean_count), max_cells)
    present = np.arange(max_cells)[None, :] < cells[:, None]  # (sites, cells)
    centre_y = rng.uniform(0, size, (sites, 1, max_cells, 1))
    centre_x = rng.uniform(0, size, (sites, 1, max_cells, 1))
    sigma = (
        size
        * parameters["cell_sigma"]
        * look["sigma"][None, :, None]
        * phenotypes.size[sirnas][:, :, None]
        * _lognormal(rng, parameters["cell_size_noise"], (sites, 1, max_cells))
    )
    stretch = np.sqrt(phenotypes.elongation[sirnas])[:, :, None]
    # Each cell lies along y or x at random: orientation is nuisance, elongation is phenotype.
    along_y = rng.random((sites, 1, max_cells)) < 0.5
    sigma_y = np.where(along_y, sigma * stretch, sigma / stretch)
    sigma_x = np.where(along_y, sigma / stretch, sigma * stretch)
    # Peak brightness compensates blob area and cell density so the channel mean carries only the
    # intensity phenotype (morphology must be seen, not averaged).
    base_sigma = size * parameters["cell_sigma"] * look["sigma"][None, :, None]
    peak = (
        phenotypes.intensity[sirnas][:, :, None]
        * base_sigma**2
        / (sigma_y * sigma_x)
        / phenotypes.count[sirnas][:, None, None]
        * _lognormal(rng, parameters["cell_brightness_noise"], (sites, channels, max_cells))
        * present[:, None, :]
    )
    grid = np.arange(size, dtype=np.float64)[None, None, None, :] + 0.5
    profile_y = np.exp(-0.5 * ((grid - centre_y) / sigma_y[..., None]) ** 2) * peak[..., None]
    profile_x = np.exp(-0.5 * ((grid - centre_x) / sigma_x[..., None]) ** 2)
    return np.matmul(
        profile_y.transpose(0, 1, 3, 2).astype(np.float32), profile_x.astype(np.float32)
    )  # (sites, 6, H, W)


def _phenotype_patterns(signal, sirnas, phenotypes, parameters, rng) -> np.ndarray:
    """The signal with the classes' localisation and texture (when the phenotypes have them)."""
    if phenotypes.localisation is not None:
        signal = localise(
            signal, phenotypes.localisation[sirnas], phenotypes.localisation_channels[sirnas]
        )
    if phenotypes.texture is not None:
        # Granules a third of a cell's width: finer than the cells, coarser than a pixel.
        spot_sigma = max(0.7, parameters["image_size"] * parameters["cell_sigma"] / 3.0)
        spots = texture_field(phenotypes.texture[sirnas], parameters["image_size"], spot_sigma, rng)
        signal = (signal * spots).astype(np.float32)
    return signal


def render_sites(
    sirnas: np.ndarray,
    gains: np.ndarray,
    offsets: np.ndarray,
    look: dict,
    phenotypes: Phenotypes,
    parameters: dict,
    rng: np.random.Generator,
    effects: synthetic_effects.SiteEffects | None = None,
    effects_rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Images (sites, 6, H, W) uint8 of the given classes with per-site channel gains and offsets.

    `effects`: the technical noise of `synthetic_effects` for these sites (one plate); None = none.
    `effects_rng` draws what the texture needs, so `rng`'s stream is that of the plain presets.
    """
    density = None if effects is None else effects.density
    signal = _cell_signal(sirnas, look, phenotypes, parameters, rng, density)
    if phenotypes.texture is not None or phenotypes.localisation is not None:
        effects_rng = effects_rng or np.random.default_rng(rng.integers(2**63))
        signal = _phenotype_patterns(signal, sirnas, phenotypes, parameters, effects_rng)
    if effects is None:
        values = (
            offsets[:, :, None, None]
            + gains[:, :, None, None] * parameters["signal_scale"] * signal
            + parameters["pixel_noise"] * rng.standard_normal(signal.shape, dtype=np.float32)
        )
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    signal = synthetic_effects.blur(signal, effects.blur_sigma)
    light = (
        offsets[:, :, None, None]
        + effects.background[None, :, None, None]
        + (gains * effects.brightness[:, None])[:, :, None, None]
        * parameters["signal_scale"]
        * signal
    ) * effects.illumination
    values = light + parameters["pixel_noise"] * rng.standard_normal(signal.shape, dtype=np.float32)
    values = synthetic_effects.gamma_curve(values, effects.gamma[None, :, None, None])
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _technical_effects(parameters: dict, seed: int, sites: pd.DataFrame):
    """Per-site channel gains and offsets: cell-type look x experiment x plate x well."""
    channels = constants.NUM_CHANNELS
    gains = np.ones((len(sites), channels))
    offsets = np.full((len(sites), channels), parameters["background"])
    looks = {}
    for cell_index, cell_type in enumerate(constants.CELL_TYPES):
        rng = np.random.default_rng([seed, 3, cell_index])
        looks[cell_type] = {
            "gain": _lognormal(rng, parameters["cell_type_gain"], channels),
            "offset": parameters["cell_type_offset"] * rng.uniform(-1, 1, channels),
            "sigma": _lognormal(rng, 0.15, channels),
            "density": float(_lognormal(rng, 0.15, 1)[0]),
        }
    for key, rows in sites.groupby(["experiment", "plate", "id_code"], sort=False).indices.items():
        experiment, plate, _ = key
        cell_type = sites["cell_type"].iat[rows[0]]
        number = int(experiment.split("-")[-1])
        cell_index = constants.CELL_TYPES.index(cell_type)
        experiment_rng = np.random.default_rng([seed, 4, cell_index, number])
        experiment_gain = _lognormal(experiment_rng, parameters["experiment_gain"], channels)
        experiment_offset = parameters["experiment_offset"] * experiment_rng.uniform(
            -1, 1, channels
        )
        plate_rng = np.random.default_rng([seed, 5, cell_index, number, plate])
        plate_gain = _lognormal(plate_rng, parameters["plate_gain"], channels)
        plate_offset = parameters["plate_offset"] * plate_rng.uniform(-1, 1, channels)
        well_rng = np.random.default_rng([seed, 6, cell_index, number, plate, rows[0]])
        well_gain = _lognormal(well_rng, parameters["well_gain"], channels)
        look = looks[cell_type]
        gains[rows] = look["gain"] * experiment_gain * plate_gain * well_gain
        offsets[rows] += look["offset"] + experiment_offset + plate_offset
    return gains, offsets, looks


def generate_images(
    parameters: dict, sites: pd.DataFrame, seed: int = 0, chunk_pixels: int = 1 << 23
):
    """Yields (row indices, uint8 images (sites, 6, H, W)) in chunks of bounded memory."""
    phenotypes = {
        cell_type: _phenotypes(parameters, seed, constants.CELL_TYPES.index(cell_type))
        for cell_type in sites["cell_type"].unique()
    }
    gains, offsets, looks = _technical_effects(parameters, seed, sites)
    per_site = constants.NUM_CHANNELS * parameters["image_size"] ** 2
    chunk = max(1, chunk_pixels // per_site)
    wells = sites["well"].to_numpy()
    for (cell_type, experiment, plate), rows in sites.groupby(
        ["cell_type", "experiment", "plate"], sort=False
    ).indices.items():
        number = int(experiment.split("-")[-1])
        cell_index = constants.CELL_TYPES.index(cell_type)
        effects = synthetic_effects.plate_effects(
            parameters, seed, wells[rows], cell_index, number, plate
        )
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            rng = np.random.default_rng([seed, 7, cell_index, number, plate, start])
            images = render_sites(
                sites["sirna"].to_numpy()[part],
                gains[part],
                offsets[part],
                looks[cell_type],
                phenotypes[cell_type],
                parameters,
                rng,
                effects=None
                if effects is None
                else effects.subset(np.arange(start, start + len(part))),
                effects_rng=np.random.default_rng([seed, 14, cell_index, number, plate, start]),
            )
            yield part, images
