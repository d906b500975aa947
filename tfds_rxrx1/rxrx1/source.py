"""The RxRx1 source on disk: which layout it is, its metadata joined with its image files, validated.

Two layouts are read: the RxRx1 release (metadata.csv + images/) and the Kaggle competition files
(train.csv, test.csv, *_controls.csv + train/ and test/). Every problem is a SourceError naming the file
or row and the fix.
"""

from __future__ import annotations

import collections
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
_IMAGE_NAME_ANY_CASE = re.compile(_IMAGE_NAME.pattern, re.IGNORECASE)
_PLATE_FOLDER_ANY_CASE = re.compile(_PLATE_FOLDER.pattern, re.IGNORECASE)
# A whole missing plate is thousands of files: list this many problems, count the rest.
MAX_LISTED_PROBLEMS = 200


class SourceError(ValueError):
    """The manual dir does not hold a usable RxRx1; the message names the file or row and the fix."""


def raise_problems(problems: list[str], what: str) -> None:
    """One SourceError listing every problem found, so that one run reports them all (not one per run)."""
    if not problems:
        return
    if len(problems) == 1:
        raise SourceError(problems[0])
    listed = problems[:MAX_LISTED_PROBLEMS]
    more = len(problems) - len(listed)
    tail = f"\n  ... and {more} more of the same kinds" if more else ""
    raise SourceError(f"{len(problems)} problems {what}:\n  " + "\n  ".join(listed) + tail)


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

    def identifiers(self) -> dict:
        """The fields that name the site in every example made of it (TFDS features, raw reads)."""
        return {
            "id_code": self.id_code,
            "site": self.site,
            "experiment": self.experiment,
            "plate": self.plate,
            "well": self.well,
            "cell_type": self.cell_type,
            "well_type": self.well_type,
        }

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
    problems = []
    for column in required:
        # "HUVEC-01 " would name a folder that does not exist and read as "missing images".
        padded = table[column] != table[column].str.strip()
        problems += [
            f"{row}: {column}={value!r} has leading or trailing whitespace; remove it (ids and "
            "folder names must match exactly)."
            for row, value in zip(table.loc[padded, "row"], table.loc[padded, column], strict=True)
        ]
    raise_problems(problems, f"in {path}")
    return table


def as_int(table: pd.DataFrame, column: str, low: int, high: int) -> np.ndarray:
    """The column as int64, or a SourceError naming the first row that is not an integer in low..high."""
    values = pd.to_numeric(table[column], errors="coerce")
    bad = values.isna() | (values < low) | (values > high) | (values != values.round())
    raise_problems(
        [
            f"{table['row'].iat[index]}: {column}={table[column].iat[index]!r} is not an integer in "
            f"{low}..{high}; fix or remove this row."
            for index in np.flatnonzero(bad.to_numpy())
        ],
        f"in the column {column}",
    )
    return values.astype(np.int64).to_numpy()


def _check_choice(table: pd.DataFrame, column: str, choices: tuple[str, ...]) -> None:
    bad = ~table[column].isin(choices)
    raise_problems(
        [
            f"{table['row'].iat[index]}: {column}={table[column].iat[index]!r} is not one of "
            f"{choices}; fix or remove this row (this builder knows the RxRx1 cell types and well "
            "types only)."
            for index in np.flatnonzero(bad.to_numpy())
        ],
        f"in the column {column}",
    )


