"""The ablation study (paper Fig. 3A/3B plus two floors): its steps, their configs, runs and scores.

A training step trains one config in `DIR/<step>/` (a `training.run` folder, finished when it holds
`done.json`) and caches its logits of the reported wells in `DIR/<step>/evaluation/`
(`ablation_cache`): a step with that marker is never redone. A floor (`FLOOR_FITTERS`) is fitted on
the data alone. Derived steps average the cached logits of
their members and may add the plate prior. `run_ablation` runs what is missing, then scores every
cached step into `DIR/ablation.csv`, `DIR/ablation_by_cell_type.csv` and the Fig. 3A/3B charts.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

import ml_collections
import pandas as pd

from deepnoise_tf import baselines, data, evaluation, features, plots, scales
from deepnoise_tf import config as config_lib
from deepnoise_tf import workdir as workdir_lib
from deepnoise_tf.ablation_cache import (
    is_cached,
    load_step_logits,
    save_step_logits,
    unmark,
)
from deepnoise_tf.ablation_training import default_evaluator, default_trainer

TABLE_FILE = "ablation.csv"
CELL_TYPE_TABLE_FILE = "ablation_by_cell_type.csv"


@dataclasses.dataclass(frozen=True)
class Step:
    """One row of the ablation table.

    A training step trains `config_file[:variant]` plus `overrides` in `DIR/<name>`; a derived step
    averages the validation logits of `members` (paper, "Model ensemble") and may add the plate prior.
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

    @property
    def is_floor(self) -> bool:
        """A baseline fitted on the data alone (`FLOOR_FITTERS`), the same for every training seed."""
        return self.figure == "floor"


