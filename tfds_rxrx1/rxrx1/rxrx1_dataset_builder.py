"""rxrx1: RxRx1 as one example per site (uint8 H x W x 6) with plate, experiment and cell-type statistics.

Reads either source layout (the Kaggle competition files or the RxRx1 release), validates it, computes the
pooled per-channel mean and std of every plate, experiment and cell type exactly (integer sums of pixel
values and their squares, streamed one site at a time), and stores them with each site so that
normalization at training time is a lookup. Runs locally or on Apache Beam (statistics as a combine
feeding a side input).
"""

from __future__ import annotations

import dataclasses
import io
import re

import numpy as np
import pandas as pd
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

from deepnoise_tf import constants

RELEASE_URLS = {
    "images": "https://storage.googleapis.com/rxrx/rxrx1/rxrx1-images.zip",
    "metadata": "https://storage.googleapis.com/rxrx/rxrx1/rxrx1-metadata.zip",
}
KAGGLE_TABLES = ("train.csv", "test.csv", "train_controls.csv", "test_controls.csv")
RELEASE_COLUMNS = (
    "site_id",
    "well_id",
    "cell_type",
    "dataset",
    "experiment",
    "plate",
    "well",
    "site",
    "well_type",
    "sirna",
    "sirna_id",
)
PIXEL_STATS_COLUMNS = ("id_code", "site", "channel", "mean", "std")
STATISTIC_GROUPS = ("plate", "experiment", "cell_type")
SPLITS = ("train", "test")
_IMAGE_NAME = re.compile(r"^(?P<well>[A-Z]\d{2})_s(?P<site>\d+)_w(?P<channel>\d+)\.png$")
_PLATE_FOLDER = re.compile(r"^Plate(?P<plate>\d+)$")


class SourceError(ValueError):
    """The manual dir does not hold a usable RxRx1; the message names the file or row and the fix."""


@dataclasses.dataclass(frozen=True)
class Site:
    """One imaging site of the source: its labels and its six channel files (w1..w6)."""

    site_id: str
    id_code: str
    split: str
    experiment: str
    plate: int
    well: str
    site: int
    cell_type: str
    well_type: str
    sirna: int
    paths: tuple[str, ...]
    row: str  # "file:line" of the metadata row, for error messages

    def group_keys(self) -> dict[str, str]:
        """The statistic groups the site pools into."""
        return {
            "plate": f"plate/{self.experiment}_{self.plate}",
            "experiment": f"experiment/{self.experiment}",
            "cell_type": f"cell_type/{self.cell_type}",
        }


@dataclasses.dataclass(frozen=True)
class _Settings:
    """What decoding needs to know, small and picklable for Beam workers."""

    source_shape: tuple[int, int]
    reference_path: str
    target_size: int | None


@dataclasses.dataclass
class Rxrx1Config(tfds.core.BuilderConfig):
    """image_size: None stores native pixels, else larger sources are area-averaged to image_size^2.

    compressed: zlib-compress the stored bytes (about 4x smaller on RxRx1, several times slower to read).
    """

    image_size: int | None = None
    compressed: bool = False


def _config(image_size: int | None, compressed: bool) -> Rxrx1Config:
    size_name = "native" if image_size is None else str(image_size)
    size_text = (
        "native resolution"
        if image_size is None
        else f"{image_size}x{image_size} (area average of larger sources; smaller ones kept as they are)"
    )
    storage = "zlib-compressed bytes" if compressed else "raw uint8 bytes (fastest to read)"
    return Rxrx1Config(
        name=size_name + ("_zlib" if compressed else ""),
        description=f"Images at {size_text}, stored as {storage}.",
        image_size=image_size,
        compressed=compressed,
    )


# ----------------------------------------------------------------------------------------------------
# Reading the source tables.


