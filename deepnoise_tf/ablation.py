"""`python -m deepnoise_tf.ablation --workdir DIR [--data_dir TFDS_DIR] [--scale SCALE] [--steps ...]`.

The paper's two ablations on any `rxrx1` data set, scored on the labelled held-out experiments
(`config.data.val_experiments`, never trained on):

- Figure 3A, normalization: Model 1 (softmax Xception, `configs/model1_softmax.py`) with cell-type,
  experiment (batch) and plate statistics (paper, RxRx1: 51.5 / 62.9 / 74.6 % top-1);
- Figure 3B, components: Model 1 -> Model 2 ArcFace -> Model 3 mean teacher -> Model 4 ensemble of the
  Xception and Xception-Wide mean teachers (logits averaged) -> + plate-prior post-processing
  (paper: 74.6 / 85.5 / 90.1 / 95.5 / 99.6 %);
- `linear_floor`: a multinomial logistic regression on per-channel intensity features (plate-normalized
  mean and std of each well), the floor every deep model must clear.

Each training goes to `DIR/<step>/` (a `deepnoise_tf.train` workdir: rerunning resumes it, and a
finished step is never redone); its validation logits are cached next to it. The table is
`DIR/ablation.csv` (per cell type: `DIR/ablation_by_cell_type.csv`), the charts
`DIR/figure_3a.png` and `DIR/figure_3b.png`.

`--scale cpu` runs every config's `:cpu` variant with `CPU_SETTINGS` (without `--data_dir`: the
synthetic `ablation` preset, generated into `DIR/data`): 38 CPU-minutes, about 50 minutes on 2
busy cores (docs/ablation.md). `--scale cpu_morphology` does the same on the `ablation_morphology`
preset (a phenotype of cell shape) for 64 epochs at a third of the CPU learning rate, with the
ArcFace margin ramped in over 16 and the mean teachers trained on labelled data alone for the
first 32 (the paper's order: ArcFace first, then consistency): six such trainings take about 50
minutes on 2 cores as parallel processes (one `--steps` each, same DIR).
`--scale paper` runs the paper configs as they are (4 GPUs, days). Any `--config.a.b=value` applies to
every step (e.g. `--config.train.epochs=1` for a smoke run).

Model 4 here is the ensemble of the two mean teachers; the paper's Model 4 also retrains the students
with pseudo labels from that ensemble (pSoftmax), which this ablation leaves out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

import ml_collections
import numpy as np
import pandas as pd
import scipy.optimize

from deepnoise_tf import config as config_lib
from deepnoise_tf import constants, metrics

CONFIGS_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
LOGITS_FILE = "ablation_logits.npz"  # a step's validation logits: its "done" marker
TABLE_FILE = "ablation.csv"
CELL_TYPE_TABLE_FILE = "ablation_by_cell_type.csv"


@dataclasses.dataclass(frozen=True)
class Step:
    """One row of the ablation table.

    A training step trains `config_file[:variant]` plus `overrides` in `DIR/<name>`; a derived step
    averages the validation logits of `members` (SPEC 8) and may add the plate prior.
    """

    name: str
    figure: str  # "3A", "3B", "3A+3B", "floor" or "member" (trained for the ensemble only)
    description: str
    config_file: str = ""
    variant: str = ""
    overrides: tuple[tuple[str, object], ...] = ()
    members: tuple[str, ...] = ()
    plate_prior: bool = False
    paper_accuracy: float = float("nan")  # % top-1 on RxRx1 (paper Fig. 3)

    @property
    def trains(self) -> bool:
        return bool(self.config_file)


_MEAN_TEACHERS = ("mean_teacher", "mean_teacher_wide")
_PLATE = (("data.normalization", "plate"),)
STEPS = (
    Step("linear_floor", "floor", "logistic regression, plate-normalized channel mean/std"),
    Step(
        "norm_cell_type", "3A", "Model 1, cell-type normalization", "model1_softmax.py",
        overrides=(("data.normalization", "cell_type"),), paper_accuracy=51.549,
    ),
    Step(
        "norm_experiment", "3A", "Model 1, experiment normalization", "model1_softmax.py",
        overrides=(("data.normalization", "experiment"),), paper_accuracy=62.901,
    ),
    Step(
        "norm_plate", "3A+3B", "Model 1: softmax Xception, plate normalization", "model1_softmax.py",
        overrides=_PLATE, paper_accuracy=74.580,
    ),
    # "The following ablation studies were all based on the plate-based normalization strategy."
    Step("arcface", "3B", "Model 2: ArcFace", "model2_arcface.py", overrides=_PLATE,
         paper_accuracy=85.542),
    Step("mean_teacher", "3B", "Model 3: ArcFace + mean teacher", "model3_mean_teacher.py",
         overrides=_PLATE, paper_accuracy=90.145),
    Step("mean_teacher_wide", "member", "ArcFace + mean teacher, Xception-Wide",
         "model3_mean_teacher.py", variant="wide", overrides=_PLATE),
    Step("ensemble", "3B", "Model 4: Xception + Xception-Wide teachers", members=_MEAN_TEACHERS,
         paper_accuracy=95.535),
    Step("postprocess", "3B", "Model 4 + plate prior", members=_MEAN_TEACHERS, plate_prior=True,
         paper_accuracy=99.596),
)  # fmt: skip
STEP_NAMES = tuple(step.name for step in STEPS)
FIGURE_3A = ("norm_cell_type", "norm_experiment", "norm_plate")
FIGURE_3B = ("norm_plate", "arcface", "mean_teacher", "ensemble", "postprocess")

# On top of each config's `:cpu` variant, which keeps its image size, width, epochs, learning rates
# and mean-teacher schedule (config.cpu_scale, tuned on the quickstart data). The `ablation` preset
# has 2x the classes and 3x the labelled wells of `quickstart` (64 siRNAs; 12 training and 4
# validation experiments, 256 validation treatment wells), so differences of a few points are
# measurable. 32 px images were tried and are too small: at an output stride of 32 the Xception
# exit flow sees one pixel, and every deep model stayed near 10 % (docs/ablation.md).
# `--scale cpu_morphology` swaps in the shape phenotype (`ablation_morphology`); its models were
# still climbing at 32 epochs, and two runs on near-identical inputs differed by up to 0.2, so it
# trains 64 epochs (learning-rate steps at 48 and 58). Trained from scratch on shape, ArcFace stalls
# under its full margin and trails softmax at cpu_scale's 3e-3, hence the margin warm-up and a third
# of the learning rate for every step (measured in docs/ablation.md, "ArcFace at CPU scale"). With
# consistency from the start the Xception mean teacher ended below ArcFace alone; the paper's
# labelled-only phase first fixed it ("Mean teacher at CPU scale" there).
CPU_SETTINGS = {
    "data.synthetic_preset": "ablation",
}
SCALE_SETTINGS = {
    "cpu": CPU_SETTINGS,
    "cpu_morphology": {
        **CPU_SETTINGS,
        "data.synthetic_preset": "ablation_morphology",
        "train.epochs": 64,
        "train.learning_rates": (1e-3, 3.3e-4, 3.3e-5),
        "train.lr_epoch_boundaries": (48, 58),
        "model.arcface_margin_warmup_epochs": 16.0,
        "mean_teacher.consistency_start_epoch": 32.0,
    },
    "paper": {},
}
SCALES = tuple(SCALE_SETTINGS)

# ------------------------------------------------------------------------------------------------
# Configs (pure)


def step_config(
    step: Step,
    *,
    scale: str = "cpu",
    overrides: dict[str, str] | None = None,
    configs_dir: str | pathlib.Path = CONFIGS_DIR,
):
    """The config one training step runs: file[:variant], scale settings, user overrides, the step's own.

    The step's overrides come last, so an override for every step cannot undo what the step tests.
    """
    if not step.trains:
        raise ValueError(f"step {step.name!r} trains nothing")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    on_cpu = scale != "paper"
    variant = "_".join(part for part in ("cpu" if on_cpu else "", step.variant) if part)
    spec = str(pathlib.Path(configs_dir) / step.config_file) + (f":{variant}" if variant else "")
    config = config_lib.load(spec)
    settings = SCALE_SETTINGS[scale]
    config = config_lib.apply_overrides(config, {k: repr(v) for k, v in settings.items()})
    config = config_lib.apply_overrides(config, dict(overrides or {}))
    config = config_lib.apply_overrides(config, {k: repr(v) for k, v in step.overrides})
    return config_lib.validate(config)


def with_data(config, data_dir: str, builder: str):
    """The config reading `builder` from `data_dir` (and generating nothing)."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.data.data_dir = str(data_dir)
        config.data.builder = builder or config.data.builder
        config.data.synthetic_preset = ""
    return config


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted paths where two config dicts differ."""
    paths = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            paths += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            paths.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return paths


# ------------------------------------------------------------------------------------------------
# The linear floor: multinomial logistic regression on intensity features


def intensity_features(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """`[N, 2C]`: per channel, mean and std of the normalized image (x - mean) / std (SPEC 2).

    Computed from the raw image's moments (normalization is affine per channel).
    """
    pixel_mean = images.mean(axis=(1, 2), dtype=np.float64)
    pixel_std = images.std(axis=(1, 2), dtype=np.float64)
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    return np.concatenate([(pixel_mean - mean) / std, pixel_std / std], axis=1)


def softmax_regression_objective(parameters, features, targets, num_classes: int, l2: float):
    """Mean cross-entropy of `softmax(features @ W + b)` plus `l2 / 2 * |W|^2`, and its gradient.

    `parameters` is `[W.ravel(), b]` with `W` of shape `[D, K]`; `targets` are class indices 0..K-1.
    """
    count, dims = features.shape
    weights = parameters[: dims * num_classes].reshape(dims, num_classes)
    bias = parameters[dims * num_classes :]
    logits = features @ weights + bias
    logits = logits - logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(count), targets].mean() + 0.5 * l2 * np.sum(weights**2)
    residual = np.exp(log_probs)
    residual[np.arange(count), targets] -= 1.0
    residual /= count
    gradient = np.concatenate(
        [(features.T @ residual + l2 * weights).ravel(), residual.sum(axis=0)]
    )
    return loss, gradient


@dataclasses.dataclass(frozen=True)
class SoftmaxRegression:
    """A fitted multinomial logistic regression over standardized features."""

    weights: np.ndarray  # [D, K]
    bias: np.ndarray  # [K]
    classes: np.ndarray  # [K] the label of each column
    feature_mean: np.ndarray  # [D]
    feature_scale: np.ndarray  # [D]

    def logits(self, features: np.ndarray) -> np.ndarray:
        standardized = (np.asarray(features, np.float64) - self.feature_mean) / self.feature_scale
        return standardized @ self.weights + self.bias

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        logits = self.logits(features)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)


def fit_softmax_regression(
    features: np.ndarray, labels: np.ndarray, *, l2: float = 1e-3, max_iterations: int = 2000
) -> SoftmaxRegression:
    """Fits by L-BFGS (the objective is convex); features are standardized first.

    `l2` is fixed, not tuned: tuning it on the validation experiments would let the floor peek.
    """
    features = np.asarray(features, np.float64)
    classes, targets = np.unique(np.asarray(labels), return_inverse=True)
    feature_mean = features.mean(axis=0)
    feature_scale = np.where(features.std(axis=0) > 0, features.std(axis=0), 1.0)
    standardized = (features - feature_mean) / feature_scale
    dims, num_classes = standardized.shape[1], len(classes)
    result = scipy.optimize.minimize(
        softmax_regression_objective,
        np.zeros(dims * num_classes + num_classes),
        args=(standardized, targets, num_classes, l2),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iterations},
    )
    parameters = result.x
    return SoftmaxRegression(
        weights=parameters[: dims * num_classes].reshape(dims, num_classes),
        bias=parameters[dims * num_classes :],
        classes=classes,
        feature_mean=feature_mean,
        feature_scale=feature_scale,
    )


ABSENT_CLASS_LOGIT = -1e4  # classes never seen in training: finite, so averaging stays defined


def full_class_logits(model: SoftmaxRegression, features: np.ndarray) -> np.ndarray:
    """`[N, 1139]` logits: the model's classes in their columns, the rest `ABSENT_CLASS_LOGIT`."""
    logits = np.full((len(features), constants.NUM_CLASSES), ABSENT_CLASS_LOGIT)
    logits[:, model.classes] = model.logits(features)
    return logits


