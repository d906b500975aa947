"""Synthetic RxRx1 pixels: per-siRNA phenotypes, technical noise and the rendered cells.

Technical noise (cell-type look, experiment, plate and well channel gains and offsets) swamps a weaker
per-siRNA phenotype: a small per-channel intensity change and a mean-neutral morphology (cell size,
elongation and count; the cell brightness is compensated so the channel mean does not move).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from deepnoise_tf import constants


@dataclasses.dataclass(frozen=True)
class Phenotypes:
    """Per-class phenotype table, identical in every experiment and cell type."""

    intensity: np.ndarray  # (classes, 6) multiplicative brightness
    size: np.ndarray  # (classes, 6) cell size factor
    elongation: np.ndarray  # (classes, 6) >= 1, aspect ratio of the cells in that channel
    count: np.ndarray  # (classes,) cell density factor


def _phenotypes(parameters: dict, seed: int) -> Phenotypes:
    rng = np.random.default_rng([seed, 2])
    shape = (constants.NUM_CLASSES, constants.NUM_CHANNELS)
    phenotypes = Phenotypes(
        intensity=np.exp(parameters["intensity_effect"] * rng.standard_normal(shape)),
        size=np.exp(parameters["size_effect"] * rng.standard_normal(shape)),
        elongation=np.exp(np.abs(parameters["elongation_effect"] * rng.standard_normal(shape))),
        count=np.exp(parameters["count_effect"] * rng.standard_normal(constants.NUM_CLASSES)),
    )
    # The negative control is the unperturbed cell.
    for table in (phenotypes.intensity, phenotypes.size, phenotypes.elongation, phenotypes.count):
        table[constants.NEGATIVE_CONTROL] = 1.0
    return phenotypes


def _lognormal(rng: np.random.Generator, sigma: float, size) -> np.ndarray:
    """exp(N(0, sigma)) clipped at two sigma, so no draw pushes the images into saturation."""
    return np.exp(sigma * np.clip(rng.standard_normal(size), -2.0, 2.0))


def render_sites(
    sirnas: np.ndarray,
    gains: np.ndarray,
    offsets: np.ndarray,
    look: dict,
    phenotypes: Phenotypes,
    parameters: dict,
    rng: np.random.Generator,
) -> np.ndarray:
    """Images (sites, 6, H, W) uint8 of the given classes with per-site channel gains and offsets.

    Each cell is an axis-aligned Gaussian blob shared by all channels in position; its size, elongation
    and brightness are channel-specific. Blob sums are separable, so a site is one batched matmul.
    """
    size = parameters["image_size"]
    channels = constants.NUM_CHANNELS
    sites = len(sirnas)
    mean_count = parameters["cells_per_site"] * look["density"] * phenotypes.count[sirnas]
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
    signal = np.matmul(
        profile_y.transpose(0, 1, 3, 2).astype(np.float32), profile_x.astype(np.float32)
    )  # (sites, 6, H, W)
    values = (
        offsets[:, :, None, None]
        + gains[:, :, None, None] * parameters["signal_scale"] * signal
        + parameters["pixel_noise"] * rng.standard_normal(signal.shape, dtype=np.float32)
    )
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
    phenotypes = _phenotypes(parameters, seed)
    gains, offsets, looks = _technical_effects(parameters, seed, sites)
    per_site = constants.NUM_CHANNELS * parameters["image_size"] ** 2
    chunk = max(1, chunk_pixels // per_site)
    for (cell_type, experiment, plate), rows in sites.groupby(
        ["cell_type", "experiment", "plate"], sort=False
    ).indices.items():
        number = int(experiment.split("-")[-1])
        cell_index = constants.CELL_TYPES.index(cell_type)
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            rng = np.random.default_rng([seed, 7, cell_index, number, plate, start])
            images = render_sites(
                sites["sirna"].to_numpy()[part],
                gains[part],
                offsets[part],
                looks[cell_type],
                phenotypes,
                parameters,
                rng,
            )
            yield part, images
