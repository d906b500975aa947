"""Configs: the default DeepNoise config, scales, variants, loading, overrides, validation, the CLI.

Configs are data: every hyperparameter lives once, here (defaults and scales) or in a file under
`configs/` (one per paper experiment), and functions take it as an argument. A config file defines
`get_config(variant: str = "") -> ml_collections.ConfigDict` and reads `variant` with
`parse_variant`, so `configs/x.py:cpu,wide` selects known words and anything else is an error.
Overrides use dotted paths (`--config.train.epochs=3`); an unknown field is an error that suggests
the closest ones. `deepnoise_tf.config_flags` turns them into the command line of the training CLIs.
"""

from __future__ import annotations

import ast
import difflib
import importlib.resources
import importlib.util
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import ml_collections

from deepnoise_tf import config_renames, constants

# Option lists owned here. Backbones and stems are owned by `deepnoise_tf.models` (the backbone
# registry), teacher statistics by `deepnoise_tf.constants`; `validate` reads them from there.
HEADS = ("arcface", "softmax")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
PSEUDO_LABEL_SOURCES = ("ensemble", "own_teacher")
# pretraining: Adam with L2 (the paper) or decoupled AdamW | per-cell-type fine-tuning
OPTIMIZERS = ("adam_l2", "adamw", "sgd_cosine")
MIXED_PRECISIONS = ("auto", "", "mixed_float16", "mixed_bfloat16")
JIT_COMPILES = ("auto", True, False)
FINETUNE_LEARNING_RATES = ("learning_rate", "min_learning_rate", "final_learning_rate")


def _finetune_defaults() -> ml_collections.ConfigDict:
    """`config.finetune`: the per-cell-type stage (paper Fig. 5B; deepnoise_tf/finetune.py).

    SGD with cosine restarts and a fresh head, on the schedule of the public code.
    """
    finetune = ml_collections.ConfigDict()
    finetune.momentum = 0.0  # the authors' fine-tuning SGD has no momentum
    finetune.nesterov = False
    finetune.weight_decay = 2e-4
    finetune.learning_rate = 0.1
    finetune.min_learning_rate = 1e-3
    finetune.cycles = 4
    finetune.cycle_epochs = 40.0
    finetune.final_epochs = 5
    finetune.final_learning_rate = 1e-4
    finetune.cycle_scale = {"U2OS": 1.0, "RPE": 0.5, "HEPG2": 0.5, "HUVEC": 0.25}
    return finetune


def _data_defaults() -> ml_collections.ConfigDict:
    """`config.data`: the TFDS build, normalization (paper eqs. 1-3), splits and test controls."""
    data = ml_collections.ConfigDict()
    data.data_dir = ""  # TFDS data dir; "" = TFDS's default (~/tensorflow_datasets)
    data.builder = "rxrx1"  # TFDS name[/config], e.g. "rxrx1/256"
    data.image_size = constants.IMAGE_SIZE  # images are resized on the host if stored otherwise
    data.normalization = "plate"  # plate | experiment | cell_type | none (paper Fig. 3A)
    # Training only: mean and std each x (1 + U(-j, j)), per channel and sample (the public code;
    # the paper's eqs. 1-3 normalize with the exact statistics).
    data.normalization_jitter = 0.1
    # Whole held-out experiments of the train split (the public code validates on held-out
    # experiments); never used as unlabelled data.
    data.val_experiments = ("HEPG2-07", "HUVEC-16", "RPE-07", "U2OS-03")
    data.cell_types = ()  # () = all; e.g. ("U2OS",) for per-cell-type fine-tuning
    data.shuffle_buffer = 2048
    # Test-plate control wells are labelled samples (their labels are public, RxRx1's
    # test_controls.csv; SPEC §1); test treatments stay unlabelled. False: the test split is unlabelled.
    data.test_controls = True
    data.synthetic_preset = ""  # non-empty: generate this synthetic RxRx1 into data_dir first
    return data