def well_intensity_features(config, split: str = "train"):
    """`(wells, features)`: every well of `split` (cell types of the config), features averaged over sites."""
    import tensorflow as tf

    from deepnoise_tf import data

    data_config = config.data.copy_and_resolve_references()
    with data_config.unlocked():
        data_config.normalization = "plate"  # the floor always sees plate-normalized features
        data_config.data_dir = data_config.data_dir or None
    sites = data.load_sites(data_config, split, with_labels=True, with_ids=True)
    sites = data.select_experiments(sites, cell_types=tuple(config.data.cell_types))
    columns = ("id_code", "experiment", "plate", "cell_type", "well_type", "sirna")
    values = {name: [] for name in columns}
    features = []
    # Small batches: np.std makes a float64 copy (16 native 512 px sites: 200 MB).
    for batch in sites.batch(16).prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
        features.append(intensity_features(batch["image"], batch["plate_mean"], batch["plate_std"]))
        for name in columns:
            values[name].append(batch[name])
    table = pd.DataFrame({name: np.concatenate(parts) for name, parts in values.items()})
    for name in ("id_code", "experiment", "cell_type", "well_type"):
        table[name] = [value.decode() for value in table[name]]
    wells, well_features = metrics.well_logits(
        np.concatenate(features), table["id_code"].to_numpy()
    )
    first = table.drop_duplicates("id_code").set_index("id_code").loc[wells].reset_index()
    first = first.rename(columns={"sirna": "label"})
    first["label"] = first["label"].astype(np.int64)
    return first, well_features


