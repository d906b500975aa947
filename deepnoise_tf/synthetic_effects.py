"""Technical noise of the synthetic RxRx1 that per-plate standardisation does not simply invert.

Channel gains and offsets (`synthetic_images`) are affine per plate and channel, so the paper's plate
normalization (eqs. 1-3) removes most of them. Real screens also have noise that is not affine per
plate: an illumination field across the image (gradient and vignetting), focus that varies from site to
site, a background that the illumination shapes, a nonlinear camera response per experiment (gamma),
cell density that varies from well to well, and wells at the plate's edge that behave differently.
All are off (0) by default, so the hand-tuned presets render as they always did; the seeded family of
designs (`synthetic_family`, docs/synthetic_family.md) turns them on.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from deepnoise_tf import constants

# Parameter names of `synthetic_design.DEFAULT_PARAMETERS` this module reads; 0 = off.
TECHNICAL_PARAMETERS = (
    "illumination_strength",  # the field spans [1 - strength, 1] over each plate's images
    "focus_blur",  # per-site Gaussian blur sigma ~ U(0, focus_blur) x image side
    "plate_background",  # per-plate, per-channel background ~ U(0, plate_background) grey levels
    "gamma_spread",  # per-experiment, per-channel gamma = exp(N(0, spread) clipped at 2 sigma)
    "well_density",  # per-well cell density factor = exp(N(0, spread) clipped at 2 sigma)
    "edge_effect",  # outer-ring wells lose this fraction of cells and brightness; halves per ring
)


@dataclasses.dataclass(frozen=True)
class SiteEffects:
    """The technical effects of some sites of one plate (one experiment, one plate)."""

    density: np.ndarray  # (sites,) cell count factor: well density x edge
    brightness: np.ndarray  # (sites,) signal factor of the well position (edge)
    blur_sigma: np.ndarray  # (sites,) focus blur in pixels
    illumination: np.ndarray  # (H, W) multiplicative field of the plate
    background: np.ndarray  # (6,) plate background in grey levels, illuminated like the cells
    gamma: np.ndarray  # (6,) the experiment's camera response exponent per channel

    def subset(self, rows: np.ndarray) -> SiteEffects:
        """The effects of `rows` (positions into this object's sites)."""
        return dataclasses.replace(
            self,
            density=self.density[rows],
            brightness=self.brightness[rows],
            blur_sigma=self.blur_sigma[rows],
        )


def is_off(parameters: dict) -> bool:
    """Whether every technical effect of this module is 0 (the presets' pixels stay as they were)."""
    return all(parameters.get(name, 0.0) == 0.0 for name in TECHNICAL_PARAMETERS)


def illumination_field(size: int, strength: float, rng: np.random.Generator) -> np.ndarray:
    """(size, size) smooth multiplicative field with min 1 - strength and max 1.

    A linear gradient in a random direction mixed with a quadratic vignetting around a random centre,
    rescaled so its range is exactly [1 - strength, 1].
    """
    coordinates = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(coordinates, coordinates, indexing="ij")
    angle = rng.uniform(0.0, 2.0 * np.pi)
    mix = rng.uniform(0.0, 1.0)
    centre_y, centre_x = rng.uniform(-0.5, 0.5, 2)
    gradient = x * np.cos(angle) + y * np.sin(angle)
    vignetting = (y - centre_y) ** 2 + (x - centre_x) ** 2
    shape = mix * gradient + (1.0 - mix) * vignetting
    shape = (shape - shape.min()) / max(shape.max() - shape.min(), 1e-12)
    return 1.0 - strength * shape


def gaussian_blur_matrix(size: int, sigma: float) -> np.ndarray:
    """(size, size) rows of a normalised Gaussian kernel: `matrix @ column` blurs a column.

    Each row sums to 1 (the kernel is renormalised at the border), so a constant image stays constant.
    sigma <= 0 gives the identity.
    """
    if sigma <= 0:
        return np.eye(size)
    offsets = np.arange(size)[:, None] - np.arange(size)[None, :]
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum(axis=1, keepdims=True)


def blur(images: np.ndarray, sigmas) -> np.ndarray:
    """images (sites, channels, H, W) blurred per site by a separable Gaussian of sigma `sigmas[site]`."""
    sigmas = np.broadcast_to(np.asarray(sigmas, np.float64), (len(images),))
    blurred = np.empty_like(images)
    for index, (image, sigma) in enumerate(zip(images, sigmas, strict=True)):
        rows = gaussian_blur_matrix(image.shape[-2], float(sigma)).astype(images.dtype)
        columns = gaussian_blur_matrix(image.shape[-1], float(sigma)).astype(images.dtype)
        blurred[index] = rows @ image @ columns.T
    return blurred


def gamma_curve(values: np.ndarray, gamma, top: float = 255.0) -> np.ndarray:
    """top x (values / top) ** gamma on [0, top]: a monotone, nonlinear camera response."""
    return top * (np.clip(values, 0.0, top) / top) ** gamma


def edge_distance(well: str) -> int:
    """Rings from the plate's outer used ring (rows B and O, columns 02 and 23): 0 there, then 1, ..."""
    row = constants.WELL_ROWS.index(well[0])
    column = constants.WELL_COLUMNS.index(int(well[1:]))
    return min(
        row, len(constants.WELL_ROWS) - 1 - row, column, len(constants.WELL_COLUMNS) - 1 - column
    )


def _clipped_lognormal(rng: np.random.Generator, sigma: float, size) -> np.ndarray:
    return np.exp(sigma * np.clip(rng.standard_normal(size), -2.0, 2.0))


def plate_effects(
    parameters: dict, seed: int, wells, cell_index: int, number: int, plate: int
) -> SiteEffects | None:
    """The effects of the sites of one plate whose wells are `wells` (one name per site); None if off.

    Seeded by (seed, cell type, experiment number, plate). The per-well effects (density, focus) are
    drawn in the order of the distinct wells in `wells`, so they depend on which wells of the plate
    are rendered together: `synthetic_images.generate_images` always passes whole plates.
    """
    if is_off(parameters):
        return None
    size = parameters["image_size"]
    channels = constants.NUM_CHANNELS
    plate_rng = np.random.default_rng([seed, 10, cell_index, number, plate])
    illumination = illumination_field(size, parameters["illumination_strength"], plate_rng)
    background = parameters["plate_background"] * plate_rng.uniform(0.0, 1.0, channels)
    names, site_well = np.unique(np.asarray(wells), return_inverse=True)
    focus_rng = np.random.default_rng([seed, 11, cell_index, number, plate])
    focus = focus_rng.uniform(0.0, 1.0, (len(names), constants.SITES_PER_WELL + 8))
    # A site's draw is indexed by its well and its position among the well's sites.
    site_rank = np.zeros(len(site_well), np.int64)
    for well in range(len(names)):
        members = np.flatnonzero(site_well == well)
        site_rank[members] = np.arange(len(members)) % focus.shape[1]
    blur_sigma = parameters["focus_blur"] * size * focus[site_well, site_rank]
    experiment_rng = np.random.default_rng([seed, 12, cell_index, number])
    gamma = _clipped_lognormal(experiment_rng, parameters["gamma_spread"], channels)
    well_rng = np.random.default_rng([seed, 13, cell_index, number, plate])
    density = _clipped_lognormal(well_rng, parameters["well_density"], len(names))
    rings = np.array([edge_distance(name) for name in names], np.float64)
    edge = 1.0 - parameters["edge_effect"] * 0.5**rings
    return SiteEffects(
        density=(density * edge)[site_well],
        brightness=edge[site_well],
        blur_sigma=blur_sigma,
        illumination=illumination,
        background=background,
        gamma=gamma,
    )
