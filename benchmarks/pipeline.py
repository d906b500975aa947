"""Input pipeline images/s at 512x512: our tf.data over TFDS records vs six PNGs per site with PIL.

Paths timed on the same cores, over the synthetic `benchmark` preset (one experiment of 512 px sites;
`synthetic.prepare_tfds` writes both the PNGs and the TFDS records under `--data_root`):
- `TFDS records only`: every site of the records, decoded and batched: the reading alone.
- `tf.data`: `data.training_dataset` (mean teacher off: the preset has no test split) as the
  step receives it: records decoded to uint8 batches with their normalization statistics, one
  site per well kept (both are read), shuffled; normalization and augmentation run inside the
  step, on the accelerator.
- `tf.data without the resize`: the same with `data.image_size=0`: `data.to_sample` then skips
  the area resize it applies whenever the static image shape differs from `image_size` (the
  builder's shape is dynamic, so 512 px images are resized to 512 px).
- `prototype: site chosen before decoding`: `choose_then_decode`, a change `data.py` could make:
  the image stays serialized until one site per well is kept, then is decoded, without the resize.
- `tf.data + normalize`: the same, plus `augment.normalize` (with the training jitter) mapped on
  the host: the same work as the PNG path, for a like-for-like ratio.
- `tf.data + normalize + 3 views`: plus the three training views (`augment.normal_view`,
  `easy_view`, `hard_view`) on the host: what it would cost to augment on the CPU instead.
- `PNG + PIL`: what the public PyTorch code's loader does per site: open the six channel PNGs with
  PIL, stack them, normalize in numpy with the site's plate statistics (a dict lookup, cheaper than
  the public code's pandas lookup); in this process, and in a `multiprocessing` pool of N workers.
The ratio to the best PNG row is printed, and the rate the pipeline must reach to feed 4 GPUs is
estimated from the H100 step rates of benchmarks/model.py (see BENCHMARKS.md) times the DeepNoise
step's cost in plain steps (`--deepnoise_cost`, measured on CPU by benchmarks/train.py).

    python benchmarks/pipeline.py                    # ~1-2 min on 2 cores; appends to BENCHMARKS.md
    python benchmarks/pipeline.py --images 64 --no_append
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from pathlib import Path

import _report
import numpy as np
import projection
import train as train_benchmark
from PIL import Image

REPOSITORY = Path(__file__).resolve().parents[1]
NUM_CHANNELS = 6
# Per-GPU training images/s of Xception at 512 px, batch 32, plain step, on an H100 (BENCHMARKS.md,
# benchmarks/model.py on the JAX backend): float32 and mixed_bfloat16.
H100_PLAIN_STEP_IMAGES_PER_S = projection.MEASURED["H100"]["train"]["xception"]
GPUS = 4


# ------------------------------------------------------------------------------------------------
# The PNG path (numpy + PIL only: it also runs in the pool's worker processes)


def site_png_paths(root: Path) -> list[tuple[list[str], tuple[str, int]]]:
    """(six channel paths, (experiment, plate)) of every site of a release-layout source."""
    import pandas as pd

    metadata = pd.read_csv(root / "metadata.csv")
    sites = []
    for row in metadata.itertuples(index=False):
        folder = root / "images" / row.experiment / f"Plate{row.plate}"
        paths = [
            str(folder / f"{row.well}_s{row.site}_w{channel}.png")
            for channel in range(1, NUM_CHANNELS + 1)
        ]
        sites.append((paths, (row.experiment, int(row.plate))))
    return sites


_STATISTICS: dict = {}


def _set_statistics(statistics: dict) -> None:
    _STATISTICS.clear()
    _STATISTICS.update(statistics)


def load_png_site(site) -> np.ndarray:
    """[H, W, 6] float32: the six PNGs decoded by PIL, stacked, normalized by the plate's stats."""
    paths, plate = site
    image = np.stack([np.asarray(Image.open(path)) for path in paths], axis=-1)
    mean, std = _STATISTICS[plate]
    return (image.astype(np.float32) - mean) / std


def plate_statistics(sites, seed: int = 0) -> dict:
    """Stand-in per-plate channel statistics (values do not change the cost)."""
    rng = np.random.default_rng(seed)
    return {
        plate: (
            rng.uniform(20, 60, NUM_CHANNELS).astype(np.float32),
            rng.uniform(5, 20, NUM_CHANNELS).astype(np.float32),
        )
        for plate in sorted({plate for _, plate in sites})
    }