def _read_table(path: epath.Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not path.exists():
        raise SourceError(f"{path} is missing; every RxRx1 layout needs it (see the dataset card).")
    try:
        table = pd.read_csv(io.StringIO(path.read_text()), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise SourceError(f"{path} is not a readable CSV ({error}); re-download it.") from error
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise SourceError(
            f"{path} lacks the columns {missing} (has {list(table.columns)}); re-download it."
        )
    # Row numbers as a spreadsheet shows them: the header is line 1.
    table["row"] = [f"{path}:{line}" for line in range(2, len(table) + 2)]
    return table


def _as_int(table: pd.DataFrame, column: str, low: int, high: int) -> np.ndarray:
    values = pd.to_numeric(table[column], errors="coerce")
    bad = values.isna() | (values < low) | (values > high) | (values != values.round())
    if bad.any():
        index = int(np.flatnonzero(bad.to_numpy())[0])
        raise SourceError(
            f"{table['row'].iat[index]}: {column}={table[column].iat[index]!r} is not an integer in "
            f"{low}..{high}; fix or remove this row."
        )
    return values.astype(np.int64).to_numpy()


def _check_choice(table: pd.DataFrame, column: str, choices: tuple[str, ...]) -> None:
    bad = ~table[column].isin(choices)
    if bad.any():
        index = int(np.flatnonzero(bad.to_numpy())[0])
        raise SourceError(
            f"{table['row'].iat[index]}: {column}={table[column].iat[index]!r} is not one of {choices}; "
            "fix or remove this row (this builder knows the RxRx1 cell types and well types only)."
        )


def _check_unique(table: pd.DataFrame, column: str) -> None:
    duplicated = table[column].duplicated(keep=False)
    if duplicated.any():
        rows = table.loc[duplicated, ["row", column]]
        first = rows[column].iat[0]
        places = ", ".join(rows.loc[rows[column] == first, "row"])
        raise SourceError(
            f"duplicate id {first!r} in {places}; every id must occur once: remove the copies."
        )


def _check_labels(table: pd.DataFrame, sirna: np.ndarray) -> None:
    """siRNA ranges follow the well type: treatments 0..1107 (or -1 unknown), controls 1108..1138."""
    ranges = {
        "treatment": (constants.UNKNOWN_LABEL, constants.NUM_SIRNAS - 1),
        "positive_control": (constants.FIRST_CONTROL, constants.NEGATIVE_CONTROL - 1),
        "negative_control": (constants.NEGATIVE_CONTROL, constants.NEGATIVE_CONTROL),
    }
    for index, (well_type, label) in enumerate(zip(table["well_type"], sirna, strict=True)):
        low, high = ranges[well_type]
        if not low <= label <= high:
            raise SourceError(
                f"{table['row'].iat[index]}: sirna {label} is not a valid {well_type} label "
                f"({low}..{high}); fix or remove this row."
            )


def _list_images(top: epath.Path) -> dict[tuple[str, int, str, int], set[int]]:
    """{(experiment, plate, well, site): channels} of every PNG under top/{experiment}/Plate{p}/."""
    found: dict[tuple[str, int, str, int], set[int]] = {}
    if not top.exists():
        return found
    for path in top.glob("*/Plate*/*.png"):
        plate_match = _PLATE_FOLDER.match(path.parent.name)
        name_match = _IMAGE_NAME.match(path.name)
        if not plate_match or not name_match:
            raise SourceError(
                f"{path} does not follow {{experiment}}/Plate{{p}}/{{well}}_s{{site}}_w{{channel}}.png; "
                "rename or remove it."
            )
        key = (
            path.parent.parent.name,
            int(plate_match["plate"]),
            name_match["well"],
            int(name_match["site"]),
        )
        found.setdefault(key, set()).add(int(name_match["channel"]))
    return found


def _image_path(
    top: epath.Path, experiment: str, plate: int, well: str, site: int, channel: int
) -> epath.Path:
    return top / experiment / f"Plate{plate}" / f"{well}_s{site}_w{channel}.png"


def _make_sites(wells: pd.DataFrame, tops: dict[str, epath.Path], per_site: bool) -> list[Site]:
    """Joins the metadata rows with the image files; every row needs all channels, every file a row.

    tops maps each split to its image folder (the release keeps both splits in one folder).
    """
    listings = {str(top): _list_images(top) for top in set(tops.values())}
    channels = set(range(1, constants.NUM_CHANNELS + 1))
    if (
        not per_site
    ):  # Kaggle rows are wells: the sites are whatever the image tree holds (RxRx1: 1, 2).
        site_numbers = sorted({key[3] for listing in listings.values() for key in listing}) or [1]
    sites = []
    claimed = {name: set() for name in listings}
    for record in wells.itertuples(index=False):
        top = tops[record.split]
        listing = listings[str(top)]
        numbers = [record.site] if per_site else site_numbers
        well_key = (record.experiment, record.plate, record.well)
        if not any(well_key + (number,) in listing for number in numbers):
            raise SourceError(
                f"{record.row}: metadata row {record.id_code} has no images (expected e.g. "
                f"{_image_path(top, *well_key, numbers[0], 1)}); restore the images or remove the row."
            )
        for number in numbers:
            key = well_key + (number,)
            missing = sorted(channels - listing.get(key, set()))
            if missing:
                raise SourceError(
                    f"{_image_path(top, *key, missing[0])} is missing ({record.row} names this site; "
                    f"channels {missing} absent); restore the file or remove the row."
                )
            claimed[str(top)].add(key)
            sites.append(
                Site(
                    site_id=f"{record.id_code}_{number}",
                    id_code=record.id_code,
                    split=record.split,
                    experiment=record.experiment,
                    plate=int(record.plate),
                    well=record.well,
                    site=int(number),
                    cell_type=record.cell_type,
                    well_type=record.well_type,
                    sirna=int(record.sirna),
                    paths=tuple(
                        str(_image_path(top, *key, channel)) for channel in sorted(channels)
                    ),
                    row=record.row,
                )
            )
    for name, listing in listings.items():
        orphans = sorted(set(listing) - claimed[name])
        if orphans:
            channel = min(listing[orphans[0]])
            raise SourceError(
                f"{_image_path(epath.Path(name), *orphans[0], channel)} has no metadata row "
                f"({len(orphans)} such sites); add the rows or remove the images."
            )
    return sites


def _read_release(root: epath.Path) -> list[Site]:
    table = _read_table(root / "metadata.csv", RELEASE_COLUMNS)
    _check_unique(table, "site_id")
    _check_choice(table, "cell_type", constants.CELL_TYPES)
    _check_choice(table, "dataset", SPLITS)
    _check_choice(table, "well_type", constants.WELL_TYPES)
    table["plate"] = _as_int(table, "plate", 1, constants.PLATES_PER_EXPERIMENT)
    table["site"] = _as_int(table, "site", 1, 99)
    table["sirna"] = _as_int(table, "sirna_id", 0, constants.NEGATIVE_CONTROL)
    _check_labels(table, table["sirna"].to_numpy())
    expected = table["experiment"] + "_" + table["plate"].astype(str) + "_" + table["well"]
    expected_site = expected + "_" + table["site"].astype(str)
    for column, values in (("well_id", expected), ("site_id", expected_site)):
        bad = table[column] != values
        if bad.any():
            index = int(np.flatnonzero(bad.to_numpy())[0])
            raise SourceError(
                f"{table['row'].iat[index]}: {column} {table[column].iat[index]!r} disagrees with "
                f"experiment/plate/well/site ({values.iat[index]!r}); fix this row."
            )
    table = table.rename(columns={"well_id": "id_code", "dataset": "split"})
    return _make_sites(table, {split: root / "images" for split in SPLITS}, per_site=True)


def _read_kaggle(root: epath.Path) -> list[Site]:
    parts = []
    for name in KAGGLE_TABLES:
        split = name.split("_")[0].split(".")[0]
        controls = "controls" in name
        required = ("id_code", "experiment", "plate", "well") + (
            ("sirna", "well_type") if controls else ("sirna",) if split == "train" else ()
        )
        table = _read_table(root / name, required)
        table["split"] = split
        if not controls:
            table["well_type"] = "treatment"
            if split == "test":
                table["sirna"] = str(constants.UNKNOWN_LABEL)
        parts.append(table)
    table = pd.concat(parts, ignore_index=True)
    _check_unique(table, "id_code")
    table["cell_type"] = table["experiment"].str.split("-").str[0]
    _check_choice(table, "cell_type", constants.CELL_TYPES)
    _check_choice(table, "well_type", constants.WELL_TYPES)
    table["plate"] = _as_int(table, "plate", 1, constants.PLATES_PER_EXPERIMENT)
    table["sirna"] = _as_int(table, "sirna", constants.UNKNOWN_LABEL, constants.NEGATIVE_CONTROL)
    _check_labels(table, table["sirna"].to_numpy())
    table["site"] = 0  # filled per site from the image tree
    return _make_sites(table, {split: root / split for split in SPLITS}, per_site=False)


def detect_layout(root: epath.Path) -> str:
    """ "release" or "kaggle" from the files present; a clear error for anything else."""
    if (root / "metadata.csv").exists() and (root / "images").exists():
        return "release"
    if any((root / name).exists() for name in KAGGLE_TABLES) or (root / "train").exists():
        return "kaggle"
    present = sorted(path.name for path in root.iterdir())[:10] if root.exists() else []
    raise SourceError(
        f"{root} holds neither RxRx1 layout (found {present or 'nothing'}). Expected either the release "
        "layout (metadata.csv + images/) or the Kaggle layout (train.csv, test.csv, train_controls.csv, "
        "test_controls.csv + train/ and test/). Point --manual_dir at the folder that holds them."
    )


def find_source_root(directory: epath.Path) -> epath.Path:
    """The directory itself, or the single sub-folder an archive extracted into (e.g. rxrx1/)."""
    for candidate in [directory] + sorted(p for p in directory.iterdir() if p.is_dir()):
        if (candidate / "metadata.csv").exists() or (candidate / "train.csv").exists():
            return candidate
    return directory


def read_source(root: epath.Path) -> tuple[str, list[Site]]:
    """Validates the layout under root and returns (layout, sites)."""
    layout = detect_layout(root)
    sites = _read_release(root) if layout == "release" else _read_kaggle(root)
    if not sites:
        raise SourceError(f"{root} lists no sites; download the metadata and images into it.")
    return layout, sites


# ----------------------------------------------------------------------------------------------------
# Pixels and statistics.


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
    if image_format != "PNG":
        raise SourceError(f"{path} is a {image_format} file, not a PNG; convert or replace it.")
    if mode != "L":
        kind = (
            "16-bit"
            if mode.startswith("I")
            else "colour"
            if mode in ("RGB", "RGBA", "P", "LA")
            else mode
        )
        raise SourceError(
            f"{path} is a {kind} PNG (mode {mode}); RxRx1 channels are 8-bit greyscale. Convert it "
            "to 8-bit greyscale (one PNG per channel) first."
        )
    return pixels


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


def read_site(site: Site, settings: _Settings) -> np.ndarray:
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


def image_moments(image: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(pixel count, per-channel sum, per-channel sum of squares) as exact integers."""
    levels = np.arange(256, dtype=np.int64)
    flat = image.reshape(-1, image.shape[-1])
    histograms = np.stack([np.bincount(flat[:, c], minlength=256) for c in range(flat.shape[1])])
    return flat.shape[0], histograms @ levels, histograms @ (levels * levels)


def add_moments(first, second):
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


def _site_group_moments(site: Site, settings: _Settings, known: dict | None = None):
    """[(group key, moments)] of one site, from pixel_stats rows when given, else from the pixels."""
    moments = None
    if known is not None:
        moments = known.get((site.id_code, site.site))
    if moments is None:
        moments = image_moments(read_site(site, settings))
    return [(key, moments) for key in site.group_keys().values()]


def _read_pixel_stats(path: epath.Path, pixels_per_image: int) -> dict:
    """{(id_code, site): moments} from Kaggle's pixel_stats.csv, complete sites only."""
    table = _read_table(path, PIXEL_STATS_COLUMNS)
    site = _as_int(table, "site", 1, 99)
    channel = _as_int(table, "channel", 1, constants.NUM_CHANNELS)
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
        if len(by_channel) != constants.NUM_CHANNELS:
            continue  # computed from the pixels instead
        values = np.array([by_channel[c] for c in range(1, constants.NUM_CHANNELS + 1)], np.float64)
        totals = pixels_per_image * values[:, 0]
        # Population std: n * (std^2 + mean^2) is the sum of squares (Kaggle's ddof is immaterial at 512^2).
        squares = pixels_per_image * (values[:, 1] ** 2 + values[:, 0] ** 2)
        known[key] = (pixels_per_image, totals, squares)
    return known


def compute_statistics(sites: list[Site], settings: _Settings, known: dict | None = None) -> dict:
    """{group key: (mean, std)} in one streaming pass; memory holds one site at a time."""
    pooled: dict = {}
    for site in sites:
        for key, moments in _site_group_moments(site, settings, known):
            pooled[key] = add_moments(pooled[key], moments) if key in pooled else moments
    return {key: finish_moments(key, moments) for key, moments in pooled.items()}


def make_example(site: Site, settings: _Settings, statistics: dict) -> dict:
    """The TFDS example of one site (features as the dataset card lists them)."""
    example = {
        "image": read_site(site, settings),
        "id_code": site.id_code,
        "site": site.site,
        "experiment": site.experiment,
        "plate": site.plate,
        "well": site.well,
        "cell_type": site.cell_type,
        "well_type": site.well_type,
        "sirna": site.sirna,
    }
    for group, key in site.group_keys().items():
        mean, std = statistics[key]
        example[f"{group}_mean"] = np.asarray(mean, np.float32)
        example[f"{group}_std"] = np.asarray(std, np.float32)
    return example


def _keyed_example(site: Site, settings: _Settings, statistics: dict):
    return site.site_id, make_example(site, settings, statistics)


def _finish_keyed(key_and_moments):
    key, moments = key_and_moments
    return key, finish_moments(key, moments)


def _beam_split(sites: list[Site], all_sites: list[Site], settings: _Settings):
    """A PTransform writing one split; the statistics of all sites arrive as a side input."""
    beam = tfds.core.lazy_imports.apache_beam

    class _SplitExamples(beam.PTransform):
        def expand(self, pipeline):
            statistics = (
                pipeline
                | "CreateAllSites" >> beam.Create(all_sites)
                | "SiteMoments" >> beam.FlatMap(_site_group_moments, settings)
                | "PoolMoments" >> beam.CombinePerKey(_combine_moments)
                | "FinishStatistics" >> beam.Map(_finish_keyed)
            )
            return (
                pipeline
                | "CreateSites" >> beam.Create(sites)
                | "MakeExamples"
                >> beam.Map(_keyed_example, settings, beam.pvalue.AsDict(statistics))
            )

    return _SplitExamples()


def _combine_moments(values):
    total = None
    for moments in values:
        total = moments if total is None else add_moments(total, moments)
    return total


# ----------------------------------------------------------------------------------------------------
# The builder.


class Builder(tfds.core.GeneratorBasedBuilder):
    """RxRx1 sites with exact plate / experiment / cell-type channel statistics."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Kaggle and release layouts; exact pooled statistics; Beam support."}
    BUILDER_CONFIGS = [
        _config(None, False),
        _config(None, True),
        _config(256, False),
        _config(256, True),
        _config(128, False),
        _config(128, True),
        _config(64, False),
    ]
    DEFAULT_CONFIG_NAME = "native"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Put ONE of these layouts in the manual dir (pass it with --manual_dir):
      * the RxRx1 release (https://www.rxrx.ai/rxrx1): unzip rxrx1-metadata.zip and rxrx1-images.zip so
        that the dir holds metadata.csv and images/{experiment}/Plate{p}/{well}_s{site}_w{c}.png;
      * the Kaggle "Recursion Cellular Image Classification" files: train.csv, test.csv,
        train_controls.csv, test_controls.csv (pixel_stats.csv optional) and the folders train/ and test/.
    Without a manual dir the builder downloads the release from storage.googleapis.com/rxrx/rxrx1.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        # Dynamic shape: the native size is the source's, and sources smaller than a config's size are
        # stored unchanged (never upsampled).
        shape = (None, None, constants.NUM_CHANNELS)
        encoding = (
            tfds.features.Encoding.ZLIB if config.compressed else tfds.features.Encoding.BYTES
        )
        statistic = dict(shape=(constants.NUM_CHANNELS,), dtype=np.float32)
        features = {
            "image": tfds.features.Tensor(
                shape=shape, dtype=np.uint8, encoding=encoding, doc="channels w1..w6"
            ),
            "id_code": tfds.features.Text(doc="{experiment}_{plate}_{well}"),
            "site": tfds.features.Scalar(dtype=np.int32, doc="1 or 2"),
            "experiment": tfds.features.Text(),
            "plate": tfds.features.Scalar(dtype=np.int32, doc="1..4"),
            "well": tfds.features.Text(),
            "cell_type": tfds.features.Text(doc=", ".join(constants.CELL_TYPES)),
            "well_type": tfds.features.Text(doc=", ".join(constants.WELL_TYPES)),
            "sirna": tfds.features.Scalar(
                dtype=np.int32, doc="0-1107 treatments, 1108-1138 controls, -1 unknown"
            ),
        }
        for group in STATISTIC_GROUPS:
            for moment in ("mean", "std"):
                features[f"{group}_{moment}"] = tfds.features.Tensor(
                    **statistic, doc=f"pooled population {moment} per channel of the {group}"
                )
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            homepage="https://www.rxrx.ai/rxrx1",
        )

    def _download_and_prepare(self, dl_manager, download_config):
        # _split_generators needs to know whether a manual dir was named and whether Beam runs.
        self._manual_dir_given = download_config.manual_dir is not None
        self._use_beam = bool(download_config.beam_runner or download_config.beam_options)
        return super()._download_and_prepare(dl_manager, download_config)

    def _source_root(self, dl_manager) -> epath.Path:
        try:
            return find_source_root(epath.Path(dl_manager.manual_dir))
        except AssertionError as error:  # missing or empty manual dir
            if getattr(self, "_manual_dir_given", True):
                raise SourceError(
                    f"the manual dir is missing or empty ({error}). {self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
                ) from error
        # No manual dir named: fetch the release (~46 GB). Not exercised by the tests (no network).
        extracted = dl_manager.download_and_extract(RELEASE_URLS)
        root = find_source_root(epath.Path(extracted["metadata"]))
        images = find_source_root(epath.Path(extracted["images"]))
        if not (root / "images").exists():
            root = images if (images / "images").exists() else root
        return root

    def _split_generators(self, dl_manager):
        root = self._source_root(dl_manager)
        layout, sites = read_source(root)
        first = decode_png(sites[0].paths[0])
        target = self.builder_config.image_size
        if target is not None and max(first.shape) <= target:
            target = None  # never upsample: a source at or below the config size is stored as it is
        if target is not None and first.shape[0] != first.shape[1]:
            raise SourceError(
                f"config {self.builder_config.name} area-averages square images to {target}x{target}, but "
                f"the source ({sites[0].paths[0]}) is {first.shape[0]}x{first.shape[1]}. Use the native "
                "config for non-square images."
            )
        settings = _Settings(
            source_shape=first.shape, reference_path=sites[0].paths[0], target_size=target
        )
        logging.info(
            "rxrx1: %s layout at %s: %d sites of %s", layout, root, len(sites), first.shape
        )
        by_split = {split: [site for site in sites if site.split == split] for split in SPLITS}
        by_split = {split: members for split, members in by_split.items() if members}
        if getattr(self, "_use_beam", False):
            return {
                split: _beam_split(members, sites, settings) for split, members in by_split.items()
            }
        known = None
        pixel_stats = root / "pixel_stats.csv"
        if target is None and pixel_stats.exists():
            known = _read_pixel_stats(pixel_stats, first.shape[0] * first.shape[1])
        statistics = compute_statistics(sites, settings, known)
        return {
            split: self._generate_examples(members, settings, statistics)
            for split, members in by_split.items()
        }

    def _generate_examples(self, sites, settings, statistics):
        for site in sites:
            yield site.site_id, make_example(site, settings, statistics)
