"""rxrx1: RxRx1 as one example per site (uint8 H x W x 6) with plate, experiment and cell-type statistics.

Reads either source layout (the Kaggle competition files or the RxRx1 release), validates it, computes the
pooled per-channel mean and std of every plate, experiment and cell type exactly (integer sums of pixel
values and their squares, streamed one site at a time), and stores them with each site so that
normalization at training time is a lookup. Runs locally or on Apache Beam (statistics as a combine
feeding a side input).

This module holds the builder, its configs and the Beam plumbing; `source` reads and validates the
layouts, `validation` checks every image file before anything is written (and is the validate-only
command), `pixels` decodes and downsamples, `channel_statistics` pools the statistics and checks
`pixel_stats.csv`, `progress` logs the long passes, `facts` names the RxRx1 facts.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from tfds_rxrx1.rxrx1 import facts
from tfds_rxrx1.rxrx1.channel_statistics import (
    PixelStatsCheck,
    combine_moments,
    compute_statistics,
    finish_keyed,
    read_pixel_stats,
    site_group_moments,
)
from tfds_rxrx1.rxrx1.pixels import DecodeSettings, read_site
from tfds_rxrx1.rxrx1.source import SPLITS, Site, SourceError, find_source_root, read_source
from tfds_rxrx1.rxrx1.validation import check_images

RELEASE_URLS = {
    "images": "https://storage.googleapis.com/rxrx/rxrx1/rxrx1-images.zip",
    "metadata": "https://storage.googleapis.com/rxrx/rxrx1/rxrx1-metadata.zip",
}


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


def make_example(site: Site, settings: DecodeSettings, statistics: dict) -> dict:
    """The TFDS example of one site (features as the dataset card lists them)."""
    example = {
        "image": read_site(site, settings),
        **site.identifiers(),
        "sirna": site.sirna,
    }
    for group, key in site.group_keys().items():
        mean, std = statistics[key]
        example[f"{group}_mean"] = np.asarray(mean, np.float32)
        example[f"{group}_std"] = np.asarray(std, np.float32)
    return example


def _keyed_example(site: Site, settings: DecodeSettings, statistics: dict):
    return site.site_id, make_example(site, settings, statistics)


def _beam_split(sites: list[Site], all_sites: list[Site], settings: DecodeSettings):
    """A PTransform writing one split; the statistics of all sites arrive as a side input."""
    beam = tfds.core.lazy_imports.apache_beam

    class _SplitExamples(beam.PTransform):
        def expand(self, pipeline):
            statistics = (
                pipeline
                | "CreateAllSites" >> beam.Create(all_sites)
                | "SiteMoments" >> beam.FlatMap(site_group_moments, settings)
                | "PoolMoments" >> beam.CombinePerKey(combine_moments)
                | "FinishStatistics" >> beam.Map(finish_keyed)
            )
            return (
                pipeline
                | "CreateSites" >> beam.Create(sites)
                | "MakeExamples"
                >> beam.Map(_keyed_example, settings, beam.pvalue.AsDict(statistics))
            )

    return _SplitExamples()


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
        shape = (None, None, facts.NUM_CHANNELS)
        encoding = (
            tfds.features.Encoding.ZLIB if config.compressed else tfds.features.Encoding.BYTES
        )
        statistic = dict(shape=(facts.NUM_CHANNELS,), dtype=np.float32)
        features = {
            "image": tfds.features.Tensor(
                shape=shape, dtype=np.uint8, encoding=encoding, doc="channels w1..w6"
            ),
            "id_code": tfds.features.Text(doc="{experiment}_{plate}_{well}"),
            "site": tfds.features.Scalar(dtype=np.int32, doc="1 or 2"),
            "experiment": tfds.features.Text(),
            "plate": tfds.features.Scalar(dtype=np.int32, doc="1..4"),
            "well": tfds.features.Text(),
            "cell_type": tfds.features.Text(doc=", ".join(facts.CELL_TYPES)),
            "well_type": tfds.features.Text(doc=", ".join(facts.WELL_TYPES)),
            "sirna": tfds.features.Scalar(
                dtype=np.int32, doc="0-1107 treatments, 1108-1138 controls, -1 unknown"
            ),
        }
        for group in facts.STATISTIC_GROUPS:
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
        self._remove_stale_incomplete_dirs()
        return super()._download_and_prepare(dl_manager, download_config)

    def _remove_stale_incomplete_dirs(self) -> None:
        """Deletes the incomplete.* folders that killed builds of this config and version left behind.

        TFDS removes its incomplete folder only when the build ends in Python; a killed build leaves it
        (tens of GB on RxRx1), and the next build writes a new one beside it. Runs while TFDS writes
        into its own incomplete folder (self.data_dir), which is kept. Two builds of one config into
        one data_dir at once are not supported (TFDS's final rename would collide anyway).
        """
        current = epath.Path(self.data_dir)
        pattern = f"{tfds.core.constants.INCOMPLETE_PREFIX}*_{self.version}"
        for stale in current.parent.glob(pattern):
            if stale.name != current.name and stale.is_dir():
                logging.warning("rxrx1: removing %s, left by an interrupted build", stale)
                stale.rmtree()

    def _source_root(self, dl_manager) -> epath.Path:
        try:
            return find_source_root(epath.Path(dl_manager.manual_dir))
        except NotADirectoryError as error:  # TFDS lists the manual dir before we can look at it
            raise SourceError(
                f"the manual dir is a file, not a folder ({error}); pass the folder that holds the "
                f"RxRx1 files. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            ) from error
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
        # Every file is checked before anything is written: all bad files in one error.
        shape, reference = check_images(sites)
        target = self.builder_config.image_size
        if target is not None and max(shape) <= target:
            target = None  # never upsample: a source at or below the config size is stored as it is
        if target is not None and shape[0] != shape[1]:
            raise SourceError(
                f"config {self.builder_config.name} area-averages square images to {target}x{target}, but "
                f"the source ({reference}) is {shape[0]}x{shape[1]}. Use the native config for "
                "non-square images."
            )
        settings = DecodeSettings(source_shape=shape, reference_path=reference, target_size=target)
        logging.info("rxrx1: %s layout at %s: %d sites of %s", layout, root, len(sites), shape)
        by_split = {split: [site for site in sites if site.split == split] for split in SPLITS}
        by_split = {split: members for split, members in by_split.items() if members}
        if getattr(self, "_use_beam", False):
            return {
                split: _beam_split(members, sites, settings) for split, members in by_split.items()
            }
        known, check = None, None
        pixel_stats = root / "pixel_stats.csv"
        if target is None and pixel_stats.exists():
            known = read_pixel_stats(pixel_stats, shape[0] * shape[1])
        statistics = compute_statistics(sites, settings, known)
        if known:
            check = PixelStatsCheck(pixel_stats, sites, statistics)
        return {
            split: self._generate_examples(members, settings, statistics, check)
            for split, members in by_split.items()
        }

    def _generate_examples(self, sites, settings, statistics, check=None):
        for site in sites:
            example = make_example(site, settings, statistics)
            if check is not None:  # pixel_stats.csv was trusted: verify it on the decoded pixels
                check.add(site, example["image"])
            yield site.site_id, example