def _model_defaults() -> ml_collections.ConfigDict:
    """`config.model`: backbone, stem and head (paper Fig. 2C, eq. 4)."""
    model = ml_collections.ConfigDict()
    model.backbone = "xception"  # xception | xception_wide
    model.width = 1.0  # multiplies every stage's filters (narrow nets for CPU runs)
    model.stem = "7x7"  # the public code's 7x7/2 stem, or Chollet's "3x3"
    model.head = "arcface"  # arcface | softmax (Model 1 baseline)
    model.arcface_scale = 30.0
    model.arcface_margin = 0.1
    # Share of the schedule over which training ramps the margin linearly from 0 (0 = the paper:
    # full margin from the first step). For ArcFace from scratch, where the margin stalls at first.
    model.arcface_margin_warmup_fraction = 0.0
    model.dropout = 0.5  # softmax head only
    model.sync_batch_norm = True  # identical BN statistics on every replica
    model.batch_norm_momentum = 0.99  # Keras's Xception default
    model.imagenet_weights = ""  # local path to Keras's Xception ImageNet weights, "" = scratch
    model.num_classes = constants.NUM_CLASSES
    return model


def _mean_teacher_defaults() -> ml_collections.ConfigDict:
    """`config.mean_teacher`: the mean teacher's losses, schedules and EMA (paper eq. 5)."""
    mean_teacher = ml_collections.ConfigDict()
    mean_teacher.enabled = True
    mean_teacher.consistency_weight = 100.0  # of L_Consist, paper eq. 5 (value: public code)
    # Schedules are fractions of the schedule length (train.schedule_epochs; schedules.run_schedule).
    mean_teacher.rampup_fraction = 0.03125  # 5 of 160 epochs
    # Paper (Discussion): labelled-only ArcFace training first, then the consistency loss; it gives
    # no length. Our reading: the first quarter of the schedule (40 of 160 epochs, well before the
    # first learning-rate step at 100). 0 = consistency (ramped up) from the first step.
    mean_teacher.consistency_start_fraction = 0.25
    mean_teacher.labelled_share = 0.5  # fixed labelled fraction of every batch (paper: 1/4 or 1/2)
    # Teacher EMA decay (Tarvainen & Valpola 2017) in epoch 1, <=10, <=20, later (public code).
    mean_teacher.ema_decays = (0.5, 0.9, 0.99, 0.999)
    mean_teacher.ema_boundary_fractions = (0.00625, 0.0625, 0.125)  # epochs 1, 10, 20 of 160
    mean_teacher.pseudo_label_weight = 0.05  # labelled loss then x (1 - weight)
    mean_teacher.pseudo_label_source = "ensemble"  # ensemble (paper) | own_teacher (code)
    # batch (paper's code, Tarvainen & Valpola): batch-norm statistics stay out of the EMA; the teacher
    # normalises its hard view with batch statistics and is evaluated with its own moving averages.
    # ema: the teacher's statistics are the EMA of the student's and it runs in inference mode.
    mean_teacher.teacher_statistics = "batch"
    return mean_teacher


def _train_defaults() -> ml_collections.ConfigDict:
    """`config.train`: optimizer, schedule, precision and distribution of one training run."""
    train = ml_collections.ConfigDict()
    train.epochs = 160
    # Epochs the schedule fractions refer to (schedules.run_schedule); 0 = train.epochs. Continued
    # runs (later pipeline rounds, fine-tuning) keep the first run's, so their epochs stay put.
    train.schedule_epochs = 0
    train.batch_size = 64  # global batch, split over replicas
    train.steps_per_epoch = 0  # 0 = one pass over the labelled wells
    # Paper: Adam with L2 2e-4 ("weight decay" as PyTorch's Adam has it: 2e-4 * w added to the
    # gradient); "adamw" = Keras's decoupled decay. Batch-norm and bias parameters are not decayed.
    train.optimizer = "adam_l2"
    train.learning_rates = (3e-4, 1e-4, 1e-5)
    train.lr_boundary_fractions = (0.625, 0.875)  # epochs 100 and 140 of 160
    train.weight_decay = 2e-4  # the L2 coefficient of adam_l2, the decay of adamw
    train.strategy = "auto"  # auto | default | mirrored | multi_worker
    train.cpu_devices = 0  # >1 splits the CPU into logical devices (testing distribution)
    # auto | "" (float32) | mixed_float16 | mixed_bfloat16; "auto" picks from the GPUs in sight and
    # jit_compile "auto" turns XLA on with a GPU (deepnoise_tf/precision.py). jit_compile holds
    # "auto" or a bool, hence a reference of any type.
    train.mixed_precision = "auto"
    train.jit_compile = ml_collections.FieldReference("auto", field_type=object)
    train.seed = 0
    train.eval_every_epochs = 1
    train.export = True
    return train


