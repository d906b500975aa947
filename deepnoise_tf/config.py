"""Configs: the default DeepNoise config, loading `configs/*.py[:variant]`, validation and dumping.

Configs are data: every hyperparameter lives once, here (defaults) or in a file under `configs/`
(one per paper experiment), and functions take it as an argument. A config file defines
`get_config(variant: str = "") -> ml_collections.ConfigDict`; `variant` selects e.g. the `:cpu`
scale. Overrides use dotted paths (`--config.train.epochs=3`); unknown fields are errors that list
the valid ones.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import pathlib
from typing import Any

import ml_collections

from deepnoise_tf import constants

HEADS = ("arcface", "softmax")
BACKBONES = ("xception", "xception_wide")
STEMS = ("7x7", "3x3")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
PSEUDO_LABEL_SOURCES = ("ensemble", "own_teacher")
OPTIMIZERS = ("adamw", "sgd_cosine")  # pretraining | per-cell-type fine-tuning


def default_config() -> ml_collections.ConfigDict:
    """The paper's full-scale Model 3 (ArcFace + mean teacher, Xception, plate normalization)."""
    config = ml_collections.ConfigDict()

    config.data = ml_collections.ConfigDict()
    config.data.data_dir = ""  # TFDS data dir; "" = TFDS's default (~/tensorflow_datasets)
    config.data.builder = "rxrx1"  # TFDS name[/config], e.g. "rxrx1/256"
    config.data.image_size = constants.IMAGE_SIZE  # images are resized on the host if stored otherwise
    config.data.normalization = "plate"  # plate | experiment | cell_type | none (paper Fig. 3A)
    config.data.normalization_jitter = 0.1  # mean and std each x (1 + U(-j, j)) in training (SPEC 2)
    # Whole held-out experiments of the train split (SPEC 7); never used as unlabelled data.
    config.data.val_experiments = ("HEPG2-07", "HUVEC-16", "RPE-07", "U2OS-03")
    config.data.cell_types = ()  # () = all; e.g. ("U2OS",) for per-cell-type fine-tuning
    config.data.shuffle_buffer = 2048
    config.data.synthetic_preset = ""  # non-empty: generate this synthetic RxRx1 into data_dir first

    config.model = ml_collections.ConfigDict()
    config.model.backbone = "xception"  # xception | xception_wide
    config.model.width = 1.0  # multiplies every stage's filters (narrow nets for CPU runs)
    config.model.stem = "7x7"  # the public code's 7x7/2 stem, or Chollet's "3x3"
    config.model.head = "arcface"  # arcface | softmax (Model 1 baseline)
    config.model.arcface_scale = 30.0
    config.model.arcface_margin = 0.1
    # Epochs over which training ramps the margin linearly from 0 (0 = the paper: full margin from
    # the first step). For ArcFace trained from scratch, where the margin stalls the first epochs.
    config.model.arcface_margin_warmup_epochs = 0.0
    config.model.dropout = 0.5  # softmax head only
    config.model.sync_batch_norm = True  # identical BN statistics on every replica
    config.model.batch_norm_momentum = 0.99  # Keras's Xception default
    config.model.imagenet_weights = ""  # local path to Keras's Xception ImageNet weights, "" = scratch
    config.model.num_classes = constants.NUM_CLASSES

    config.mean_teacher = ml_collections.ConfigDict()
    config.mean_teacher.enabled = True
    config.mean_teacher.consistency_weight = 100.0  # SPEC 5
    config.mean_teacher.rampup_epochs = 5.0
    # Paper: labelled-only ArcFace training first, then the consistency loss; 0 = from the start.
    config.mean_teacher.consistency_start_epoch = 0.0
    config.mean_teacher.labelled_share = 0.5  # fixed labelled fraction of every batch (paper: 1/4 or 1/2)
    config.mean_teacher.ema_decays = (0.5, 0.9, 0.99, 0.999)  # SPEC 6: epoch 1, <=10, <=20, later
    config.mean_teacher.ema_epoch_boundaries = (1, 10, 20)
    config.mean_teacher.pseudo_label_weight = 0.05  # labelled loss then x (1 - weight)
    config.mean_teacher.pseudo_label_source = "ensemble"  # ensemble (paper) | own_teacher (code)
    # ema: teacher batch-norm statistics are the EMA of the student's (teacher evaluated as it is used);
    # batch: the teacher normalises its hard view with batch statistics (Tarvainen & Valpola).
    config.mean_teacher.teacher_statistics = "ema"

    config.train = ml_collections.ConfigDict()
    config.train.epochs = 160
    config.train.batch_size = 64  # global batch, split over replicas
    config.train.steps_per_epoch = 0  # 0 = one pass over the labelled wells
    config.train.optimizer = "adamw"
    config.train.learning_rates = (3e-4, 1e-4, 1e-5)
    config.train.lr_epoch_boundaries = (100, 140)
    config.train.weight_decay = 2e-4
    config.train.strategy = "auto"  # auto | default | mirrored | multi_worker
    config.train.cpu_devices = 0  # >1 splits the CPU into logical devices (testing distribution)
    config.train.mixed_precision = ""  # "" | mixed_float16 | mixed_bfloat16
    config.train.jit_compile = False
    config.train.seed = 0
    config.train.eval_every_epochs = 1
    config.train.export = True

    # Per-cell-type stage (SPEC 7; deepnoise_tf/finetune.py): SGD with cosine restarts, fresh head.
    config.finetune = ml_collections.ConfigDict()
    config.finetune.momentum = 0.0  # the authors' fine-tuning SGD has no momentum
    config.finetune.nesterov = False
    config.finetune.weight_decay = 2e-4
    config.finetune.learning_rate = 0.1
    config.finetune.min_learning_rate = 1e-3
    config.finetune.cycles = 4
    config.finetune.cycle_epochs = 40.0
    config.finetune.final_epochs = 5
    config.finetune.final_learning_rate = 1e-4
    config.finetune.cycle_scale = {"U2OS": 1.0, "RPE": 0.5, "HEPG2": 0.5, "HUVEC": 0.25}
    return config


