"""DeepNoise end to end (paper, Algorithm 1): the stages of `deepnoise_tf.stages`, in order.

Two widths are trained, evaluated and ensembled; pseudo-label rounds retrain them; the best round
(by the post-processed ensemble's validation accuracy) is optionally fine-tuned per cell type and
exported. `python -m deepnoise_tf.pipeline` is the command; `docs/pipeline.md` lists the folders.
"""

from __future__ import annotations

import copy
import os
import time

import pandas as pd

from deepnoise_tf import data, pipeline_config, pseudo_labels, resume, stages, training
from deepnoise_tf import workdir as workdir_lib

ENSEMBLE = stages.ENSEMBLE
RESULTS_FILE = "results.csv"
RESULTS_BY_CELL_TYPE_FILE = "results_by_cell_type.csv"
SUMMARY_FILE = "summary.json"


def labelled_plate_design(config):
    """The plate design learned from the labelled training wells (validation experiments left out)."""
    design = data.plate_design_from_split(
        config.data.data_dir, config.data.builder, "train",
        exclude_experiments=tuple(config.data.val_experiments),
    )  # fmt: skip
    if design is None:
        raise ValueError(
            "no labelled treatment wells outside the validation experiments: no plate design"
        )
    return design


def results_table(evaluations: list[dict]) -> pd.DataFrame:
    """All accuracy rows, rounds in order."""
    rows = [row for evaluation in evaluations for row in evaluation["rows"]]
    columns = ["round", "model", "postprocess", "cell_type", "accuracy", "correct", "wells"]
    return pd.DataFrame(rows, columns=columns)


def summary_table(results: pd.DataFrame, members, method: str) -> pd.DataFrame:
    """One row per round: each teacher, the ensemble and the post-processed ensemble (overall)."""
    overall = results[results["cell_type"] == "all"]
    wanted = [(member, "none") for member in members] + [(ENSEMBLE, "none")]
    if method != "none":
        wanted.append((ENSEMBLE, method))
    table = {}
    for model, post in wanted:
        column = model if post == "none" else f"{model}+{post}"
        selected = overall[(overall["model"] == model) & (overall["postprocess"] == post)]
        table[column] = selected.set_index("round")["accuracy"]
    frame = pd.DataFrame(table)
    return frame.loc[list(dict.fromkeys(overall["round"]))]


def round_start_weights(config, previous_folder: str) -> str:
    """The weights a retraining round continues from: the previous round's best checkpoint, or its
    last weights where the rounds continue the learning-rate schedule (`pipeline.
    retrain_learning_rate` 0, the paper-scale config).

    The optimizer's step counter comes with the weights. The paper trains its 160 epochs without
    going back (Algorithm 1), and going back to each round's best epoch would pull the rest of the
    schedule earlier, round after round, so that its later learning-rate steps could come late or
    never; at a constant rate the step counter moves nothing but the EMA and ramp schedules.
    """
    if not config.pipeline.retrain_learning_rate:
        last = os.path.join(previous_folder, resume.LAST_WEIGHTS)
        if not os.path.isfile(last):
            raise FileNotFoundError(f"{last} is missing: the round before has not finished")
        return last
    return str(workdir_lib.checkpoint(previous_folder))


def run_round(context: stages.Context, round_index: int, evaluations: list[dict]) -> dict:
    """One round: pseudo labels from the rounds before (r >= 1), both models trained (continuing
    from the previous round's weights, `round_start_weights`), then evaluated; returns the
    evaluation record."""
    pseudo_paths = (
        stages.pseudo_label_stage(context, round_index, evaluations) if round_index else {}
    )
    run_folders = {}
    for backbone in context.members:
        initial = None
        if round_index:  # continue from the previous round's model
            previous = os.path.join(context.round_dir(round_index - 1), backbone)
            initial = round_start_weights(context.config, previous)
        stages.train_stage(
            context,
            round_index,
            backbone,
            pseudo_labels_path=pseudo_paths.get(backbone),
            initial_weights=initial,
        )
        run_folders[backbone] = os.path.join(context.round_dir(round_index), backbone)
    directory = os.path.join(context.round_dir(round_index), "evaluation")
    return stages.evaluate_stage(context, str(round_index), directory, run_folders)