def default_config() -> ml_collections.ConfigDict:
    """The paper's full-scale Model 3 (ArcFace + mean teacher, Xception, plate normalization)."""
    config = ml_collections.ConfigDict()
    config.data = _data_defaults()
    config.model = _model_defaults()
    config.mean_teacher = _mean_teacher_defaults()
    config.train = _train_defaults()
    config.finetune = _finetune_defaults()
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
    config.train.lr_boundary_fractions = (0.75, 0.90625)  # epochs 24 and 29 of 32
    # float32 without XLA even where a GPU is in sight: XLA is 5-15x slower on CPU (BENCHMARKS.md),
    # and CPU-scale numbers stay comparable across machines.
    config.train.mixed_precision = ""
    config.train.jit_compile = False
    config.mean_teacher.labelled_share = 0.75
    # The synthetic siRNA intensity effect (10%) is as large as the paper's +-10% jitter of the
    # normalization statistics, which would erase it; real phenotypes are not only intensities.
    config.data.normalization_jitter = 0.0
    config.mean_teacher.rampup_fraction = 0.0625  # 2 of 32 epochs
    # The paper-scale reading, a quarter of the schedule, labelled only (8 of 32 epochs, before the
    # learning-rate step at 24); docs/ablation.md, "Mean teacher at CPU scale", for why not 0.
    config.mean_teacher.consistency_start_fraction = 0.25
    config.mean_teacher.ema_boundary_fractions = (0.03125, 0.0625, 0.125)  # epochs 1, 2, 4 of 32
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


# ------------------------------------------------------------------------------------------------
# Variants: `configs/x.py:a,b`


class VariantError(ValueError):
    """A config file's variant names a word the file does not know."""


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _segment(tokens: list[str], allowed: Sequence[str]) -> list[str] | None:
    """`tokens` as allowed words joined by "_" (longest word first); None when impossible."""
    if not tokens:
        return []
    for end in range(len(tokens), 0, -1):
        word = "_".join(tokens[:end])
        rest = _segment(tokens[end:], allowed) if word in allowed else None
        if rest is not None:
            return [word, *rest]
    return None


def _unknown_word(tokens: list[str], allowed: Sequence[str]) -> str:
    """The first stretch of `tokens` that no segmentation into allowed words can cover."""
    start = max(i for i in range(len(tokens) + 1) if _segment(tokens[:i], allowed) is not None)
    end = min(
        j for j in range(start + 1, len(tokens) + 1) if _segment(tokens[j:], allowed) is not None
    )
    return "_".join(tokens[start:end])


def parse_variant(variant: str, allowed: Sequence[str]) -> ml_collections.ConfigDict:
    """Reads the `a,b` of `configs/x.py:a,b`: {word: whether given} for every allowed word.

    Words are separated by commas (`cpu,wide`). An underscore separates words too where the joined
    name is not itself a word: `cpu_wide` (what `ablation.step_config` writes) is `cpu,wide`, while
    `own_teacher` is one word. Order does not matter.

    Raises:
      VariantError (a ValueError): naming an unknown, repeated or empty word, with the valid words
      and the closest one.
    """
    words = []
    for part in variant.split(",") if variant else ():
        if not allowed:
            raise VariantError(f"this config takes no variant, got {variant!r}")
        if not part:
            raise VariantError(
                f"variant {variant!r} has an empty word; valid: {', '.join(allowed)}"
            )
        tokens = part.split("_")
        segmented = _segment(tokens, allowed)
        if segmented is None:
            word = _unknown_word(tokens, allowed)
            where = f" in {variant!r}" if word != variant else ""
            raise VariantError(
                f"unknown variant {word!r}{where}{did_you_mean(word, allowed)}; valid variants: "
                f"{', '.join(allowed)} (combine them with commas, e.g. :{','.join(allowed[:2])})"
            )
        words.extend(segmented)
    repeated = sorted({word for word in words if words.count(word) > 1})
    if repeated:
        raise VariantError(f"variant {variant!r} repeats {', '.join(repeated)}")
    return ml_collections.ConfigDict({word: word in words for word in allowed})


