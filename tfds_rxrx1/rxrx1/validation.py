"""The check of every image file before anything is written, and a validate-only command line.

A bad file found while examples are written stops the build at that file, one file per (hours-long)
run. So the builder first checks every file of every site and reports all bad ones in one error. Per PNG
it checks, without inflating the pixels: that the file exists and opens as a PNG (signature and header),
its mode (8-bit greyscale) and size (the size most files have is the reference; every other file is
listed), and that every chunk is complete with a correct CRC (PIL's verify), which finds empty,
truncated and corrupted files. This reads each file once (46 GB on RxRx1, in parallel threads) but
decodes nothing; decoding 750k PNGs would cost as much as the statistics pass.

Left to the passes that decode: a constant (blank) channel and a compressed stream corrupt behind
correct CRCs. The statistics pass reports all of those in one error too, before any example is
written; with pixel_stats.csv (no statistics pass) they surface while examples are written.

Validate without building (add --decode for everything the build checks, at the cost of one decode):
    python -m tfds_rxrx1.rxrx1.validation --manual_dir DIR [--decode]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import sys

from absl import logging
from etils import epath
from PIL import Image

from tfds_rxrx1.rxrx1 import progress
from tfds_rxrx1.rxrx1.channel_statistics import (
    check_pixel_stats,
    compute_statistics,
    read_pixel_stats,
)
from tfds_rxrx1.rxrx1.pixels import DecodeSettings, format_problem
from tfds_rxrx1.rxrx1.source import Site, SourceError, find_source_root, raise_problems, read_source

READ_THREADS = 16  # file reads dominate and release the GIL; network disks want many in flight
_BATCH = 4096  # paths handed to the threads at a time: bounded memory for 750k files


def inspect_png(path: str) -> tuple[tuple[int, int] | None, str | None]:
    """((height, width), None) for a sound PNG header and chunk stream, else (None, the problem)."""
    try:
        with epath.Path(path).open("rb") as file, Image.open(file) as image:
            image_format, mode, (width, height) = image.format, image.mode, image.size
            image.verify()
    except FileNotFoundError:
        return None, f"{path} is missing; restore it or remove its site from the metadata."
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        return None, (
            f"{path} cannot be read ({error}): the PNG is empty, truncated or corrupt. "
            "Re-download or re-extract it."
        )
    problem = format_problem(path, image_format, mode)
    return (None, problem) if problem else ((height, width), None)


def _inspected(paths: list[str], pool: concurrent.futures.Executor):
    for start in range(0, len(paths), _BATCH):
        batch = paths[start : start + _BATCH]
        yield from zip(batch, pool.map(inspect_png, batch), strict=True)


def check_images(sites: list[Site], threads: int = READ_THREADS) -> tuple[tuple[int, int], str]:
    """(the source's image shape, a file of that shape), or one SourceError listing every bad file."""
    paths = [path for site in sites for path in site.paths]
    by_shape: dict[tuple[int, int], list[str]] = collections.defaultdict(list)
    problems = []
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        inspected = _inspected(paths, pool)
        for path, (shape, problem) in progress.logged(inspected, len(paths), "image check, files"):
            if problem:
                problems.append(problem)
            else:
                by_shape[shape].append(path)
    if not by_shape:
        raise_problems(problems, "in the image files (no file is readable)")
    # The majority is the reference: the first file read may well be the odd one.
    shape = max(by_shape, key=lambda key: len(by_shape[key]))
    reference, count = by_shape[shape][0], len(by_shape[shape])
    for odd_shape, odd_paths in sorted(by_shape.items()):
        if odd_shape != shape:
            problems += [
                f"{path} is {odd_shape[0]}x{odd_shape[1]} but {count} of {len(paths)} images are "
                f"{shape[0]}x{shape[1]} (e.g. {reference}): mixed image sizes. Resize or replace the "
                "odd file, or remove its site."
                for path in odd_paths
            ]
    raise_problems(problems, "in the image files")
    return shape, reference


def validate(directory: epath.Path, decode: bool = False) -> str:
    """Runs the build's checks on a manual dir without writing anything; returns a one-line summary."""
    if not directory.exists():
        raise SourceError(f"the manual dir {directory} does not exist.")
    root = find_source_root(directory)
    layout, sites = read_source(root)
    shape, reference = check_images(sites)
    checked = "metadata, file names, PNG headers and chunk CRCs, image sizes"
    if decode:
        settings = DecodeSettings(source_shape=shape, reference_path=reference, target_size=None)
        from_pixels = compute_statistics(sites, settings)
        checked += ", decoded pixels"
        pixel_stats = root / "pixel_stats.csv"
        if pixel_stats.exists():
            known = read_pixel_stats(pixel_stats, shape[0] * shape[1])
            from_file = compute_statistics(sites, settings, known)
            for key in sorted(key for key in from_pixels if key.startswith("plate/")):
                check_pixel_stats(pixel_stats, key, from_file[key], from_pixels[key])
            checked += ", pixel_stats.csv"
    return f"OK: {root} ({layout} layout), {len(sites)} sites of {shape[0]}x{shape[1]}; checked {checked}."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check an RxRx1 manual dir as `tfds build rxrx1` would, writing nothing."
    )
    parser.add_argument("--manual_dir", required=True, help="the folder passed to tfds build")
    parser.add_argument(
        "--decode",
        action="store_true",
        help="also decode every PNG (blank channels, pixel_stats.csv against the pixels); as slow as "
        "the build's statistics pass",
    )
    arguments = parser.parse_args(argv)
    logging.set_verbosity(logging.INFO)
    try:
        print(validate(epath.Path(arguments.manual_dir), decode=arguments.decode))
    except SourceError as error:
        print(f"rxrx1 validation failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