def time_png(sites, images: int, workers: int) -> float:
    """Images/s of `load_png_site` over `images` sites (cycling), in-process or in a pool."""
    order = [sites[index % len(sites)] for index in range(images)]
    statistics = plate_statistics(sites)
    if workers <= 1:
        _set_statistics(statistics)
        load_png_site(order[0])  # warm the imports and the page cache path
        start = time.perf_counter()
        for site in order:
            load_png_site(site)
        return images / (time.perf_counter() - start)
    # spawn: fresh workers with numpy and PIL only, whatever this process has started already.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_set_statistics, initargs=(statistics,)) as pool:
        pool.map(load_png_site, order[:workers])  # start the workers
        start = time.perf_counter()
        # The arrays travel back to the parent as a DataLoader's do (pickled through a pipe).
        for _ in pool.imap(load_png_site, order, chunksize=4):
            pass
        return images / (time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------
# The tf.data path


def tf_pipeline(data_dir: str, builder: str, batch: int, host_work: str, image_size: int = 512):
    """`data.training_dataset` batches, optionally normalized (and augmented) on the host.

    `image_size` must be the stored size (the prototype does not resize).
    """
    import tensorflow as tf

    from deepnoise_tf import augment, data
    from deepnoise_tf import config as config_lib

    config = config_lib.default_config()
    config.data.data_dir = data_dir
    config.data.builder = builder
    config.data.val_experiments = ()
    config.data.image_size = image_size
    config.train.batch_size = batch
    config.mean_teacher.enabled = False
    # The train split alone: the prototype below does not mix in the test plates' control wells.
    config.data.test_controls = False
    config = config_lib.validate(config)
    train_benchmark.scale_shuffle_buffer(config)
    if host_work == "records":  # every site, as TFDS decodes it: no site choice, no shuffle
        sites = data.load_sites(config.data, "train", with_labels=True).repeat()
        return sites.batch(batch).prefetch(tf.data.AUTOTUNE)
    if host_work == "choose first":
        return choose_then_decode(config)
    if host_work == "no resize":
        # data.to_sample resizes whenever the image's static shape is not image_size; the builder's
        # shape is dynamic, so even 512 px images go through an area resize to 512 px.
        config.data.image_size = 0
        host_work = "none"
    dataset = data.training_dataset(config)
    if host_work == "none":
        return dataset

    def on_host(batch, step):
        seed = tf.stack([tf.constant(0, tf.int64), step])
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
        images = augment.normalize(
            batch["image"], batch["mean"], batch["std"], jitter=0.1, seed=seeds[0]
        )
        if host_work == "normalize":
            return {"image": images, "label": batch["label"]}
        return {
            "normal": augment.normal_view(images, seeds[1]),
            "easy": augment.easy_view(images, seeds[2]),
            "hard": augment.hard_view(images, seeds[3]),
            "label": batch["label"],
        }

    dataset = tf.data.Dataset.zip(dataset, tf.data.Dataset.counter())
    return dataset.map(on_host, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def choose_then_decode(config):
    """A prototype of `data.training_dataset` (labelled only) that decodes only the kept site.

    `data._training_stream` decodes both sites of a well and then drops one; here the image stays
    serialized (`tfds.decode.SkipDecoding`) through the site choice and the shuffle, and is
    decoded afterwards, in parallel, without the no-op resize.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from deepnoise_tf import data

    data_config, seed = config.data, config.train.seed
    features = ("id_code", "site", "experiment", "cell_type", "sirna", "plate_mean", "plate_std")
    base = tfds.load(
        data_config.builder,
        split="train",
        data_dir=data_config.data_dir,
        shuffle_files=True,
        read_config=tfds.ReadConfig(shuffle_seed=seed, interleave_cycle_length=4),
        decoders=tfds.decode.PartialDecoding(
            {"image": True, **dict.fromkeys(features, True)},
            decoders={"image": tfds.decode.SkipDecoding()},
        ),
    )
    image_feature = tfds.builder(data_config.builder, data_dir=data_config.data_dir).info.features

    def one_epoch(epoch):
        kept = data.one_site_per_well(base, seed, epoch)
        return kept.shuffle(data_config.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    def sample(example):
        example = {**example, "image": image_feature["image"].decode_example(example["image"])}
        return data.to_sample(example, normalization="plate", image_size=0, labelled=True)

    stream = tf.data.Dataset.counter().flat_map(one_epoch)
    stream = stream.map(sample, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return stream.batch(config.train.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def time_tf(dataset, images: int, batch: int, warmup_batches: int = 2) -> float:
    iterator = iter(dataset)
    for _ in range(warmup_batches):  # fills the shuffle buffer and the prefetch
        next(iterator)
    batches = max(1, images // batch)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch / (time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320, help="sites timed per PNG row")
    parser.add_argument("--tf_images", type=int, default=1280, help="sites timed per tf.data row")
    parser.add_argument("--view_images", type=int, default=128, help="sites, host-augmented row")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", default=f"1,{os.cpu_count()}", help="PNG pool sizes")
    parser.add_argument(
        "--deepnoise_cost",
        type=float,
        default=2.9,
        help="DeepNoise step time in plain steps (CPU ratio from benchmarks/train.py)",
    )
    parser.add_argument("--data_root", default=str(REPOSITORY / "runs" / "benchmarks"))
    _report.add_output_arguments(parser)
    arguments = parser.parse_args(argv)

    from deepnoise_tf import synthetic

    data_dir = Path(arguments.data_root) / "benchmark"
    builder = synthetic.prepare_tfds(data_dir, preset="benchmark")
    sites = site_png_paths(data_dir / "manual" / "benchmark")
    started = time.perf_counter()
    rows = []  # (path, workers, images/s, load)

    def record(name, workers, rate):
        rows.append((name, workers, rate, _report.load_average()))
        print(f"pipeline_benchmark path={name!r} workers={workers} images_per_s={rate:.1f} "
              f"load={rows[-1][3]}", flush=True)  # fmt: skip

    for workers in [int(value) for value in arguments.workers.split(",") if value]:
        record("PNG + PIL + numpy normalize", workers, time_png(sites, arguments.images, workers))
    rates = {}
    for host_work, name, images in (
        ("records", "TFDS records only (every site decoded)", arguments.tf_images),
        ("none", "tf.data (uint8, as fed to the step)", arguments.tf_images),
        ("no resize", "tf.data without the 512->512 resize", arguments.tf_images),
        ("choose first", "prototype: site chosen before decoding, no resize", arguments.tf_images),
        ("normalize", "tf.data + normalize on host", arguments.tf_images),
        ("views", "tf.data + normalize + 3 views on host", arguments.view_images),
    ):
        dataset = tf_pipeline(str(data_dir), builder, arguments.batch, host_work)
        rates[host_work] = time_tf(dataset, images, arguments.batch)
        record(name, "tf.data", rates[host_work])
    total = time.perf_counter() - started

    png_best = max(rate for name, _, rate, _ in rows if name.startswith("PNG"))
    tf_rate = rates["none"]
    normalized_rate = rates["normalize"]
    cores = os.cpu_count()
    needs = {
        f"{mode} {precision}": GPUS
        * rate
        / (arguments.deepnoise_cost if mode == "DeepNoise" else 1)
        for precision, rate in H100_PLAIN_STEP_IMAGES_PER_S.items()
        for mode in ("plain", "DeepNoise")
    }
    summary = (
        f"pipeline_benchmark_summary tf_data_images_per_s={tf_rate:.0f} "
        f"tf_data_normalized_images_per_s={normalized_rate:.0f} png_best_images_per_s="
        f"{png_best:.0f} ratio={tf_rate / png_best:.1f}x (target 10x) "
        f"normalized_ratio={normalized_rate / png_best:.1f}x without_resize_ratio="
        f"{rates['no resize'] / png_best:.1f}x prototype_ratio="
        f"{rates['choose first'] / png_best:.1f}x cores={cores} "
        + " ".join(
            f"needed_for_{GPUS}_H100_{key.replace(' ', '_')}={value:.0f}"
            for key, value in needs.items()
        )
    )
    print(summary, flush=True)
    import tensorflow as tf

    bullets = [
        f"- data: synthetic `benchmark` preset, {len(sites)} sites of 512x512x6 (PNG level 1, "
        "~130 KB per channel; TFDS `rxrx1/native`, raw uint8 records), all in the page cache; "
        f"batch {arguments.batch}; total wall time {total:.0f} s; load = 1/5/15-min load "
        "average after the row (2 shared cores)",
    ]
    body = _report.table(
        ("path", "workers", "images/s", "x best PNG", "load"),
        [
            (name, workers, f"{rate:.1f}", f"{rate / png_best:.1f}", load)
            for name, workers, rate, load in rows
        ],
    )
    body += [
        "",
        f"To feed {GPUS} GPUs at the H100 step rates of benchmarks/model.py (Xception 512 px, batch "
        f"32; the DeepNoise step taken as {arguments.deepnoise_cost:g} plain steps), the host must "
        "deliver: "
        + ", ".join(f"{key} {value:.0f} images/s" for key, value in needs.items())
        + f". tf.data used all {cores} cores; the PNG rows used one process or a pool of "
        "workers, each on the same cores.",
    ]
    title = f"Input pipeline at 512 px, benchmarks/pipeline.py ({_report.timestamp()})"
    versions = {"TensorFlow": tf.__version__, "numpy": np.__version__}
    _report.publish(arguments, title, bullets, body, script=__file__, argv=argv, versions=versions)


if __name__ == "__main__":
    main()
