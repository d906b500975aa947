"""The RxRx1 source on disk: which layout it is, its metadata joined with its image files, validated.

Two layouts are read: the RxRx1 release (metadata.csv + images/) and the Kaggle competition files
(train.csv, test.csv, *_controls.csv + train/ and test/). Every problem is a SourceError naming the file
or row and the fix.
"""

from __future__ import annotations

import dataclasses
import io
import re

import numpy as np
import pandas as pd
from etils import epath

from tfds_rxrx1.rxrx1 import facts

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


def read_table(path: epath.Path, required: tuple[str, ...]) -> pd.DataFrame:
    """A metadata CSV as strings with the required columns, plus "row" ("file:line") for messages."""
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


def as_int(table: pd.DataFrame, column: str, low: int, high: int) -> np.ndarray:
    """The column as int64, or a SourceError naming the first row that is not an integer in low..high."""
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
        "treatment": (facts.UNKNOWN_LABEL, facts.NUM_SIRNAS - 1),
        "positive_control": (facts.FIRST_CONTROL, facts.NEGATIVE_CONTROL - 1),
        "negative_control": (facts.NEGATIVE_CONTROL, facts.NEGATIVE_CONTROL),
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
    channels = set(range(1, facts.NUM_CHANNELS + 1))
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
    table = read_table(root / "metadata.csv", RELEASE_COLUMNS)
    _check_unique(table, "site_id")
    _check_choice(table, "cell_type", facts.CELL_TYPES)
    _check_choice(table, "dataset", SPLITS)
    _check_choice(table, "well_type", facts.WELL_TYPES)
    table["plate"] = as_int(table, "plate", 1, facts.PLATES_PER_EXPERIMENT)
    table["site"] = as_int(table, "site", 1, 99)
    table["sirna"] = as_int(table, "sirna_id", 0, facts.NEGATIVE_CONTROL)
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
        table = read_table(root / name, required)
        table["split"] = split
        if not controls:
            table["well_type"] = "treatment"
            if split == "test":
                table["sirna"] = str(facts.UNKNOWN_LABEL)
        parts.append(table)
    table = pd.concat(parts, ignore_index=True)
    _check_unique(table, "id_code")
    table["cell_type"] = table["experiment"].str.split("-").str[0]
    _check_choice(table, "cell_type", facts.CELL_TYPES)
    _check_choice(table, "well_type", facts.WELL_TYPES)
    table["plate"] = as_int(table, "plate", 1, facts.PLATES_PER_EXPERIMENT)
    table["sirna"] = as_int(table, "sirna", facts.UNKNOWN_LABEL, facts.NEGATIVE_CONTROL)
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
