"""Synthetic RxRx1-like data on the real plate design, written in the on-disk layouts RxRx1 ships in.

Tests, the embedded default run and the benchmarks need data that behaves like RxRx1 without its 46 GB:
the same experiment / plate / well / site hierarchy, the same siRNA-group rotation over plates, the same
control wells, and technical noise (cell-type look, experiment and plate channel gains and offsets) that
swamps a weaker per-siRNA phenotype, so that plate normalization reveals the classes best.

The phenotype has two parts so that image models have something to learn beyond channel means:
a small per-channel intensity change and a mean-neutral morphology (cell size, elongation and count
per siRNA; the cell brightness is compensated so the channel mean does not move).

Example:
    python -m deepnoise_tf.synthetic --output /tmp/rxrx1_synthetic --layout release --preset quickstart
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import time

import numpy as np
import pandas as pd
from PIL import Image

from deepnoise_tf import constants

LAYOUTS = ("release", "kaggle")

# Canonical positive-control slots of a real RxRx1 plate: rows C, F, H, J, M x columns 03, 07, 11, 15, 19, 22.
CANONICAL_POSITIVE_CONTROL_WELLS = tuple(
    f"{row}{column:02d}" for row in "CFHJM" for column in (3, 7, 11, 15, 19, 22)
)
NEGATIVE_CONTROL_WELL = "B02"
MAX_POSITIVE_CONTROLS = constants.NEGATIVE_CONTROL - constants.FIRST_CONTROL  # 30

# Every parameter the generator understands, with its default. Presets override a few; unknown names fail.
DEFAULT_PARAMETERS = {
    # Design.
    "cell_types": constants.CELL_TYPES,
    "train_experiments": 1,  # per cell type
    "test_experiments": 1,  # per cell type
    "sirnas_per_group": 4,  # 277 on the real plates
    "positive_controls": 4,  # 30 on the real plates
    "sites": constants.SITES_PER_WELL,
    "image_size": 32,
    # Cells (sizes are fractions of the image side so every resolution looks alike).
    "cells_per_site": 24.0,
    "cell_sigma": 0.035,
    # Phenotype of each siRNA (log-scale standard deviations).
    "intensity_effect": 0.10,
    "size_effect": 0.22,
    "elongation_effect": 0.35,
    "count_effect": 0.25,
    # Biological variation of single cells.
    "cell_brightness_noise": 0.25,
    "cell_size_noise": 0.12,
    # Technical noise: channel gains are log-normal, offsets in grey levels.
    "cell_type_gain": 0.25,
    "cell_type_offset": 8.0,
    "experiment_gain": 0.30,
    "experiment_offset": 5.0,
    "plate_gain": 0.10,
    "plate_offset": 1.5,
    "well_gain": 0.03,
    "pixel_noise": 1.5,
    "background": 20.0,
    "signal_scale": 40.0,
    # PNG zlib level: 1 writes fast; files are a bit larger.
    "png_compress_level": 1,
}

# The ablations' plates, splits and image size: 64 siRNAs, 12 training and 4 validation experiments.
_ABLATION_DESIGN = {
    "cell_types": constants.CELL_TYPES,
    "train_experiments": 4,
    "test_experiments": 2,
    "sirnas_per_group": 16,
    "positive_controls": 8,
    "image_size": 64,
}

PRESETS = {
    # Unit tests: two cell types, one train and one test experiment each, 16-pixel images.
    "tiny": {
        "cell_types": ("HEPG2", "HUVEC"),
        "train_experiments": 1,
        "test_experiments": 1,
        "sirnas_per_group": 4,
        "positive_controls": 2,
        "image_size": 16,
        "cells_per_site": 8.0,
        "cell_sigma": 0.06,
    },
    # The embedded default: all four cell types, a few experiments, 64-pixel images (seconds to write).
    "quickstart": {
        "cell_types": constants.CELL_TYPES,
        "train_experiments": 3,
        "test_experiments": 1,
        "sirnas_per_group": 8,
        "positive_controls": 4,
        "image_size": 64,
    },
    # Ablations of the normalization and the training tricks: more classes and experiments.
    "ablation": dict(_ABLATION_DESIGN),
    # The `ablation` design with a phenotype that is mostly cell shape, as on RxRx1. Elongation keeps a
    # channel's mean and std (tests/test_synthetic.py), so a linear model on those moments sees only
    # the weak intensity change (3 %, against 6 % well-to-well gain noise); plate effects are larger
    # than the defaults so that normalization still matters to a CNN reading shapes
    # (docs/ablation.md, "A phenotype of shape": design runs A-K).
    "ablation_morphology": {
        **_ABLATION_DESIGN,
        "cells_per_site": 16.0,
        "cell_sigma": 0.05,
        "intensity_effect": 0.03,
        "size_effect": 0.0,
        "elongation_effect": 1.5,
        "count_effect": 0.0,
        "experiment_gain": 0.25,
        "plate_gain": 0.35,
        "plate_offset": 6.0,
        "well_gain": 0.06,
        "signal_scale": 25.0,
    },
    # One experiment of 512-pixel images with real-size cells (build benchmarks).
    "benchmark": {
        "cell_types": ("HUVEC",),
        "train_experiments": 1,
        "test_experiments": 0,
        "sirnas_per_group": 16,
        "positive_controls": 4,
        "image_size": constants.IMAGE_SIZE,
    },
}


def well_names() -> tuple[str, ...]:
    """The 308 usable wells of a RxRx1 plate in grid order: B02, B03, ..., B23, C02, ..., O23."""
    return tuple(
        f"{row}{column:02d}" for row in constants.WELL_ROWS for column in constants.WELL_COLUMNS
    )


def resolve_parameters(preset: str | None = None, **overrides) -> dict:
    """Defaults, then the preset, then the overrides; unknown names and impossible designs fail loudly."""
    parameters = dict(DEFAULT_PARAMETERS)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        parameters.update(PRESETS[preset])
    unknown = sorted(set(overrides) - set(DEFAULT_PARAMETERS))
    if unknown:
        raise ValueError(f"unknown parameters {unknown}; known: {sorted(DEFAULT_PARAMETERS)}")
    parameters.update(overrides)
    parameters["cell_types"] = tuple(parameters["cell_types"])
    bad_cell_types = [name for name in parameters["cell_types"] if name not in constants.CELL_TYPES]
    if bad_cell_types or not parameters["cell_types"]:
        raise ValueError(f"cell_types must be a non-empty subset of {constants.CELL_TYPES}")
    per_group = parameters["sirnas_per_group"]
    if not 1 <= per_group <= constants.SIRNAS_PER_PLATE:
        raise ValueError(
            f"sirnas_per_group must be in 1..{constants.SIRNAS_PER_PLATE}, got {per_group}"
        )
    if not 0 <= parameters["positive_controls"] <= MAX_POSITIVE_CONTROLS:
        raise ValueError(f"positive_controls must be in 0..{MAX_POSITIVE_CONTROLS}")
    if parameters["sites"] < 1 or parameters["image_size"] < 8:
        raise ValueError("need at least one site and images of at least 8 pixels")
    if parameters["train_experiments"] + parameters["test_experiments"] < 1:
        raise ValueError("need at least one experiment per cell type")
    return parameters


def sirna_group(sirna: np.ndarray | int) -> np.ndarray | int:
    """The siRNA group of a synthetic treatment id (the real groups are a table; ours are id mod 4)."""
    return np.mod(sirna, constants.NUM_PLATE_GROUPS)


def sirna_name(sirna: int) -> str:
    """A plausible, stable siRNA name for the release metadata: `EMPTY` for the negative control."""
    if sirna == constants.NEGATIVE_CONTROL:
        return "EMPTY"
    return f"s{10007 + 7919 * sirna % 989993:06d}"


def plate_layout(parameters: dict, rng: np.random.Generator, group: int) -> pd.DataFrame:
    """One plate's wells: the negative control at B02, positive controls, the group's siRNAs shuffled."""
    per_group = parameters["sirnas_per_group"]
    positive = parameters["positive_controls"]
    wells = list(well_names()[: 1 + positive + per_group])
    free = [well for well in wells if well != NEGATIVE_CONTROL_WELL]
    canonical = list(CANONICAL_POSITIVE_CONTROL_WELLS[:positive])
    # The real slots when the plate reaches them, else the first free wells.
    positive_wells = canonical if set(canonical) <= set(free) else free[:positive]
    treatment_wells = [well for well in free if well not in positive_wells]
    treatments = np.arange(constants.NUM_PLATE_GROUPS * per_group)
    treatments = treatments[sirna_group(treatments) == group]
    rows = [(NEGATIVE_CONTROL_WELL, constants.NEGATIVE_CONTROL, "negative_control")]
    positive_ids = constants.FIRST_CONTROL + rng.permutation(positive)
    rows += [
        (w, int(s), "positive_control") for w, s in zip(positive_wells, positive_ids, strict=True)
    ]
    rows += [
        (w, int(s), "treatment")
        for w, s in zip(treatment_wells, rng.permutation(treatments), strict=True)
    ]
    layout = pd.DataFrame(rows, columns=["well", "sirna", "well_type"])
    order = {well: index for index, well in enumerate(wells)}
    return layout.sort_values("well", key=lambda column: column.map(order)).reset_index(drop=True)


def design(parameters: dict, seed: int = 0) -> pd.DataFrame:
    """The per-site ground truth of the whole data set (both splits, real labels)."""
    frames = []
    for cell_index, cell_type in enumerate(parameters["cell_types"]):
        count = parameters["train_experiments"] + parameters["test_experiments"]
        for number in range(1, count + 1):
            experiment = f"{cell_type}-{number:02d}"
            rng = np.random.default_rng([seed, 1, cell_index, number])
            first_group = int(rng.integers(constants.NUM_PLATE_GROUPS))
            for plate in range(1, constants.PLATES_PER_EXPERIMENT + 1):
                group = (first_group + plate - 1) % constants.NUM_PLATE_GROUPS
                layout = plate_layout(parameters, rng, group)
                layout["experiment"] = experiment
                layout["cell_type"] = cell_type
                layout["plate"] = plate
                layout["plate_group"] = group
                layout["dataset"] = "train" if number <= parameters["train_experiments"] else "test"
                frames.append(layout)
    wells = pd.concat(frames, ignore_index=True)
    wells["id_code"] = wells["experiment"] + "_" + wells["plate"].astype(str) + "_" + wells["well"]
    sites = wells.loc[wells.index.repeat(parameters["sites"])].reset_index(drop=True)
    sites["site"] = np.tile(np.arange(1, parameters["sites"] + 1), len(wells))
    sites["site_id"] = sites["id_code"] + "_" + sites["site"].astype(str)
    sites["sirna_name"] = [sirna_name(s) for s in sites["sirna"]]
    columns = [
        "site_id",
        "id_code",
        "cell_type",
        "dataset",
        "experiment",
        "plate",
        "well",
        "site",
        "well_type",
        "sirna",
        "sirna_name",
        "plate_group",
    ]
    return sites[columns]


@dataclasses.dataclass(frozen=True)
class _Phenotypes:
    """Per-class phenotype table, identical in every experiment and cell type."""

    intensity: np.ndarray  # (classes, 6) multiplicative brightness
    size: np.ndarray  # (classes, 6) cell size factor
    elongation: np.ndarray  # (classes, 6) >= 1, aspect ratio of the cells in that channel
    count: np.ndarray  # (classes,) cell density factor


def _phenotypes(parameters: dict, seed: int) -> _Phenotypes:
    rng = np.random.default_rng([seed, 2])
    shape = (constants.NUM_CLASSES, constants.NUM_CHANNELS)
    phenotypes = _Phenotypes(
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


def _render_sites(
    sirnas: np.ndarray,
    gains: np.ndarray,
    offsets: np.ndarray,
    look: dict,
    phenotypes: _Phenotypes,
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
            images = _render_sites(
                sites["sirna"].to_numpy()[part],
                gains[part],
                offsets[part],
                looks[cell_type],
                phenotypes,
                parameters,
                rng,
            )
            yield part, images


def image_relative_path(
    layout: str, dataset: str, experiment: str, plate: int, well: str, site: int, channel: int
) -> str:
    """Where one channel PNG lives under the root in the given layout."""
    top = "images" if layout == "release" else dataset
    return f"{top}/{experiment}/Plate{plate}/{well}_s{site}_w{channel}.png"


def _write_metadata(root: pathlib.Path, sites: pd.DataFrame, layout: str) -> None:
    if layout == "release":
        metadata = sites.rename(columns={"id_code": "well_id", "sirna": "sirna_id"})
        metadata["sirna"] = sites["sirna_name"]
        columns = [
            "site_id",
            "well_id",
            "cell_type",
            "dataset",
            "experiment",
            "plate",
            "well",
            "site",
        ]
        metadata[columns + ["well_type", "sirna", "sirna_id"]].to_csv(
            root / "metadata.csv", index=False
        )
        return
    wells = sites.drop_duplicates("id_code")
    for dataset in ("train", "test"):
        part = wells[wells["dataset"] == dataset]
        treatments = part[part["well_type"] == "treatment"]
        columns = ["id_code", "experiment", "plate", "well"]
        if dataset == "train":
            treatments[columns + ["sirna"]].to_csv(root / "train.csv", index=False)
        else:
            treatments[columns].to_csv(root / "test.csv", index=False)
        controls = part[part["well_type"] != "treatment"]
        controls[columns + ["sirna", "well_type"]].to_csv(
            root / f"{dataset}_controls.csv", index=False
        )


def write_dataset(
    root,
    *,
    layout: str = "release",
    preset: str | None = None,
    seed: int = 0,
    pixel_stats: bool = False,
    **overrides,
) -> pd.DataFrame:
    """Writes a synthetic RxRx1 under `root` and returns its per-site ground truth.

    Args:
      root: output folder (created; existing files of the same names are overwritten).
      layout: "release" (images/ + metadata.csv with real test labels) or "kaggle" (train/ test/ and
        the four competition CSVs; test treatments unlabelled).
      preset: a name in PRESETS, or None for the defaults.
      seed: everything is a deterministic function of the parameters and the seed.
      pixel_stats: also write the Kaggle-style `pixel_stats.csv` (per image and channel).
      **overrides: any name of DEFAULT_PARAMETERS.

    Returns:
      One row per site: site_id, id_code, cell_type, dataset, experiment, plate, well, site, well_type,
      sirna (int, test labels included), sirna_name, plate_group.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    parameters = resolve_parameters(preset, **overrides)
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    sites = design(parameters, seed)
    for directory in {
        image_relative_path(layout, d, e, p, "X", 1, 1).rsplit("/", 1)[0]
        for d, e, p in sites[["dataset", "experiment", "plate"]]
        .drop_duplicates()
        .itertuples(index=False)
    }:
        (root / directory).mkdir(parents=True, exist_ok=True)
    stats_rows = []
    columns = sites[["dataset", "experiment", "plate", "well", "site", "id_code"]].to_numpy()
    for rows, images in generate_images(parameters, sites, seed):
        for row, image in zip(rows, images, strict=True):
            dataset, experiment, plate, well, site, id_code = columns[row]
            for channel in range(constants.NUM_CHANNELS):
                path = image_relative_path(
                    layout, dataset, experiment, plate, well, site, channel + 1
                )
                Image.fromarray(image[channel]).save(
                    root / path, compress_level=parameters["png_compress_level"]
                )
                if pixel_stats:
                    pixels = image[channel].astype(np.float64)
                    stats_rows.append(
                        (id_code, experiment, plate, well, site, channel + 1, pixels.mean(),
                         pixels.std(), np.median(pixels), pixels.min(), pixels.max())
                    )  # fmt: skip
    _write_metadata(root, sites, layout)
    if pixel_stats:
        frame = pd.DataFrame(
            stats_rows,
            columns=["id_code", "experiment", "plate", "well", "site", "channel", "mean", "std",
                     "median", "min", "max"],
        )  # fmt: skip
        frame.to_csv(root / "pixel_stats.csv", index=False, float_format="%.17g")
    return sites