# ------------------------------------------------------------------------------------------------
# Loading, validation, overrides


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks values a typo could break; raises ValueError naming the field and the valid values.

    Imports `deepnoise_tf.models` (Keras) for the registered backbones and the stems; loading a
    config and applying overrides do not.
    """
    from deepnoise_tf import models, schedules, synthetic_design

    preset, presets = config.data.synthetic_preset, synthetic_design.preset_names()
    if preset and preset not in presets:
        raise ValueError(f"config.data.synthetic_preset={preset!r} is not one of {list(presets)}"
                         f"{did_you_mean(preset, presets)}")  # fmt: skip
    checks = [
        ("data.normalization", config.data.normalization, constants.NORMALIZATIONS),
        ("model.backbone", config.model.backbone, models.backbone_names()),
        ("model.head", config.model.head, HEADS),
        ("model.stem", config.model.stem, models.STEMS),
        ("train.strategy", config.train.strategy, STRATEGIES),
        ("train.optimizer", config.train.optimizer, OPTIMIZERS),
        ("train.mixed_precision", config.train.mixed_precision, MIXED_PRECISIONS),
        (
            "mean_teacher.pseudo_label_source",
            config.mean_teacher.pseudo_label_source,
            PSEUDO_LABEL_SOURCES,
        ),
        (
            "mean_teacher.teacher_statistics",
            config.mean_teacher.teacher_statistics,
            constants.TEACHER_STATISTICS,
        ),
    ]
    for field, value, valid in checks:
        if value not in valid:
            raise ValueError(f"config.{field}={value!r} is not one of {list(valid)}")
    jit_compile = config.train.jit_compile
    if not (jit_compile == "auto" or isinstance(jit_compile, bool)):
        raise ValueError(
            f"config.train.jit_compile={jit_compile!r} is not one of {list(JIT_COMPILES)}"
        )
    for cell_type in config.data.cell_types:
        if cell_type not in constants.CELL_TYPES:
            raise ValueError(
                f"config.data.cell_types: {cell_type!r} is not one of {list(constants.CELL_TYPES)}"
            )
    share = config.mean_teacher.labelled_share
    if config.mean_teacher.enabled and not 0.0 < share <= 1.0:
        raise ValueError(f"config.mean_teacher.labelled_share={share} must be in (0, 1]")
    schedules.validate_schedule_fields(config)
    _check_learning_rates(config)
    if config.train.batch_size < 1 or config.train.epochs < 1:
        raise ValueError("config.train.batch_size and config.train.epochs must be positive")
    return config


def _check_learning_rates(config: ml_collections.ConfigDict) -> None:
    """Every learning rate >= 0: a negative one would climb the loss instead of descending it."""
    finetune = config.get("finetune", {})
    rates = [
        (f"train.learning_rates[{i}]", rate) for i, rate in enumerate(config.train.learning_rates)
    ]
    rates += [
        (f"finetune.{name}", finetune[name]) for name in FINETUNE_LEARNING_RATES if name in finetune
    ]
    for field, rate in rates:
        if not rate >= 0:  # also catches NaN
            raise ValueError(f"config.{field}={rate} must be >= 0")


def bundled_configs_dir() -> pathlib.Path:
    """The folder of the paper's config files, wherever the package is.

    An installed wheel carries the top-level `configs/` folder as `deepnoise_tf/configs` (setup.cfg
    maps it into the package); a checkout, and an editable install, read `configs/` itself, so an
    edit there takes effect without reinstalling.
    """
    packaged = pathlib.Path(str(importlib.resources.files("deepnoise_tf").joinpath("configs")))
    if packaged.is_dir():
        return packaged
    return pathlib.Path(__file__).resolve().parents[1] / "configs"


def bundled_config_names() -> list[str]:
    """The file names `--config` accepts on their own, e.g. `quickstart.py`."""
    return sorted(
        file.name for file in bundled_configs_dir().glob("*.py") if not file.name.startswith("_")
    )


def resolve_config_file(path: str) -> pathlib.Path:
    """`path` when it is a file; a bare file name (no folder) not found here is a bundled config.

    So `--config quickstart.py` works from any folder, also after a plain `pip install`, while a
    path (`configs/quickstart.py`, `./mine.py`) means exactly that file.

    Raises:
      FileNotFoundError: neither; for a bare name the message lists the bundled configs.
    """
    file = pathlib.Path(path)
    if file.is_file():
        return file
    if "/" in path or os.sep in path:
        raise FileNotFoundError(f"config file {path!r} does not exist")
    bundled = bundled_configs_dir() / (path if path.endswith(".py") else f"{path}.py")
    if bundled.is_file():
        return bundled
    names = bundled_config_names()
    raise FileNotFoundError(
        f"config file {path!r} does not exist here nor among the bundled configs"
        f"{did_you_mean(path, names)}: {', '.join(names)}"
    )


def load(spec: str) -> ml_collections.ConfigDict:
    """Loads `path/to/config.py[:variant]` or `bundled_name.py[:variant]` (the `--config` syntax).

    Raises:
      FileNotFoundError: no such file (`resolve_config_file`).
      VariantError: the file's `get_config` rejects the variant (the message names the file).
    """
    path, _, variant = spec.partition(":")
    file = resolve_config_file(path)
    module_spec = importlib.util.spec_from_file_location(f"deepnoise_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    try:
        return module.get_config(variant) if variant else module.get_config()
    except VariantError as error:
        raise VariantError(f"{path}: {error}") from error


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


def _unknown_field_message(path: str, valid: list[str]) -> str:
    """Names the closest fields (by spelling, or by last name), else the section's fields."""
    leaf = path.split(".")[-1]
    close = difflib.get_close_matches(path, valid, n=3, cutoff=0.8)
    close += [field for field in valid if field.split(".")[-1] == leaf and field not in close]
    if close:
        return f"unknown config field {path!r}; did you mean {' or '.join(map(repr, close))}?"
    section = path.split(".")[0] + "."
    siblings = [field for field in valid if field.startswith(section)]
    if siblings:
        return f"unknown config field {path!r}; the fields of {section[:-1]!r} are {', '.join(siblings)}"
    sections = sorted({field.split(".")[0] for field in valid})
    return f"unknown config field {path!r}; the sections are {', '.join(sections)}"