def write_results(
    context: stages.Context, evaluations, finetuned, export_record, selected: int
) -> dict:
    """`results.csv`, `results_by_cell_type.csv` and the printed summary; returns the outcome."""
    workdir, config = context.workdir, context.config
    all_evaluations = evaluations + ([finetuned["evaluation"]] if finetuned else [])
    results = results_table(all_evaluations)
    workdir_lib.write_csv(
        results[results["cell_type"] == "all"].drop(columns="cell_type"),
        os.path.join(workdir, RESULTS_FILE),
    )
    workdir_lib.write_csv(results, os.path.join(workdir, RESULTS_BY_CELL_TYPE_FILE))
    summary = summary_table(results, context.members, context.method)
    with pd.option_context("display.width", 160):
        print(f"\nValidation accuracy (treatment wells of {list(config.data.val_experiments)}):")
        print(summary.to_string(float_format=lambda value: f"{value:.4f}"))
    stages.log(
        f"selected round {selected} (best {ENSEMBLE}+{context.method}, then {ENSEMBLE}, validation "
        f"accuracy); export: {os.path.join(workdir, 'export')}; results: {os.path.join(workdir, RESULTS_FILE)}"
    )
    return {
        "selected_round": selected,
        "export": os.path.join(workdir, "export"),
        "finetune_dir": finetuned["directory"] if finetuned else None,
        "routed_cell_types": sorted(export_record["finetuned"]),
        "results": os.path.join(workdir, RESULTS_FILE),
        "summary": summary.reset_index(names="round").to_dict(orient="records"),
    }


def run(config, workdir: str) -> dict:
    """Runs (or resumes) every stage of Algorithm 1 in `workdir`; returns paths and the summary."""
    start = time.time()
    pipeline_config.validate(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    pipeline_config.check_run_config(config, workdir)
    config = training.prepare_data(copy.deepcopy(config), workdir)
    pipeline = config.pipeline
    index = data.index_splits(config.data)
    if not index.test_experiments:
        raise ValueError("the test split has no experiments: nothing to pseudo-label")
    context = stages.Context(
        config, workdir, labelled_plate_design(config), tuple(index.test_experiments)
    )
    stages.log(
        f"{len(context.members)} models {list(context.members)}, {pipeline.pseudo_label_rounds} pseudo-label "
        f"round(s), post-processing {pipeline.postprocess!r}, pseudo labels from "
        f"{config.mean_teacher.pseudo_label_source!r}, fine-tuning {'on' if pipeline.finetune else 'off'}; "
        f"{index.labelled_wells} labelled wells, {index.unlabelled_wells} unlabelled in "
        f"{len(context.test_experiments)} test experiments, validation on {list(config.data.val_experiments)}"
    )
    stages.log(f"plate design: {context.plate_design.describe()}")

    evaluations: list[dict] = []
    for round_index in range(int(pipeline.pseudo_label_rounds) + 1):
        evaluations.append(run_round(context, round_index, evaluations))

    scores = [
        pseudo_labels.source_score(evaluation["rows"], ENSEMBLE, context.method)
        for evaluation in evaluations
    ]
    selected = pseudo_labels.best_round(scores)
    finetuned = stages.finetune_stage(context, selected, evaluations) if pipeline.finetune else None
    export_record = stages.export_stage(context, selected, finetuned)

    outcome = write_results(context, evaluations, finetuned, export_record, selected)
    outcome["seconds_this_call"] = round(time.time() - start, 1)
    workdir_lib.write_json(os.path.join(workdir, SUMMARY_FILE), outcome)
    stages.log(f"{outcome['seconds_this_call']:.0f} s in this call")
    return outcome
