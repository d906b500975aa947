"""Synthetic RxRx1-like data on the real plate design, written in the on-disk layouts RxRx1 ships in.

Tests, the embedded default run and the benchmarks need data that behaves like RxRx1 without its 46 GB:
the same experiment / plate / well / site hierarchy, the same siRNA-group rotation over plates, the same
control wells, and technical noise (cell-type look, experiment and plate channel gains and offsets) that
swamps a weaker per-siRNA phenotype, so that plate normalization reveals the classes best.

The phenotype has two parts so that image models have something to learn beyond channel means:
a small per-channel intensity change and a mean-neutral morphology (cell size, elongation and count
per siRNA; the cell brightness is compensated so the channel mean does not move).

This module writes the files and makes the TFDS build; the parameters, presets and plate design are in
`synthetic_design`, the rendering of the pixels in `synthetic_images` (their public names are
importable from here too).

Example:
    python -m deepnoise_tf.synthetic --output /tmp/rxrx1_synthetic --layout release --preset quickstart
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import time

import numpy as np
import pandas as pd
from PIL import Image

from deepnoise_tf import constants
from deepnoise_tf.synthetic_design import (
    CANONICAL_POSITIVE_CONTROL_WELLS,
    DEFAULT_PARAMETERS,
    EFFECT_PARAMETERS,
    MAX_POSITIVE_CONTROLS,
    NEGATIVE_CONTROL_WELL,
    PRESETS,
    design,
    plate_layout,
    preset_names,
    preset_seed,
    resolve_parameters,
    sirna_group,
    sirna_name,
    well_names,
)
from deepnoise_tf.synthetic_images import generate_images
from tfds_rxrx1.rxrx1 import source

# The design and the images live in their own modules; these names stay importable from here.
__all__ = [
    "CANONICAL_POSITIVE_CONTROL_WELLS",
    "DEFAULT_PARAMETERS",
    "LAYOUTS",
    "MAX_POSITIVE_CONTROLS",
    "NEGATIVE_CONTROL_WELL",
    "PRESETS",
    "design",
    "generate_images",
    "image_relative_path",
    "main",
    "plate_layout",
    "prepare_tfds",
    "preset_names",
    "preset_seed",
    "resolve_parameters",
    "sirna_group",
    "sirna_name",
    "well_names",
    "write_dataset",
]

LAYOUTS = ("release", "kaggle")


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
        metadata[list(source.RELEASE_COLUMNS)].to_csv(root / "metadata.csv", index=False)
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
    seed: int | None = None,
    pixel_stats: bool = False,
    plate_group_order=None,
    **overrides,
) -> pd.DataFrame:
    """Writes a synthetic RxRx1 under `root` and returns its per-site ground truth.

    Args:
      root: output folder (created; existing files of the same names are overwritten).
      layout: "release" (images/ + metadata.csv with real test labels) or "kaggle" (train/ test/ and
        the four competition CSVs; test treatments unlabelled).
      preset: a name of `preset_names()` (PRESETS or the seeded family), or None for the defaults.
      seed: everything is a deterministic function of the parameters and the seed; None = the
        preset's own (`synthetic_design.preset_seed`: a family design's seed, else 0).
      pixel_stats: also write the Kaggle-style `pixel_stats.csv` (per image and channel).
      plate_group_order: the order the siRNA groups follow over the plates (`design`); default the
        RxRx1 order.
      **overrides: any name of DEFAULT_PARAMETERS.

    Returns:
      One row per site: site_id, id_code, cell_type, dataset, experiment, plate, well, site, well_type,
      sirna (int, test labels included), sirna_name, plate_group.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    parameters = resolve_parameters(preset, **overrides)
    seed = preset_seed(preset) if seed is None else seed
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    sites = design(parameters, seed, plate_group_order)
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
    # Parameters added later are left out at their defaults, so folders written before still match.
    parameters = {
        name: value
        for name, value in resolve_parameters(preset).items()
        if name not in EFFECT_PARAMETERS or value != DEFAULT_PARAMETERS[name]
    }
    return {"preset": preset, "layout": layout, "seed": seed, "parameters": parameters}


def prepare_tfds(
    data_dir,
    *,
    preset: str = "quickstart",
    builder_config: str = "native",
    layout: str = "release",
    seed: int | None = None,
) -> str:
    """Makes the synthetic data set loadable with `tfds.load(name, data_dir=data_dir)`; returns name.

    Idempotent: PNGs are written once under `data_dir/manual/<preset>`, and the TFDS build runs only when
    no complete version exists. A data_dir holds one synthetic source: asking for another preset, layout
    or seed in the same folder fails instead of silently returning the old one. `preset` is any name of
    `preset_names()`; `seed` None renders with the preset's own seed (a family design's, else 0).
    """
    import tensorflow_datasets as tfds

    import tfds_rxrx1  # noqa: F401  (registers the rxrx1 builder)

    seed = preset_seed(preset) if seed is None else seed
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
    parser.add_argument("--preset", choices=preset_names(), default="quickstart")
    parser.add_argument(
        "--seed", type=int, default=None, help="default: the preset's own (family seed, else 0)"
    )
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