def linear_floor_logits(config) -> tuple[pd.DataFrame, np.ndarray]:
    """Fits on the wells of the training experiments; returns the validation wells and their logits."""
    wells, features = well_intensity_features(config)
    held_out = wells["experiment"].isin(list(config.data.val_experiments)).to_numpy()
    model = fit_softmax_regression(features[~held_out], wells["label"].to_numpy()[~held_out])
    return wells[held_out].reset_index(drop=True), full_class_logits(model, features[held_out])


# ------------------------------------------------------------------------------------------------
# Running and caching steps

WELL_FIELDS = ("id_code", "experiment", "plate", "cell_type", "well_type", "label")


def save_logits(
    path: pathlib.Path, wells: pd.DataFrame, logits: np.ndarray, seconds: float
) -> None:
    """Writes atomically, so an interrupted write never looks like a finished step."""
    partial = path.with_name(path.name + ".partial.npz")
    arrays = {name: wells[name].to_numpy() for name in WELL_FIELDS}
    arrays = {
        name: (value.astype(str) if value.dtype == object else value)
        for name, value in arrays.items()
    }
    np.savez(partial, logits=np.asarray(logits, np.float32), seconds=seconds, **arrays)
    partial.replace(path)


def load_logits(path: pathlib.Path) -> tuple[pd.DataFrame, np.ndarray, float]:
    with np.load(path) as stored:
        wells = pd.DataFrame({name: stored[name] for name in WELL_FIELDS})
        return wells, stored["logits"].astype(np.float64), float(stored["seconds"])