def _set_field(
    config: ml_collections.ConfigDict, path: str, value: Any, text: str | None = None
) -> None:
    """Sets the existing dotted field `path` (config unlocked), converting `value` to its type.

    `text` is the command-line spelling of `value`: a string field takes it as it is.
    """
    *parents, leaf = path.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    current = node[leaf]
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    elif isinstance(current, tuple) and not isinstance(value, tuple):
        value = (value,)
    elif isinstance(current, float) and isinstance(value, int):
        value = float(value)
    elif isinstance(current, str) and not isinstance(value, str) and text is not None:
        # a string field takes the text as typed; a field of any type (train.jit_compile) does not
        field = dict(node.items(preserve_field_references=True))[leaf]
        if not isinstance(field, ml_collections.FieldReference) or field.get_type() is not object:
            value = text
    try:
        node[leaf] = value
    except TypeError as error:
        shown = text if text is not None else repr(value)
        raise TypeError(
            f"config field {path!r} is of type {type(current).__name__} (now {current!r}); "
            f"cannot set it to {shown}"
        ) from error


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: dict[str, str]
) -> ml_collections.ConfigDict:
    """Sets dotted fields from their command-line text (a Python literal, or a bare string).

    Raises:
      KeyError: an unknown field; the message suggests the closest fields, or names the
        replacement of a renamed one (`config_renames`).
      TypeError: a value of the wrong type (e.g. "abc" for an int field).
    """
    valid = _field_paths(config)
    with config.unlocked():
        for path, text in overrides.items():
            if path in config_renames.RENAMED_FIELDS and path not in valid:
                length = config.train.get("schedule_epochs", 0) or config.train.get("epochs")
                raise KeyError(
                    config_renames.renamed_field_message(path, _parse_value(text), length)
                )
            if path not in valid:
                raise KeyError(_unknown_field_message(path, valid))
            _set_field(config, path, _parse_value(text), text)
    return config


def to_json(config: ml_collections.ConfigDict) -> str:
    """The config as JSON: written next to every run so it can be reproduced."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)
