"""Build throughput and peak memory of the rxrx1 builder as the data set grows (raw vs zlib records).

Writes synthetic RxRx1 (release layout, 512x512 by default) with 1, 2, 4, ... experiments, builds each
config in a fresh subprocess (so peak RSS is the build's own), reads the records back, prints a table and
a summary line, and appends a section to BENCHMARKS.md at the repository root.

Example (about 4 minutes on 2 cores):
    python benchmarks/build.py --experiments 1,2,4 --sirnas-per-group 8
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import _report


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def child(manual_dir: str, data_dir: str, config: str, shuffle_buffer_mib: str) -> None:
    """Builds one config and reports seconds, peak RSS, record bytes and read-back rate as JSON."""
    import tensorflow_datasets as tfds

    if int(shuffle_buffer_mib) > 0:
        # TFDS's writer shuffles in memory up to this size (1 GiB by default) before spilling to disk:
        # lowering it shows the builder's own memory, which does not grow with the data.
        from tensorflow_datasets.core import shuffle

        shuffle.MAX_MEM_BUFFER_SIZE = int(shuffle_buffer_mib) << 20

    import tfds_rxrx1  # noqa: F401

    rss_before = _peak_rss_mib()
    builder = tfds.builder(f"rxrx1/{config}", data_dir=data_dir)
    start = time.perf_counter()
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
    )
    build_seconds = time.perf_counter() - start
    rss_build = _peak_rss_mib()
    sites = sum(split.num_examples for split in builder.info.splits.values())
    record_bytes = sum(
        path.stat().st_size for path in pathlib.Path(builder.data_dir).glob("*.tfrecord*")
    )
    dataset = builder.as_dataset(split="train", shuffle_files=False).prefetch(8)
    start = time.perf_counter()
    read = sum(1 for _ in dataset)
    read_seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "sites": sites,
                "build_seconds": build_seconds,
                "rss_before_mib": rss_before,
                "rss_build_mib": rss_build,
                "record_bytes": record_bytes,
                "read_images_per_second": read / read_seconds,
            }
        )
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", default="1,2,4", help="comma-separated experiment counts")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--sirnas-per-group", type=int, default=8)
    parser.add_argument("--configs", default="native,native_zlib")
    _report.add_output_arguments(parser)
    parser.add_argument(
        "--shuffle-buffer-mib", type=int, default=0, help="cap TFDS's in-memory shuffle (0: 1 GiB)"
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.child:
        child(*arguments.child)
        return

    from deepnoise_tf import synthetic

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for experiments in [int(n) for n in arguments.experiments.split(",")]:
            manual_dir = pathlib.Path(scratch) / f"source_{experiments}"
            start = time.perf_counter()
            synthetic.write_dataset(
                manual_dir,
                layout="release",
                preset="benchmark",
                train_experiments=experiments,
                image_size=arguments.image_size,
                sirnas_per_group=arguments.sirnas_per_group,
            )
            generate_seconds = time.perf_counter() - start
            for config in arguments.configs.split(","):
                data_dir = pathlib.Path(scratch) / f"tfds_{experiments}_{config}"
                command = [
                    sys.executable,
                    __file__,
                    "--child",
                    str(manual_dir),
                    str(data_dir),
                    config,
                    str(arguments.shuffle_buffer_mib),
                ]
                result = subprocess.run(command, capture_output=True, text=True, check=False)
                if result.returncode:
                    raise RuntimeError(f"build failed: {result.stderr[-3000:]}")
                measured = json.loads(result.stdout.strip().splitlines()[-1])
                measured.update(
                    experiments=experiments,
                    config=config,
                    generate_seconds=generate_seconds,
                    load=_report.load_average(),
                )
                rows.append(measured)
                print(
                    f"{experiments} experiments {config}: {measured['sites']} sites, "
                    f"{measured['sites'] / measured['build_seconds']:.1f} sites/s, "
                    f"peak RSS {measured['rss_build_mib']:.0f} MiB",
                    flush=True,
                )
    header = (
        "experiments", "sites", "config", "build sites/s", "peak RSS MiB (after imports)",
        "MiB/site on disk", "read images/s", "load",
    )  # fmt: skip
    body = _report.table(
        header,
        [
            (
                r["experiments"],
                r["sites"],
                r["config"],
                f"{r['sites'] / r['build_seconds']:.1f}",
                f"{r['rss_build_mib']:.0f} ({r['rss_before_mib']:.0f})",
                f"{r['record_bytes'] / r['sites'] / 2**20:.3f}",
                f"{r['read_images_per_second']:.0f}",
                r["load"],
            )
            for r in rows
        ],
    )
    bullets = [
        f"- images {arguments.image_size}x{arguments.image_size}x6, synthetic release layout, "
        f"{arguments.sirnas_per_group} siRNAs per group; TFDS shuffle buffer "
        f"{arguments.shuffle_buffer_mib or 1024} MiB; load = 1/5/15-min load average after the build",
    ]
    title = (
        "rxrx1 build: throughput and peak memory vs data set size "
        f"({datetime.date.today().isoformat()})"
    )
    _report.publish(arguments, title, bullets, body, script=__file__, argv=argv)
    peaks = [r["rss_build_mib"] for r in rows]
    print(
        f"summary: {len(rows)} builds, {min(r['sites'] / r['build_seconds'] for r in rows):.1f}-"
        f"{max(r['sites'] / r['build_seconds'] for r in rows):.1f} sites/s, peak RSS "
        f"{min(peaks):.0f}-{max(peaks):.0f} MiB"
    )


if __name__ == "__main__":
    main()
