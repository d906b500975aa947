"""RxRx1 facts, named once (paper, "Datasets"; docs/method.md §1; the RxRx1 metadata)."""

NUM_CHANNELS = 6
CHANNEL_NAMES = ("nucleus", "er", "actin", "nucleolus", "mitochondria", "golgi")  # w1..w6

NUM_SIRNAS = 1108  # treatment classes 0..1107
NUM_CONTROLS = 31  # 30 positive controls 1108..1137, negative control 1138
NUM_CLASSES = NUM_SIRNAS + NUM_CONTROLS  # 1139 training classes
FIRST_CONTROL = NUM_SIRNAS
NEGATIVE_CONTROL = 1138
UNKNOWN_LABEL = -1  # label hidden (Kaggle test treatments) or withheld from training

NUM_PLATE_GROUPS = 4
SIRNAS_PER_PLATE = 277  # one group of 277 treatment siRNAs per plate
PLATES_PER_EXPERIMENT = 4
SITES_PER_WELL = 2
WELL_ROWS = tuple("BCDEFGHIJKLMNO")  # rows B..O of a 384-well plate
WELL_COLUMNS = tuple(range(2, 24))  # columns 02..23
WELLS_PER_PLATE = len(WELL_ROWS) * len(WELL_COLUMNS)  # 308

CELL_TYPES = ("HEPG2", "HUVEC", "RPE", "U2OS")
WELL_TYPES = ("treatment", "positive_control", "negative_control")
NORMALIZATIONS = ("plate", "experiment", "cell_type", "none")

IMAGE_SIZE = 512  # native RxRx1 resolution
TEACHER_STATISTICS = ("ema", "batch")  # where the teacher's batch-norm statistics come from