def config_drift(workdir: pathlib.Path, config) -> list[str]:
    """Fields where the config a step's folder was started with differs from `config`."""
    path = workdir / "config.json"
    if not path.is_file():
        return []
    return config_differences(json.loads(path.read_text()), json.loads(config_lib.to_json(config)))


def _drift_error(workdir: pathlib.Path, drift: list[str]) -> ValueError:
    return ValueError(
        f"{workdir} was started with another config ({'; '.join(drift)}). Delete that folder to "
        "redo the step, or use another --workdir."
    )


def _training_finished(workdir: pathlib.Path) -> bool:
    return (workdir / "checkpoints" / "last.weights.h5").is_file()  # written after fit() returns


def default_trainer(config, workdir: str) -> None:
    import keras

    from deepnoise_tf import train

    train.train(config, workdir)
    keras.backend.clear_session()  # six trainings in one process: free the last one's graphs


def default_evaluator(config, workdir: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Validation wells and site-averaged logits of the trained workdir's export.

    Also draws the run's training curves (`DIR/<step>/report/`, `deepnoise_tf.report`).
    """
    from deepnoise_tf import report

    report.write_report(workdir, evaluate=False)
    return report.experiment_well_logits(report.workdir_export(workdir), config)


def run_training_step(step: Step, config, root: pathlib.Path, *, trainer, evaluator) -> str:
    """Trains (or resumes) and evaluates one step unless its logits are cached; returns what it did."""
    workdir = root / step.name
    cache = workdir / LOGITS_FILE
    drift = config_drift(workdir, config)
    if drift and not _training_finished(workdir):
        raise _drift_error(workdir, drift)  # resuming would mix two configs in one model
    if cache.is_file():
        return "cached"
    start = time.perf_counter()
    action = "evaluated"
    if not _training_finished(workdir):
        workdir.mkdir(parents=True, exist_ok=True)
        action = "trained"
        trainer(config, str(workdir))
    wells, logits = evaluator(config, str(workdir))
    save_logits(cache, wells, logits, time.perf_counter() - start)
    return action


def floor_config(config):
    """What the linear floor depends on: the data section only (no training settings)."""
    return ml_collections.ConfigDict({"data": config.data.to_dict()})


def run_floor_step(config, root: pathlib.Path) -> str:
    workdir = root / "linear_floor"
    cache = workdir / LOGITS_FILE
    if cache.is_file() and not config_drift(workdir, floor_config(config)):
        return "cached"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config_lib.to_json(floor_config(config)))
    start = time.perf_counter()
    wells, logits = linear_floor_logits(config)
    save_logits(cache, wells, logits, time.perf_counter() - start)
    return "fitted"


# ------------------------------------------------------------------------------------------------
# Scoring (pure numpy/pandas given the cached logits)


def ensemble_logits(
    members: list[tuple[pd.DataFrame, np.ndarray]],
) -> tuple[pd.DataFrame, np.ndarray]:
    """Wells common to all members (first member's order) and the mean of their logits (SPEC 8)."""
    wells = members[0][0]
    total = np.zeros_like(members[0][1])
    for member_wells, member_logits in members:
        position = pd.Series(np.arange(len(member_wells)), index=member_wells["id_code"].to_numpy())
        missing = set(wells["id_code"]) - set(position.index)
        if missing:
            raise ValueError(
                f"ensemble members were evaluated on different wells ({len(missing)} missing)"
            )
        total += member_logits[position.loc[wells["id_code"]].to_numpy()]
    return wells, total / len(members)


def step_predictions(
    step: Step, cached: dict, *, sirna_groups=None, method: str = "assign"
) -> pd.DataFrame:
    """Treatment wells with the step's predicted siRNA (`prediction`) and `label`.

    Single models and the ensemble: argmax over the siRNAs (no plate knowledge); `plate_prior`: the
    ensemble's logits through `postprocess` (groups from the training experiments, rotation inferred).
    """
    from deepnoise_tf import report

    if step.members:
        wells, logits = ensemble_logits([cached[name] for name in step.members])
    else:
        wells, logits = cached[step.name]
    if not step.plate_prior:
        method, sirna_groups = "none", None  # the prior is not wanted: skip its work
    table = report.well_predictions(wells, logits, method=method, sirna_groups=sirna_groups)
    table["prediction"] = table["sirna"] if step.plate_prior else table["raw_prediction"]
    return table


def score_steps(cached: dict, seconds: dict, *, sirna_groups=None, method: str = "assign"):
    """`(table, by_cell_type)` for every step whose inputs are in `cached`, in `STEPS` order."""
    rows, cell_rows = [], []
    for step in STEPS:
        needed = step.members or (step.name,)
        if not all(name in cached for name in needed):
            continue
        table = step_predictions(step, cached, sirna_groups=sirna_groups, method=method)
        accuracy = metrics.accuracy_table(
            table["label"].to_numpy(), table["prediction"].to_numpy(), table["cell_type"].to_numpy()
        )
        overall = accuracy.iloc[-1]
        minutes = sum(seconds.get(name, 0.0) for name in needed) / 60.0
        rows.append(
            {
                "step": step.name,
                "figure": step.figure,
                "description": step.description,
                "sources": "+".join(needed),
                "minutes": round(minutes, 2),
                "paper_accuracy": round(step.paper_accuracy / 100.0, 5),
                "wells": int(overall["wells"]),
                "correct": int(overall["correct"]),
                "accuracy": float(overall["accuracy"]),
            }
        )
        for row in accuracy.iloc[:-1].itertuples(index=False):
            cell_rows.append(
                (step.name, row.group, int(row.wells), int(row.correct), float(row.accuracy))
            )
    table = pd.DataFrame(rows, columns=["step", "figure", "description", "sources", "minutes",
                                        "paper_accuracy", "wells", "correct", "accuracy"])  # fmt: skip
    by_cell_type = pd.DataFrame(
        cell_rows, columns=["step", "cell_type", "wells", "correct", "accuracy"]
    )
    return table, by_cell_type


def ordering_checks(table: pd.DataFrame) -> list[tuple[str, bool]]:
    """The paper's orderings that hold on the available rows: (statement, holds)."""
    accuracy = dict(zip(table["step"], table["accuracy"], strict=True))
    checks = []
    if all(name in accuracy for name in FIGURE_3A):
        values = [accuracy[name] for name in FIGURE_3A]
        checks.append(
            ("3A: plate > experiment > cell-type normalization", values[0] < values[1] < values[2])
        )
    ladder = [name for name in FIGURE_3B if name in accuracy]
    if len(ladder) > 1:
        values = [accuracy[name] for name in ladder]
        holds = all(b >= a for a, b in zip(values, values[1:], strict=False))
        checks.append(("3B: each step at least as good as the one before", holds))
    if "linear_floor" in accuracy:
        deep = [name for name in accuracy if name != "linear_floor"]
        if deep:
            holds = all(accuracy[name] > accuracy["linear_floor"] for name in deep)
            checks.append(("every deep model above the linear floor", holds))
    return checks


# ------------------------------------------------------------------------------------------------
# Charts


def plot_figure(table: pd.DataFrame, steps, labels, path, title: str) -> pathlib.Path:
    """Bars of our accuracy next to the paper's (RxRx1), the linear floor as a dashed line."""
    from deepnoise_tf.report import import_pyplot, save_figure

    pyplot = import_pyplot()
    indexed = table.set_index("step")
    ours = [100 * indexed["accuracy"].get(name, np.nan) for name in steps]
    paper = [next(step.paper_accuracy for step in STEPS if step.name == name) for name in steps]
    figure, axis = pyplot.subplots(figsize=(1.5 * len(steps) + 2.5, 4.2))
    positions = np.arange(len(steps))
    bars = axis.bar(positions - 0.2, ours, 0.4, label="this run", color="#3a7dc9")
    axis.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.1f}" for v in ours], fontsize=8)
    reference = axis.bar(
        positions + 0.2, paper, 0.4, label="paper (RxRx1)", color="#cccccc", hatch="//"
    )
    axis.bar_label(reference, labels=[f"{v:.1f}" for v in paper], fontsize=8, color="#555555")
    if "linear_floor" in indexed.index:
        floor = 100 * indexed.loc["linear_floor", "accuracy"]
        axis.axhline(
            floor,
            color="#c0392b",
            linestyle="--",
            linewidth=1.2,
            label=f"linear floor ({floor:.1f})",
        )
    axis.set_xticks(positions, labels)
    axis.set_ylabel("top-1 accuracy (%)")
    axis.set_ylim(0, 125)  # room above the 100 % bars for the legend
    axis.set_yticks(range(0, 101, 20))
    axis.set_title(title)
    axis.legend(fontsize=8, loc="upper left", ncol=3)
    figure.tight_layout()
    return save_figure(figure, path)


def plot_figures(table: pd.DataFrame, root: pathlib.Path, subtitle: str = "") -> list[pathlib.Path]:
    suffix = f"\n{subtitle}" if subtitle else ""
    return [
        plot_figure(table, FIGURE_3A, ["cell type", "experiment", "plate"], root / "figure_3a.png",
                    "Fig. 3A: normalization (softmax Xception)" + suffix),
        plot_figure(table, FIGURE_3B, ["Model 1\nsoftmax", "Model 2\nArcFace", "Model 3\nmean teacher",
                                       "Model 4\nensemble", "+ plate\nprior"], root / "figure_3b.png",
                    "Fig. 3B: components" + suffix),
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------------
# The whole ablation


def _log(message: str) -> None:
    print(f"[ablation] {message}", flush=True)


def run_ablation(
    workdir,
    *,
    data_dir: str = "",
    builder: str = "",
    scale: str = "cpu",
    steps=STEP_NAMES,
    overrides: dict[str, str] | None = None,
    configs_dir=CONFIGS_DIR,
    method: str = "assign",
    trainer=default_trainer,
    evaluator=default_evaluator,
) -> pd.DataFrame:
    """Runs the requested steps (and the trainings they need), then scores every cached step.

    Returns the table written to `DIR/ablation.csv`.
    """
    root = pathlib.Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(steps) - set(STEP_NAMES))
    if unknown:
        raise ValueError(f"unknown steps {unknown}; choose from {list(STEP_NAMES)}")
    by_name = {step.name: step for step in STEPS}
    training_steps = [step for step in STEPS if step.trains]
    configs = {
        step.name: step_config(step, scale=scale, overrides=overrides, configs_dir=configs_dir)
        for step in training_steps
    }
    reference = configs["norm_plate"]
    data_label = reference.data.builder
    if not data_dir and reference.data.synthetic_preset:
        from deepnoise_tf import synthetic

        data_dir = str(root / "data")
        _log(f"synthetic '{reference.data.synthetic_preset}' data set in {data_dir} (written once)")
        builder = synthetic.prepare_tfds(data_dir, preset=reference.data.synthetic_preset)
        data_label = f"synthetic '{reference.data.synthetic_preset}' preset"
    if data_dir or builder:
        configs = {
            name: with_data(config, data_dir or config.data.data_dir, builder)
            for name, config in configs.items()
        }
    reference = configs["norm_plate"]
    from deepnoise_tf import report

    report.require_prepared(reference)  # never let tfds.load start a download

    wanted = []
    for name in steps:
        for needed in by_name[name].members or (name,):
            if needed not in wanted:
                wanted.append(needed)
    wanted = [step.name for step in STEPS if step.name in wanted]  # canonical order
    start = time.perf_counter()
    for index, name in enumerate(wanted, 1):
        step_start = time.perf_counter()
        _log(f"step {index}/{len(wanted)} {name}: started")
        if name == "linear_floor":
            action = run_floor_step(reference, root)
        else:
            action = run_training_step(
                by_name[name], configs[name], root, trainer=trainer, evaluator=evaluator
            )
        _log(f"step {index}/{len(wanted)} {name}: {action} in {time.perf_counter() - step_start:.0f} s "
             f"(total {(time.perf_counter() - start) / 60:.1f} min)")  # fmt: skip

    cached, seconds = {}, {}
    for step in STEPS:
        path = root / step.name / LOGITS_FILE
        if (step.trains or step.name == "linear_floor") and path.is_file():
            drift = config_drift(
                root / step.name, configs[step.name] if step.trains else floor_config(reference)
            )
            if drift:  # a finished step keeps its result; its config.json says how it was made
                _log(f"note: {step.name} was trained with {'; '.join(drift)} (delete it to redo)")
            wells, logits, seconds[step.name] = load_logits(path)
            cached[step.name] = (wells, logits)
    groups = None
    if all(name in cached for name in by_name["postprocess"].members):
        groups = report.training_sirna_groups(reference)
    table, by_cell_type = score_steps(cached, seconds, sirna_groups=groups, method=method)
    table.to_csv(root / TABLE_FILE, index=False)
    by_cell_type.to_csv(root / CELL_TYPE_TABLE_FILE, index=False)
    evaluated = ", ".join(reference.data.val_experiments)
    plot_figures(table, root, subtitle=f"{data_label}; held out: {evaluated}")
    with pd.option_context("display.width", 160, "display.max_colwidth", 50):
        print(table.to_string(index=False, float_format=lambda value: f"{value:.4f}"), flush=True)
    for statement, holds in ordering_checks(table):
        _log(f"{'holds' if holds else 'FAILS'}: {statement}")
    _log(f"wrote {root / TABLE_FILE}, {root / 'figure_3a.png'}, {root / 'figure_3b.png'} "
         f"({(time.perf_counter() - start) / 60:.1f} min)")  # fmt: skip
    return table


def parse_command_line(argv):
    """The flags below plus any number of `--config.path=value`, applied to every training step."""
    parser = argparse.ArgumentParser(
        prog="python -m deepnoise_tf.ablation", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--workdir", required=True, help="where steps, tables and charts go")
    parser.add_argument(
        "--data_dir", default="", help="TFDS data dir with rxrx1 (cpu scale: optional)"
    )
    parser.add_argument(
        "--builder", default="", help="TFDS name/config, e.g. rxrx1/128 (default: the config's)"
    )
    parser.add_argument("--scale", choices=SCALES, default="cpu")
    parser.add_argument("--steps", nargs="+", choices=STEP_NAMES, default=list(STEP_NAMES))
    parser.add_argument("--configs_dir", default=str(CONFIGS_DIR))
    parser.add_argument("--postprocess", choices=("assign", "balance"), default="assign")
    # Overrides are taken out first: argparse reads a value with a space, e.g. a tuple, as a positional.
    overrides = {}
    for argument in argv:
        if argument.startswith("--config."):
            if "=" not in argument:
                parser.error(f"{argument!r}: overrides look like --config.train.epochs=3")
            path, _, value = argument[len("--config.") :].partition("=")
            overrides[path] = value
    known = parser.parse_args(
        [argument for argument in argv if not argument.startswith("--config.")]
    )
    return known, overrides


def main(argv=None) -> pd.DataFrame:
    arguments, overrides = parse_command_line(sys.argv[1:] if argv is None else argv)
    return run_ablation(
        arguments.workdir,
        data_dir=arguments.data_dir,
        builder=arguments.builder,
        scale=arguments.scale,
        steps=tuple(arguments.steps),
        overrides=overrides,
        configs_dir=arguments.configs_dir,
        method=arguments.postprocess,
    )


if __name__ == "__main__":
    main()