def _source_record(preset: str, layout: str, seed: int) -> dict:
    return {
        "preset": preset,
        "layout": layout,
        "seed": seed,
        "parameters": resolve_parameters(preset),
    }


def prepare_tfds(
    data_dir,
    *,
    preset: str = "quickstart",
    builder_config: str = "native",
    layout: str = "release",
    seed: int = 0,
) -> str:
    """Makes the synthetic data set loadable with `tfds.load(name, data_dir=data_dir)`; returns name.

    Idempotent: PNGs are written once under `data_dir/manual/<preset>`, and the TFDS build runs only when
    no complete version exists. A data_dir holds one synthetic source: asking for another preset, layout
    or seed in the same folder fails instead of silently returning the old one.
    """
    import tensorflow_datasets as tfds

    import tfds_rxrx1  # noqa: F401  (registers the rxrx1 builder)

    data_dir = pathlib.Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    record = json.loads(json.dumps(_source_record(preset, layout, seed)))
    record_path = data_dir / "synthetic_source.json"
    if record_path.exists():
        existing = json.loads(record_path.read_text())
        if existing != record:
            raise ValueError(
                f"{data_dir} already holds synthetic RxRx1 made with {existing}; it cannot also hold "
                f"{record}. Use another data_dir (or delete this one)."
            )
    manual_dir = data_dir / "manual" / preset
    if not manual_dir.exists():
        staging = manual_dir.with_name(manual_dir.name + ".incomplete")
        shutil.rmtree(staging, ignore_errors=True)
        write_dataset(staging, layout=layout, preset=preset, seed=seed)
        staging.rename(manual_dir)
    if not record_path.exists():
        # Atomic: processes sharing the data_dir (parallel ablation steps) never read a half file.
        staging_record = record_path.with_name(f"{record_path.name}.{os.getpid()}")
        staging_record.write_text(json.dumps(record, indent=1))
        staging_record.replace(record_path)
    name = f"rxrx1/{builder_config}"
    builder = tfds.builder(name, data_dir=str(data_dir))
    if not builder.is_prepared():
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=str(manual_dir), try_download_gcs=False
            )
        )
    return name


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="folder to write the data set into")
    parser.add_argument("--layout", choices=LAYOUTS, default="release")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quickstart")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pixel-stats", action="store_true", help="also write pixel_stats.csv")
    arguments = parser.parse_args(argv)
    start = time.perf_counter()
    sites = write_dataset(
        arguments.output,
        layout=arguments.layout,
        preset=arguments.preset,
        seed=arguments.seed,
        pixel_stats=arguments.pixel_stats,
    )
    size = resolve_parameters(arguments.preset)["image_size"]
    print(
        f"wrote {len(sites)} sites ({sites['experiment'].nunique()} experiments, "
        f"{sites['sirna'].nunique()} classes, {size}x{size}x{constants.NUM_CHANNELS}) in the "
        f"{arguments.layout} layout to {arguments.output} in {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