def check_id_codes(table: pd.DataFrame, column: str, expected: pd.Series) -> None:
    """Ids must agree with the columns they are made of: the example keys and the images follow them."""
    bad = (table[column] != expected).to_numpy()
    raise_problems(
        [
            f"{table['row'].iat[index]}: {column} is {table[column].iat[index]!r} but the "
            f"experiment/plate/well/site columns make {expected.iat[index]!r}; fix this row."
            for index in np.flatnonzero(bad)
        ],
        f"in the column {column}",
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
    problems = []
    for index, (well_type, label) in enumerate(zip(table["well_type"], sirna, strict=True)):
        low, high = ranges[well_type]
        if not low <= label <= high:
            problems.append(
                f"{table['row'].iat[index]}: sirna {label} is not a valid {well_type} label "
                f"({low}..{high}); fix or remove this row."
            )
    raise_problems(problems, "in the labels")


def _name_problem(path: epath.Path) -> str:
    """Why a PNG under a plate folder is not read, with the rename that fixes a case mismatch."""
    plate_match = _PLATE_FOLDER_ANY_CASE.match(path.parent.name)
    name_match = _IMAGE_NAME_ANY_CASE.match(path.name)
    if plate_match and name_match:
        # File names are case-sensitive: an upper-case .PNG would otherwise read as a missing file.
        wanted = (
            f"Plate{plate_match['plate']}/{name_match['well'].upper()}_s{name_match['site']}"
            f"_w{name_match['channel']}.png"
        )
        return (
            f"{path} differs in upper/lower case from the expected name {wanted} (names are "
            "case-sensitive); rename it."
        )
    return (
        f"{path} does not follow {{experiment}}/Plate{{p}}/{{well}}_s{{site}}_w{{channel}}.png; "
        "rename or remove it."
    )


def _list_images(top: epath.Path) -> tuple[dict[tuple[str, int, str, int], set[int]], list[str]]:
    """{(experiment, plate, well, site): channels} of every PNG under top/{experiment}/Plate{p}/, and
    the problems with names that do not fit (listed, not dropped: they would read as missing files)."""
    found: dict[tuple[str, int, str, int], set[int]] = {}
    problems = []
    if not top.exists():
        return found, problems
    for path in top.glob("*/*/*"):
        if not path.name.lower().endswith(".png"):
            continue  # .DS_Store, Thumbs.db and the like
        plate_match = _PLATE_FOLDER.match(path.parent.name)
        name_match = _IMAGE_NAME.match(path.name)
        if not plate_match or not name_match:
            problems.append(_name_problem(path))
            continue
        key = (
            path.parent.parent.name,
            int(plate_match["plate"]),
            name_match["well"],
            int(name_match["site"]),
        )
        found.setdefault(key, set()).add(int(name_match["channel"]))
    return found, sorted(problems)


def _image_path(
    top: epath.Path, experiment: str, plate: int, well: str, site: int, channel: int
) -> epath.Path:
    return top / experiment / f"Plate{plate}" / f"{well}_s{site}_w{channel}.png"


def _usual_site_numbers(listings: dict) -> list[int]:
    """The site numbers most wells hold on disk (RxRx1: 1, 2), for the Kaggle layout's per-well rows.

    A number only a few wells hold (a stray _s3_ file) is then reported as unexpected, instead of every
    healthy well being blamed for lacking it.
    """
    wells_per_number = collections.Counter(
        key[3] for listing in listings.values() for key in listing
    )
    if not wells_per_number:
        return [1]
    most = max(wells_per_number.values())
    return sorted(number for number, wells in wells_per_number.items() if 2 * wells >= most)


def _site(record, number: int, top: epath.Path) -> Site:
    key = (record.experiment, int(record.plate), record.well, int(number))
    return Site(
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
            str(_image_path(top, *key, channel)) for channel in range(1, facts.NUM_CHANNELS + 1)
        ),
        row=record.row,
    )


def _make_sites(wells: pd.DataFrame, tops: dict[str, epath.Path], per_site: bool) -> list[Site]:
    """Joins the metadata rows with the image files; every row needs all channels, every file a row.

    tops maps each split to its image folder (the release keeps both splits in one folder). Every
    problem is collected and reported in one error, so that one run lists them all.
    """
    listings, problems = {}, []
    for top in sorted(set(tops.values()), key=str):
        listings[str(top)], name_problems = _list_images(top)
        problems += name_problems
    channels = set(range(1, facts.NUM_CHANNELS + 1))
    usual = None if per_site else _usual_site_numbers(listings)
    sites = []
    claimed = {name: set() for name in listings}
    for record in wells.itertuples(index=False):
        top = tops[record.split]
        listing = listings[str(top)]
        numbers = [record.site] if per_site else usual
        well_key = (record.experiment, record.plate, record.well)
        if not any(well_key + (number,) in listing for number in numbers):
            problems.append(
                f"{record.row}: metadata row {record.id_code} has no images (expected e.g. "
                f"{_image_path(top, *well_key, numbers[0], 1)}); restore the images or remove the row."
            )
            continue
        for number in numbers:
            key = well_key + (number,)
            problems += [
                f"{_image_path(top, *key, channel)} is missing ({record.row} names this site); "
                "restore the file or remove the row."
                for channel in sorted(channels - listing.get(key, set()))
            ]
            claimed[str(top)].add(key)
            sites.append(_site(record, number, top))
    for name, listing in listings.items():
        for key in sorted(set(listing) - claimed[name]):
            path = _image_path(epath.Path(name), *key, min(listing[key]))
            if usual is not None and key[3] not in usual:
                problems.append(
                    f"{path} has the unexpected site number s{key[3]} (the wells hold sites "
                    f"{usual}); remove or rename the files of this site."
                )
            else:
                problems.append(f"{path} has no metadata row; add the row or remove the images.")
    raise_problems(problems, "joining the metadata with the image files")
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
    check_id_codes(table, "well_id", expected)
    check_id_codes(table, "site_id", expected_site)
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
    # A disagreeing id_code would be stored as is: the images follow the columns, the keys the id.
    check_id_codes(
        table,
        "id_code",
        table["experiment"] + "_" + table["plate"].astype(str) + "_" + table["well"],
    )
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
    if directory.exists() and not directory.is_dir():
        raise SourceError(
            f"the manual dir {directory} is a file, not a folder; pass the folder that holds the "
            "RxRx1 files (metadata.csv + images/, or the Kaggle CSVs + train/ and test/), not an "
            "archive or a single file inside it."
        )
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