_MEAN_TEACHERS = ("mean_teacher", "mean_teacher_wide")
_PLATE = (("data.normalization", "plate"),)
STEPS = (
    Step("linear_floor", "floor", "logistic regression, plate-normalized channel mean/std"),
    Step("feature_baseline", "floor", "logistic regression, CellProfiler-style image features"),
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
FLOOR_STEPS = tuple(step.name for step in STEPS if step.is_floor)
# `--steps` of the single ablation by default: every step but the feature baseline (slower to fit).
DEFAULT_STEPS = tuple(name for name in STEP_NAMES if name != "feature_baseline")
STEPS_BY_NAME = {step.name: step for step in STEPS}
PAPER_ACCURACY = {step.name: step.paper_accuracy for step in STEPS}
FIGURE_3A = ("norm_cell_type", "norm_experiment", "norm_plate")
FIGURE_3B = ("norm_plate", "arcface", "mean_teacher", "ensemble", "postprocess")

# The scales (`--scale cpu|cpu_morphology|paper`) and why each setting is what it is: config code,
# `deepnoise_tf.scales`.
SCALES = scales.ABLATION_SCALES

# ------------------------------------------------------------------------------------------------
# Configs (pure)


def step_config(step: Step, *, scale: str = "cpu", overrides: dict[str, str] | None = None,
                configs_dir: str | pathlib.Path | None = None):  # fmt: skip
    """The config one training step runs: file[:variant], scale settings, user overrides, the step's own.

    The file is read from `configs_dir`, else from the bundled configs (`config.bundled_configs_dir`).
    The step's overrides come last, so an override for every step cannot undo what the step tests.
    """
    if not step.trains:
        raise ValueError(f"step {step.name!r} trains nothing")
    on_cpu = scale != "paper"
    variant = ",".join(part for part in ("cpu" if on_cpu else "", step.variant) if part)
    file = pathlib.Path(configs_dir or config_lib.bundled_configs_dir()) / step.config_file
    spec = str(file) + (f":{variant}" if variant else "")
    config = config_lib.load(spec)
    config = scales.apply_ablation_scale(config, scale)
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


def floor_config(config, report_split: str = "val"):
    """What a floor depends on: the data section and the split it reports (no training settings)."""
    report = {"split": baselines.check_report_split(report_split)}
    return ml_collections.ConfigDict({"data": config.data.to_dict(), "report": report})


def training_finished(step_folder) -> bool:
    return workdir_lib.read_done(step_folder) is not None  # training.run writes it last


def run_training_step(
    step: Step, config, root: pathlib.Path, *, trainer, evaluator, report_split: str = "val",
    frozen: bool = False,
) -> str:  # fmt: skip
    """Trains (or resumes) and evaluates one step unless its logits are cached; returns what it did.

    `evaluator(config, step_folder, report_split=...)` scores the wells of `report_split`. A step
    started with another config is refused (resuming would mix two configs in one model); with
    `frozen` (the protocol: one recipe across designs and seeds) a finished one is refused too.
    """
    step_folder = root / step.name
    check_recipe(step_folder, config, frozen=frozen)
    if is_cached(step_folder, report_split):
        return "cached"
    start = time.perf_counter()
    action = "evaluated"
    if not training_finished(step_folder):
        step_folder.mkdir(parents=True, exist_ok=True)
        action = "trained"
        trainer(config, str(step_folder))
    wells, logits = evaluator(config, str(step_folder), report_split=report_split)
    save_step_logits(step_folder, wells, logits, time.perf_counter() - start, report_split)
    return action


# Every floor: `fitter(config, report_split=...) -> (wells, logits)` of the wells of that split.
# linear_floor: 12 intensity moments per well; feature_baseline: CellProfiler-style image features.
FLOOR_FITTERS = {
    "linear_floor": baselines.linear_floor_logits,
    "feature_baseline": features.feature_baseline_logits,
}


def run_floor_step(
    name: str, config, root: pathlib.Path, *, report_split: str = "val", fitters=None
) -> str:
    """Fits the floor `name` unless it is cached under the same data settings; returns what it did."""
    step_folder = root / name
    record = floor_config(config, report_split)
    if is_cached(step_folder, report_split) and not workdir_lib.config_drift(step_folder, record):
        return "cached"
    unmark(step_folder)  # first: a fit killed after the new config.json must not look finished
    workdir_lib.write_config(step_folder, record)
    start = time.perf_counter()
    wells, logits = (fitters or FLOOR_FITTERS)[name](config, report_split=report_split)
    save_step_logits(step_folder, wells, logits, time.perf_counter() - start, report_split)
    return "fitted"


# ------------------------------------------------------------------------------------------------
# Scoring (pure numpy/pandas given the cached logits)


def step_predictions(
    step: Step, cached: dict, *, plate_design=None, method: str = "assign"
) -> tuple[pd.DataFrame, str]:
    """`(table, column)`: the treatment wells with `label` and the step's prediction in `column`.

    Single models and the ensemble: `raw_prediction`, the argmax over the siRNAs (no plate
    knowledge); `plate_prior`: `prediction`, the ensemble's logits through the plate prior (plate
    design learned from the training experiments, each experiment's assignment inferred).
    """
    if step.members:
        wells = cached[step.members[0]][0]
        logits = evaluation.ensemble_logits(
            [evaluation.align_wells(wells, *cached[name]) for name in step.members]
        )
    else:
        wells, logits = cached[step.name]
    if not step.plate_prior:
        method, plate_design = "none", None  # the prior is not wanted: skip its work
    table = evaluation.well_predictions(wells, logits, method=method, plate_design=plate_design)
    return table, "prediction" if step.plate_prior else "raw_prediction"


TABLE_COLUMNS = ("step", "figure", "description", "sources", "minutes", "paper_accuracy", "wells",
                 "correct", "accuracy")  # fmt: skip
CELL_TYPE_COLUMNS = ("step", "cell_type", "wells", "correct", "accuracy")


def score_steps(cached: dict, seconds: dict, *, plate_design=None, method: str = "assign"):
    """`(table, by_cell_type)` for every step whose inputs are in `cached`, in `STEPS` order."""
    rows, cell_rows = [], []
    for step in STEPS:
        needed = step.members or (step.name,)
        if not all(name in cached for name in needed):
            continue
        table, column = step_predictions(step, cached, plate_design=plate_design, method=method)
        accuracy = evaluation.accuracy_table(
            table["label"].to_numpy(), table[column].to_numpy(), table["cell_type"].to_numpy()
        )
        overall = accuracy.iloc[-1]
        minutes = sum(seconds.get(name, 0.0) for name in needed) / 60.0
        rows.append((step.name, step.figure, step.description, "+".join(needed), round(minutes, 2),
                     round(step.paper_accuracy / 100.0, 5), int(overall["wells"]),
                     int(overall["correct"]), float(overall["accuracy"])))  # fmt: skip
        for row in accuracy.iloc[:-1].itertuples(index=False):
            cell_rows.append(
                (step.name, row.group, int(row.wells), int(row.correct), float(row.accuracy))
            )
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    by_cell_type = pd.DataFrame(cell_rows, columns=list(CELL_TYPE_COLUMNS))
    return table, by_cell_type


def ordering_checks(table: pd.DataFrame) -> list[tuple[str, bool]]:
    """The paper's orderings that hold on the available rows: (statement, holds).

    One run, no interval: `ablation_statistics.ORDERINGS` are the same orderings with intervals.
    """
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
        deep = [name for name in accuracy if name not in FLOOR_STEPS]
        if deep:
            holds = all(accuracy[name] > accuracy["linear_floor"] for name in deep)
            checks.append(("every deep model above the linear floor", holds))
    return checks


def plot_figures(table: pd.DataFrame, root: pathlib.Path, subtitle: str = "") -> list[pathlib.Path]:
    """`figure_3a.png` and `figure_3b.png` in `root`: our accuracy next to the paper's."""
    suffix = f"\n{subtitle}" if subtitle else ""
    return [
        plots.plot_ablation_figure(
            table, FIGURE_3A, ["cell type", "experiment", "plate"], PAPER_ACCURACY,
            root / "figure_3a.png", "Fig. 3A: normalization (softmax Xception)" + suffix,
        ),
        plots.plot_ablation_figure(
            table, FIGURE_3B, ["Model 1\nsoftmax", "Model 2\nArcFace", "Model 3\nmean teacher",
                               "Model 4\nensemble", "+ plate\nprior"], PAPER_ACCURACY,
            root / "figure_3b.png", "Fig. 3B: components" + suffix,
        ),
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------------
# The whole ablation


def _log(message: str) -> None:
    print(f"[ablation] {message}", flush=True)


def training_configs(root: pathlib.Path, *, data_dir, builder, scale, overrides, configs_dir):
    """`(configs by step, data label)`: every training step's config, reading one built data set.

    At CPU scale without `data_dir`, the synthetic preset is generated once into `root/data`.
    """
    configs = {
        step.name: step_config(step, scale=scale, overrides=overrides, configs_dir=configs_dir)
        for step in STEPS
        if step.trains
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
    data.require_built(reference.data.data_dir or None, reference.data.builder)  # never download
    return configs, data_label


def steps_to_run(steps) -> list[str]:
    """The requested steps and the members they average, in `STEPS` order."""
    unknown = sorted(set(steps) - set(STEP_NAMES))
    if unknown:
        raise ValueError(f"unknown steps {unknown}; choose from {list(STEP_NAMES)}")
    wanted = {needed for name in steps for needed in STEPS_BY_NAME[name].members or (name,)}
    return [name for name in STEP_NAMES if name in wanted]


def check_recipe(step_folder: pathlib.Path, config, *, frozen: bool) -> None:
    """Raises ValueError when `step_folder` was made with another config than `config` and is
    unfinished, or, with `frozen`, at all: the protocol's numbers must come from one recipe."""
    drift = workdir_lib.config_drift(step_folder, config)
    if not drift or not (frozen or not training_finished(step_folder)):
        return
    why = ("the protocol's recipe is frozen: a rerun with another config would mix two recipes in "
           "one interval" if frozen else "resuming would mix two configs in one model")  # fmt: skip
    raise ValueError(f"{step_folder} was made with another config ({'; '.join(drift)}); {why}. "
                     "Delete that folder to redo the step, or use another --workdir.")  # fmt: skip


def run_steps(names, configs: dict, root: pathlib.Path, *, trainer, evaluator,
              report_split: str = "val", floor_root=None, floor_fitters=None, prefix: str = "",
              frozen: bool = False) -> None:  # fmt: skip
    """Runs (or finds cached) each named step, logging what it did and how long it took.

    Floors go to `floor_root` (default `root`): the protocol shares them between training seeds.
    `frozen`: `run_training_step`'s.
    """
    reference = configs["norm_plate"]
    start = time.perf_counter()
    for index, name in enumerate(names, 1):
        step_start = time.perf_counter()
        _log(f"{prefix}step {index}/{len(names)} {name}: started")
        if STEPS_BY_NAME[name].is_floor:
            action = run_floor_step(name, reference, pathlib.Path(floor_root or root),
                                    report_split=report_split, fitters=floor_fitters)  # fmt: skip
        else:
            action = run_training_step(STEPS_BY_NAME[name], configs[name], root, trainer=trainer,
                                       evaluator=evaluator, report_split=report_split,
                                       frozen=frozen)  # fmt: skip
        _log(f"{prefix}step {index}/{len(names)} {name}: {action} in "
             f"{time.perf_counter() - step_start:.0f} s (total {(time.perf_counter() - start) / 60:.1f} min)")  # fmt: skip


def load_cached(
    root: pathlib.Path, configs: dict, *, report_split: str = "val", floor_root=None
) -> tuple[dict, dict]:
    """`({step: (wells, logits)}, {step: seconds})` of every step cached for `report_split`."""
    cached, seconds = {}, {}
    for step in STEPS:
        folder = pathlib.Path(floor_root or root) / step.name if step.is_floor else root / step.name
        if not (step.trains or step.is_floor) or not is_cached(folder, report_split):
            continue
        config = (
            configs[step.name] if step.trains else floor_config(configs["norm_plate"], report_split)
        )
        drift = workdir_lib.config_drift(folder, config)
        if drift:  # a finished step keeps its result; its config.json says how it was made
            _log(f"note: {step.name} was trained with {'; '.join(drift)} (delete it to redo)")
        wells, logits, seconds[step.name] = load_step_logits(folder)
        cached[step.name] = (wells, logits)
    return cached, seconds


def report_plate_design(reference, cached: dict, report_split: str = "val"):
    """The plate design the plate prior uses, learned from labelled training experiments only.

    Reporting on the validation experiments leaves them out; reporting on the test split may use all
    of the train split. None when the post-processed step's members are not cached.
    """
    if not all(name in cached for name in STEPS_BY_NAME["postprocess"].members):
        return None
    excluded = tuple(reference.data.val_experiments) if report_split == "val" else ()
    return data.plate_design_from_split(reference.data.data_dir or None, reference.data.builder,
                                        "train", exclude_experiments=excluded)  # fmt: skip


def write_results(root, reference, cached, seconds, *, method, data_label) -> pd.DataFrame:
    """Scores the cached steps; writes the tables and charts, prints the table and the checks."""
    design = report_plate_design(reference, cached)
    table, by_cell_type = score_steps(cached, seconds, plate_design=design, method=method)
    workdir_lib.write_csv(table, root / TABLE_FILE)
    workdir_lib.write_csv(by_cell_type, root / CELL_TYPE_TABLE_FILE)
    evaluated = ", ".join(reference.data.val_experiments)
    plot_figures(table, root, subtitle=f"{data_label}; held out: {evaluated}")
    with pd.option_context("display.width", 160, "display.max_colwidth", 50):
        print(table.to_string(index=False, float_format=lambda value: f"{value:.4f}"), flush=True)
    for statement, holds in ordering_checks(table):
        _log(f"{'holds' if holds else 'FAILS'}: {statement}")
    return table


def run_ablation(
    workdir, *, data_dir: str = "", builder: str = "", scale: str = "cpu", steps=DEFAULT_STEPS,
    overrides: dict[str, str] | None = None, configs_dir=None, method: str = "assign",
    trainer=default_trainer, evaluator=default_evaluator,
) -> pd.DataFrame:  # fmt: skip
    """Runs the requested steps (and the trainings they need), then scores every cached step.

    `trainer(config, step_folder)` and `evaluator(config, step_folder, report_split="val") ->
    (wells, logits)` are replaceable (tests hand in stand-ins). Returns the table written to `DIR/ablation.csv`.
    """
    root = pathlib.Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    names = steps_to_run(steps)
    configs, data_label = training_configs(
        root, data_dir=data_dir, builder=builder, scale=scale, overrides=overrides,
        configs_dir=configs_dir,
    )  # fmt: skip
    start = time.perf_counter()
    run_steps(names, configs, root, trainer=trainer, evaluator=evaluator)
    cached, seconds = load_cached(root, configs)
    reference = configs["norm_plate"]
    table = write_results(root, reference, cached, seconds, method=method, data_label=data_label)
    _log(f"wrote {root / TABLE_FILE}, {root / 'figure_3a.png'}, {root / 'figure_3b.png'} "
         f"({(time.perf_counter() - start) / 60:.1f} min)")  # fmt: skip
    return table