def cpu_scale(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a paper config to run on 2 CPU cores: small images, narrow nets, few epochs."""
    config.data.builder = "rxrx1"
    config.data.image_size = 64
    config.data.synthetic_preset = "quickstart"
    # The last train experiment of each cell type of the synthetic preset is held out.
    config.data.val_experiments = tuple(f"{cell_type}-03" for cell_type in constants.CELL_TYPES)
    config.data.shuffle_buffer = 512
    config.model.width = 0.125
    config.model.batch_norm_momentum = 0.9  # a few hundred steps: moving statistics must keep up
    # Tuned on the quickstart data (BENCHMARKS.md, "CPU-scale tuning"): accuracy is bound by the
    # number of labelled samples seen, so a 3/4 labelled share and 32 short epochs (~580 steps).
    config.train.epochs = 32
    config.train.batch_size = 32
    config.train.learning_rates = (3e-3, 1e-3, 1e-4)
    config.train.lr_epoch_boundaries = (24, 29)
    config.mean_teacher.labelled_share = 0.75
    # The synthetic siRNA intensity effect (10%) is as large as the paper's +-10% jitter of the
    # normalization statistics, which would erase it; real phenotypes are not only intensities.
    config.data.normalization_jitter = 0.0
    config.mean_teacher.rampup_epochs = 2.0
    config.mean_teacher.ema_epoch_boundaries = (1, 2, 4)
    # ~18 steps per epoch: a 0.999 teacher would barely move in a dozen epochs.
    config.mean_teacher.ema_decays = (0.5, 0.9, 0.95, 0.97)
    # Fine-tuning (finetune.py), ~5 steps per epoch per cell type: 4 cycles of 6 r epochs + 2, i.e.
    # 26 epochs for U2OS down to 8 for HUVEC, about a minute per cell type on 2 cores. From the
    # quickstart teacher, lr 0.1 wrecks the fresh head (RPE val 62% -> 17%); 0.02 gives RPE 62 -> 72%,
    # U2OS 69 -> 71%, HEPG2 64 -> 68%, but HUVEC's 8 epochs (r = 0.25) end at 62% (from 70%).
    config.finetune.learning_rate = 0.02
    config.finetune.cycle_epochs = 6.0
    config.finetune.final_epochs = 2
    return config


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks values a typo could break; raises ValueError naming the field and the valid values."""
    checks = [
        ("data.normalization", config.data.normalization, constants.NORMALIZATIONS),
        ("model.backbone", config.model.backbone, BACKBONES),
        ("model.head", config.model.head, HEADS),
        ("model.stem", config.model.stem, STEMS),
        ("train.strategy", config.train.strategy, STRATEGIES),
        ("train.optimizer", config.train.optimizer, OPTIMIZERS),
        ("train.mixed_precision", config.train.mixed_precision, ("", "mixed_float16", "mixed_bfloat16")),
        ("mean_teacher.pseudo_label_source", config.mean_teacher.pseudo_label_source, PSEUDO_LABEL_SOURCES),
        ("mean_teacher.teacher_statistics", config.mean_teacher.teacher_statistics, constants.TEACHER_STATISTICS),
    ]
    for field, value, valid in checks:
        if value not in valid:
            raise ValueError(f"config.{field}={value!r} is not one of {list(valid)}")
    for cell_type in config.data.cell_types:
        if cell_type not in constants.CELL_TYPES:
            raise ValueError(f"config.data.cell_types: {cell_type!r} is not one of {list(constants.CELL_TYPES)}")
    share = config.mean_teacher.labelled_share
    if config.mean_teacher.enabled and not 0.0 < share <= 1.0:
        raise ValueError(f"config.mean_teacher.labelled_share={share} must be in (0, 1]")
    if len(config.train.learning_rates) != len(config.train.lr_epoch_boundaries) + 1:
        raise ValueError("config.train.learning_rates needs one more value than train.lr_epoch_boundaries")
    if config.model.get("arcface_margin_warmup_epochs", 0.0) < 0:
        raise ValueError("config.model.arcface_margin_warmup_epochs must be >= 0")
    if config.mean_teacher.get("consistency_start_epoch", 0.0) < 0:
        raise ValueError("config.mean_teacher.consistency_start_epoch must be >= 0")
    if config.train.batch_size < 1 or config.train.epochs < 1:
        raise ValueError("config.train.batch_size and config.train.epochs must be positive")
    return config


def load(spec: str) -> ml_collections.ConfigDict:
    """Loads `path/to/config.py[:variant]` (the `--config` syntax) outside of absl flags."""
    path, _, variant = spec.partition(":")
    file = pathlib.Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"deepnoise_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as rxrx1/128


def _field_paths(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    paths = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            paths.extend(_field_paths(value, path + "."))
        else:
            paths.append(path)
    return paths


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str]) -> ml_collections.ConfigDict:
    """Sets dotted fields from strings; an unknown field raises KeyError listing the valid fields."""
    valid = _field_paths(config)
    with config.unlocked():
        for path, text in overrides.items():
            if path not in valid:
                close = [field for field in valid if field.split(".")[-1] == path.split(".")[-1]]
                hint = f" Did you mean {close}?" if close else ""
                raise KeyError(f"unknown config field {path!r}.{hint} Valid fields: {', '.join(valid)}")
            *parents, leaf = path.split(".")
            node = config
            for parent in parents:
                node = node[parent]
            value = _parse_value(text)
            current = node[leaf]
            if isinstance(current, tuple) and isinstance(value, list):
                value = tuple(value)
            elif isinstance(current, tuple) and not isinstance(value, tuple):
                value = (value,)
            elif isinstance(current, float) and isinstance(value, int):
                value = float(value)
            elif isinstance(current, str) and not isinstance(value, str):
                value = text
            node[leaf] = value
    return config


