"""Constants of deepnoise_tf: the RxRx1 facts (named once, in `tfds_rxrx1.rxrx1.facts`) and model options."""

from tfds_rxrx1.rxrx1.facts import (
    CELL_TYPES,
    CHANNEL_NAMES,
    FIRST_CONTROL,
    IMAGE_SIZE,
    NEGATIVE_CONTROL,
    NUM_CHANNELS,
    NUM_CLASSES,
    NUM_CONTROLS,
    NUM_PLATE_GROUPS,
    NUM_SIRNAS,
    PLATES_PER_EXPERIMENT,
    SIRNAS_PER_PLATE,
    SITES_PER_WELL,
    STATISTIC_GROUPS,
    UNKNOWN_LABEL,
    WELL_COLUMNS,
    WELL_ROWS,
    WELL_TYPES,
    WELLS_PER_PLATE,
)

__all__ = [
    "CELL_TYPES",
    "CHANNEL_NAMES",
    "FIRST_CONTROL",
    "IMAGE_SIZE",
    "NEGATIVE_CONTROL",
    "NORMALIZATIONS",
    "NUM_CHANNELS",
    "NUM_CLASSES",
    "NUM_CONTROLS",
    "NUM_PLATE_GROUPS",
    "NUM_SIRNAS",
    "PLATES_PER_EXPERIMENT",
    "SIRNAS_PER_PLATE",
    "SITES_PER_WELL",
    "STATISTIC_GROUPS",
    "TEACHER_STATISTICS",
    "UNKNOWN_LABEL",
    "WELL_COLUMNS",
    "WELL_ROWS",
    "WELL_TYPES",
    "WELLS_PER_PLATE",
]

# Normalize by the statistics of one of the stored groups (paper eqs. 1-3), or not at all.
NORMALIZATIONS = (*STATISTIC_GROUPS, "none")
TEACHER_STATISTICS = ("ema", "batch")  # where the teacher's batch-norm statistics come from
