"""Exact pooled channel statistics of plates, experiments and cell types.

Integer sums of pixel values and their squares, streamed one site at a time (or taken from Kaggle's
pixel_stats.csv), pooled per group and finished as population mean and std: the statistics of the
paper's cell-type, experiment and plate normalization (eqs. 1-3).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from etils import epath

from tfds_rxrx1.rxrx1 import facts
from tfds_rxrx1.rxrx1.pixels import DecodeSettings, read_site
from tfds_rxrx1.rxrx1.source import Site, SourceError, as_int, read_table

PIXEL_STATS_COLUMNS = ("id_code", "site", "channel", "mean", "std")


def image_moments(image: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(pixel count, per-channel sum, per-channel sum of squares) as exact integers."""
    levels = np.arange(256, dtype=np.int64)
    flat = image.reshape(-1, image.shape[-1])
    histograms = np.stack([np.bincount(flat[:, c], minlength=256) for c in range(flat.shape[1])])
    return flat.shape[0], histograms @ levels, histograms @ (levels * levels)


def add_moments(first, second):
    """The moments of two disjoint pixel sets pooled: elementwise sums."""
    return first[0] + second[0], first[1] + second[1], first[2] + second[2]


def finish_moments(group: str, moments) -> tuple[np.ndarray, np.ndarray]:
    """Pooled population mean and std per channel; exact rational arithmetic for integer sums."""
    count, totals, squares = moments
    if np.issubdtype(np.asarray(totals).dtype, np.integer):
        count = int(count)
        mean = [int(t) / count for t in totals]
        # (n * sum(x^2) - sum(x)^2) / n^2 in Python integers: no cancellation.
        variance = [
            (count * int(q) - int(t) ** 2) / count**2 for t, q in zip(totals, squares, strict=True)
        ]
    else:
        mean = list(np.asarray(totals, np.float64) / count)
        variance = list(np.maximum(np.asarray(squares, np.float64) / count - np.square(mean), 0.0))
    std = np.sqrt(np.asarray(variance, np.float64))
    flat = np.flatnonzero(std == 0)
    if flat.size:
        raise SourceError(
            f"channel w{flat[0] + 1} is constant over the whole group {group} (std 0); normalization "
            "would divide by zero. Replace its images or remove that group's rows."
        )
    return np.asarray(mean, np.float64), std


def site_group_moments(site: Site, settings: DecodeSettings, known: dict | None = None):
    """[(group key, moments)] of one site, from pixel_stats rows when given, else from the pixels."""
    moments = None
    if known is not None:
        moments = known.get((site.id_code, site.site))
    if moments is None:
        moments = image_moments(read_site(site, settings))
    return [(key, moments) for key in site.group_keys().values()]


def read_pixel_stats(path: epath.Path, pixels_per_image: int) -> dict:
    """{(id_code, site): moments} from Kaggle's pixel_stats.csv, complete sites only."""
    table = read_table(path, PIXEL_STATS_COLUMNS)
    site = as_int(table, "site", 1, 99)
    channel = as_int(table, "channel", 1, facts.NUM_CHANNELS)
    mean = pd.to_numeric(table["mean"], errors="coerce").to_numpy()
    std = pd.to_numeric(table["std"], errors="coerce").to_numpy()
    if np.isnan(mean).any() or np.isnan(std).any():
        index = int(np.flatnonzero(np.isnan(mean) | np.isnan(std))[0])
        raise SourceError(
            f"{table['row'].iat[index]}: mean/std is not a number; fix or delete pixel_stats.csv."
        )
    collected: dict = {}
    for id_code, number, c, m, s in zip(table["id_code"], site, channel, mean, std, strict=True):
        collected.setdefault((id_code, int(number)), {})[int(c)] = (m, s)
    known = {}
    for key, by_channel in collected.items():
        if len(by_channel) != facts.NUM_CHANNELS:
            continue  # computed from the pixels instead
        values = np.array([by_channel[c] for c in range(1, facts.NUM_CHANNELS + 1)], np.float64)
        totals = pixels_per_image * values[:, 0]
        # Population std: n * (std^2 + mean^2) is the sum of squares (Kaggle's ddof is immaterial at 512^2).
        squares = pixels_per_image * (values[:, 1] ** 2 + values[:, 0] ** 2)
        known[key] = (pixels_per_image, totals, squares)
    return known


def compute_statistics(
    sites: list[Site], settings: DecodeSettings, known: dict | None = None
) -> dict:
    """{group key: (mean, std)} in one streaming pass; memory holds one site at a time."""
    pooled: dict = {}
    for site in sites:
        for key, moments in site_group_moments(site, settings, known):
            pooled[key] = add_moments(pooled[key], moments) if key in pooled else moments
    return {key: finish_moments(key, moments) for key, moments in pooled.items()}


def finish_keyed(key_and_moments):
    """(group key, moments) -> (group key, (mean, std)); the Beam map after the combine."""
    key, moments = key_and_moments
    return key, finish_moments(key, moments)


def combine_moments(values):
    """The pooled moments of an iterable of moments; the Beam CombinePerKey function."""
    total = None
    for moments in values:
        total = moments if total is None else add_moments(total, moments)
    return total
