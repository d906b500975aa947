"""Pixels of one site: PNG decoding with its checks, area-average downsampling, the (H, W, 6) stack."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from etils import epath
from PIL import Image

from tfds_rxrx1.rxrx1.source import Site, SourceError


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """What decoding needs to know, small and picklable for Beam workers."""

    source_shape: tuple[int, int]
    reference_path: str
    target_size: int | None


def decode_png(path: str) -> np.ndarray:
    """One channel as uint8 (H, W), or a SourceError naming the file and what is wrong with it."""
    try:
        data = epath.Path(path).read_bytes()
    except FileNotFoundError as error:
        raise SourceError(
            f"{path} is missing; restore it or remove its site from the metadata."
        ) from error
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode, image_format = image.mode, image.format
            pixels = np.asarray(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise SourceError(
            f"{path} cannot be decoded ({error}): the PNG is empty, truncated or corrupt. "
            "Re-download or re-extract it."
        ) from error
    problem = format_problem(path, image_format, mode)
    if problem:
        raise SourceError(problem)
    return pixels


def format_problem(path: str, image_format: str | None, mode: str) -> str | None:
    """Why a file is not an 8-bit greyscale PNG, or None; shared by the decoder and the header check."""
    if image_format != "PNG":
        return f"{path} is a {image_format} file, not a PNG; convert or replace it."
    if mode != "L":
        kind = (
            "16-bit"
            if mode.startswith("I")
            else "colour"
            if mode in ("RGB", "RGBA", "P", "LA")
            else mode
        )
        return (
            f"{path} is a {kind} PNG (mode {mode}); RxRx1 channels are 8-bit greyscale. Convert it "
            "to 8-bit greyscale (one PNG per channel) first."
        )
    return None


def downsample(pixels: np.ndarray, size: int) -> np.ndarray:
    """Area average to (size, size), rounded half up; exact integer arithmetic for integer factors."""
    height, width = pixels.shape
    if (height, width) == (size, size):
        return pixels
    if height % size == 0 and width % size == 0:
        factor_y, factor_x = height // size, width // size
        sums = pixels.reshape(size, factor_y, size, factor_x).sum(axis=(1, 3), dtype=np.int64)
        area = factor_y * factor_x
        return ((2 * sums + area) // (2 * area)).astype(np.uint8)
    # Other factors: exact overlap weights (Pillow's BOX filter samples pixel centres instead).
    averaged = (
        _area_weights(height, size) @ pixels.astype(np.float64) @ _area_weights(width, size).T
    )
    return np.clip(np.floor(averaged + 0.5), 0, 255).astype(np.uint8)


def _area_weights(source: int, target: int) -> np.ndarray:
    """(target, source) matrix: the share of each source pixel in each target pixel's area."""
    edges = np.arange(target + 1) * (source / target)
    left = np.arange(source)
    overlap = np.minimum(edges[1:, None], left[None] + 1) - np.maximum(edges[:-1, None], left[None])
    return np.clip(overlap, 0, None) * (target / source)


def read_site(site: Site, settings: DecodeSettings) -> np.ndarray:
    """The stored image (H, W, 6) of one site, after every check the source must pass."""
    channels = []
    for channel, path in enumerate(site.paths, start=1):
        pixels = decode_png(path)
        if pixels.shape != settings.source_shape:
            raise SourceError(
                f"{path} is {pixels.shape[0]}x{pixels.shape[1]} but {settings.reference_path} is "
                f"{settings.source_shape[0]}x{settings.source_shape[1]}: mixed image sizes. All channels of "
                "all sites must share one size; resize or remove the odd site."
            )
        if pixels.min() == pixels.max():
            raise SourceError(
                f"{path} (channel w{channel} of {site.site_id}) is constant (every pixel "
                f"{int(pixels.min())}): a blank or failed acquisition with std 0. Replace the file or "
                "remove the site from the metadata."
            )
        if settings.target_size is not None:
            pixels = downsample(pixels, settings.target_size)
        channels.append(pixels)
    return np.stack(channels, axis=-1)
