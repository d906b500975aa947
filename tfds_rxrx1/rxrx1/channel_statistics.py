"""Exact pooled channel statistics of plates, experiments and cell types.

Integer sums of pixel values and their squares, streamed one site at a time (or taken from Kaggle's
pixel_stats.csv), pooled per group and finished as population mean and std: the statistics of the
paper's cell-type, experiment and plate normalization (eqs. 1-3).
"""

from __future__ import annotations

import collections

import numpy as np
import pandas as pd
from etils import epath

from tfds_rxrx1.rxrx1 import facts, progress
from tfds_rxrx1.rxrx1.pixels import DecodeSettings, read_site
from tfds_rxrx1.rxrx1.source import Site, SourceError, as_int, raise_problems, read_table

PIXEL_STATS_COLUMNS = ("id_code", "site", "channel", "mean", "std")
# pixel_stats.csv agrees with the PNGs to float rounding (and ddof, immaterial at 512^2); a wrong or
# foreign file is off by far more. 1% of a statistic is well below what normalization would notice.
PIXEL_STATS_TOLERANCE = 0.01


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
    """{group key: (mean, std)} in one streaming pass; memory holds one site at a time.

    A site that fails to decode does not stop the pass: every bad file is reported in one error at the
    end, before any example is written.
    """
    pooled: dict = {}
    problems = []
    for site in progress.logged(sites, len(sites), "statistics pass, sites"):
        try:
            site_moments = site_group_moments(site, settings, known)
        except SourceError as error:
            problems.append(str(error))
            continue
        for key, moments in site_moments:
            pooled[key] = add_moments(pooled[key], moments) if key in pooled else moments
    raise_problems(problems, "decoding the images")
    return {key: finish_moments(key, moments) for key, moments in pooled.items()}


def check_pixel_stats(path, group: str, from_file, from_pixels) -> None:
    """Refuses pixel_stats.csv when a group's (mean, std) from it and from the pixels disagree.

    Without this a wrong file (a plate's means x3) gives a wrong normalization and a build that succeeds.
    """
    worst, where = 0.0, ""
    for moment, file_values, pixel_values in zip(
        ("mean", "std"), from_file, from_pixels, strict=True
    ):
        file_values, pixel_values = np.asarray(file_values), np.asarray(pixel_values)
        relative = np.abs(file_values - pixel_values) / np.maximum(np.abs(pixel_values), 1e-6)
        channel = int(np.argmax(relative))
        if relative[channel] > worst:
            worst = float(relative[channel])
            where = (
                f"channel w{channel + 1} {moment} is {file_values[channel]:.6g} by the file but "
                f"{pixel_values[channel]:.6g} by the pixels"
            )
    if worst > PIXEL_STATS_TOLERANCE:
        raise SourceError(
            f"{path} disagrees with the images it describes: in {group}, {where} (relative "
            f"difference {worst:.1%}, the largest of this group; tolerance {PIXEL_STATS_TOLERANCE:.0%})."
            " The file is wrong or belongs to other images: delete or replace it (without it the "
            "builder computes the statistics from the pixels)."
        )


class PixelStatsCheck:
    """Checks the statistics taken from pixel_stats.csv against the pixels the writer decodes anyway.

    Plates are the finest group (experiments and cell types pool the same rows); each plate is checked
    when its last site is decoded, so a wrong file stops the build at the first wrong plate.
    """

    def __init__(self, path, sites: list[Site], statistics: dict):
        self._path = path
        self._statistics = statistics
        self._remaining = collections.Counter(site.group_keys()["plate"] for site in sites)
        self._pooled: dict = {}

    def add(self, site: Site, image: np.ndarray) -> None:
        key = site.group_keys()["plate"]
        moments = image_moments(image)
        self._pooled[key] = (
            add_moments(self._pooled[key], moments) if key in self._pooled else moments
        )
        self._remaining[key] -= 1
        if self._remaining[key] == 0:
            pixels = finish_moments(key, self._pooled.pop(key))
            check_pixel_stats(self._path, key, self._statistics[key], pixels)


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