def to_json(config: ml_collections.ConfigDict) -> str:
    """The config as JSON: written next to every run so it can be reproduced."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def argument_parser(prog: str, description: str):
    """The `--config FILE[:variant]` and `--workdir DIR` arguments shared by the training CLIs."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help="configs/<name>.py[:variant]")
    parser.add_argument("--workdir", required=True, help="where checkpoints, logs and the export go")
    return parser


def parse_arguments(parser, argv):
    """(parsed arguments, validated config): the parser's own arguments plus `--config.path=value`s."""
    rest, overrides = split_overrides(parser, argv)
    known, unknown = parser.parse_known_args(rest)
    if unknown:
        parser.error(f"unrecognized arguments {unknown} (overrides look like --config.train.epochs=3)")
    config = load(known.config)
    config = validate(apply_overrides(config, overrides))
    return known, config


def split_overrides(parser, argv) -> tuple[list[str], dict[str, str]]:
    """(the other arguments, {dotted path: value text}) of every `--config.path=value` in `argv`.

    Overrides are taken out before argparse sees them: it reads a value holding a space (a tuple)
    as a positional argument, which an `nargs="+"` flag before it would swallow.
    """
    rest, overrides = [], {}
    for argument in argv:
        if not argument.startswith("--config."):
            rest.append(argument)
            continue
        if "=" not in argument:
            parser.error(f"{argument!r}: overrides look like --config.train.epochs=3")
        path, _, value = argument[len("--config.") :].partition("=")
        overrides[path] = value
    return rest, overrides
