"""The resumable stages of DeepNoise's Algorithm 1: train, evaluate, pseudo-label, fine-tune, export.

Each stage owns one folder of the pipeline's workdir and marks it with `done.json` last
(`deepnoise_tf.workdir`); a rerun reads the marker and skips the stage. `deepnoise_tf.algorithm`
runs them in order. Test-split labels are never decoded: test wells are read with
`with_labels=False` (`inference.site_batches`).
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pandas as pd

from deepnoise_tf import evaluation, inference, pipeline_config, pseudo_labels, training
from deepnoise_tf import workdir as workdir_lib

ENSEMBLE = evaluation.ENSEMBLE
FINETUNE_ROUND = "finetune"


def log(message: str) -> None:
    print(f"[pipeline] {message}", flush=True)


def free_memory() -> None:
    """Drops Keras's global state between stages (each stage builds fresh models)."""
    import gc

    import keras

    keras.backend.clear_session()
    gc.collect()


@dataclasses.dataclass
class Context:
    """What every stage needs: the config (data location filled in), the workdir and the plate
    design learned from the training plates."""

    config: object
    workdir: str
    plate_design: object  # plate_design.PlateDesign
    test_experiments: tuple

    @property
    def members(self) -> tuple:
        return tuple(self.config.pipeline.backbones)

    @property
    def method(self) -> str:
        return self.config.pipeline.postprocess

    def round_dir(self, round_index: int) -> str:
        return os.path.join(self.workdir, f"round_{round_index}")


# ------------------------------------------------------------------------------------------------
# Logits and scores of the members


def member_logits(
    context: Context,
    run_folders: dict[str, str],
    *,
    split: str,
    experiments,
    with_labels: bool,
    cell_types=None,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Each member's site-averaged logits of the treatment wells of `experiments` (`inference`)."""
    if not experiments:
        raise ValueError("name the experiments to predict (an empty list would mean all of them)")
    config = context.config
    outputs = inference.predict_split(
        {name: inference.from_run_folder(folder) for name, folder in run_folders.items()},
        config.data.data_dir,
        config.data.builder,
        split,
        experiments=tuple(experiments),
        cell_types=tuple(config.data.cell_types if cell_types is None else cell_types),
        with_labels=with_labels,
        batch_size=int(config.pipeline.eval_batch_size),
        tta=bool(config.pipeline.tta),
    )
    names = list(outputs.logits)
    wells, *logits = evaluation.treatment_wells(
        outputs.wells, *(outputs.logits[name] for name in names)
    )
    return wells, dict(zip(names, logits, strict=True))


def prediction_columns(
    wells, logits: dict[str, np.ndarray], members, method: str, plate_design
) -> dict:
    """`{"<model>": argmax, "<model>+<method>": with the plate prior}` for each member and the ensemble."""
    named = dict(logits)
    named[ENSEMBLE] = evaluation.ensemble_logits([logits[name] for name in members])
    columns = {}
    for name in [*members, ENSEMBLE]:
        table = evaluation.well_predictions(
            wells,
            named[name],
            method=method,
            plate_design=None if method == "none" else plate_design,
        )
        columns[name] = table["raw_prediction"].to_numpy()
        if method != "none":
            columns[f"{name}+{method}"] = table["prediction"].to_numpy()
    return columns


def accuracy_rows(
    round_name: str, wells: pd.DataFrame, columns: dict[str, np.ndarray]
) -> list[dict]:
    """Long-format accuracy rows (overall and per cell type) of each prediction column."""
    rows = []
    labels = wells["label"].to_numpy()
    for column, predictions in columns.items():
        model, _, method = column.partition("+")
        table = evaluation.accuracy_table(labels, predictions, wells["cell_type"].to_numpy())
        for record in table.itertuples(index=False):
            rows.append(
                {
                    "round": round_name,
                    "model": model,
                    "postprocess": method or "none",
                    "cell_type": record.group,
                    "accuracy": float(record.accuracy),
                    "correct": int(record.correct),
                    "wells": int(record.wells),
                }
            )
    return rows


def save_logits(path: str, wells: pd.DataFrame, logits: dict[str, np.ndarray]) -> None:
    """`id_code` plus one float32 [W, 1139] array per member, written atomically."""
    arrays = {name: value.astype(np.float32) for name, value in logits.items()}
    workdir_lib.write_npz(path, id_code=wells["id_code"].to_numpy().astype(str), **arrays)


def load_logits(path: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    with np.load(path) as stored:
        return stored["id_code"], {name: stored[name] for name in stored.files if name != "id_code"}


# ------------------------------------------------------------------------------------------------
# Stages


def read_pseudo_labels(path: str) -> tuple[list[str], np.ndarray]:
    """(id_codes, pseudo labels) of a pseudo-label table, as `training.run` takes them."""
    table = pd.read_csv(path)
    return table["id_code"].astype(str).tolist(), table["pseudo_label"].to_numpy()


def train_stage(
    context: Context,
    round_index: int,
    backbone: str,
    *,
    pseudo_labels_path=None,
    initial_weights=None,
) -> dict:
    """Trains one model of one round (`training.run`, skipped when done); returns its record."""
    folder = os.path.join(context.round_dir(round_index), backbone)
    done = workdir_lib.read_done(folder)
    if done is not None:
        log(f"round {round_index} {backbone}: trained before, skipped")
        return done
    member = pipeline_config.member_config(context.config, backbone, round_index)
    labels = read_pseudo_labels(pseudo_labels_path) if pseudo_labels_path is not None else None
    resuming = os.path.isdir(os.path.join(folder, "backup"))
    log(
        f"round {round_index} {backbone}: training {member.train.epochs} epochs"
        + (f" from {initial_weights}" if initial_weights else "")
        + (f" with {len(labels[0])} pseudo labels" if labels else "")
        + (" (resuming from backup/)" if resuming else "")
    )
    start = time.time()
    record = {"round": round_index, "backbone": backbone, "initial_weights": initial_weights,
              "pseudo_labels": pseudo_labels_path, "started": start}  # fmt: skip
    done = training.run(
        member, folder, pseudo_labels=labels, initial_weights=initial_weights, record=record
    )
    free_memory()
    return done


def evaluate_stage(
    context: Context, round_name: str, directory: str, run_folders: dict[str, str]
) -> dict:
    """Validation and test logits of the members, the ensemble, the plate prior and the scores."""
    done = workdir_lib.read_done(directory)
    if done is not None:
        log(f"round {round_name}: evaluated before, skipped")
        return done
    config = context.config
    log(f"round {round_name}: predicting the validation and test wells with {list(run_folders)}")
    start = time.time()
    val_wells, val_logits = member_logits(
        context,
        run_folders,
        split="train",
        experiments=config.data.val_experiments,
        with_labels=True,
    )
    test_wells, test_logits = member_logits(
        context, run_folders, split="test", experiments=context.test_experiments, with_labels=False
    )
    members = tuple(run_folders)
    columns = prediction_columns(
        val_wells, val_logits, members, context.method, context.plate_design
    )
    rows = accuracy_rows(round_name, val_wells, columns)
    save_logits(os.path.join(directory, "val_logits.npz"), val_wells, val_logits)
    save_logits(os.path.join(directory, "test_logits.npz"), test_wells, test_logits)
    workdir_lib.write_csv(
        val_wells.assign(**columns), os.path.join(directory, "val_predictions.csv")
    )
    test_columns = prediction_columns(
        test_wells, test_logits, members, context.method, context.plate_design
    )
    workdir_lib.write_csv(
        test_wells.drop(columns="label").assign(**test_columns),
        os.path.join(directory, "test_predictions.csv"),
    )
    free_memory()
    overall = {
        f"{row['model']}/{row['postprocess']}": round(row["accuracy"], 4)
        for row in rows
        if row["cell_type"] == "all"
    }
    log(f"round {round_name}: validation accuracy {overall}")
    record = {"round": round_name, "members": dict(run_folders), "rows": rows,
              "seconds": round(time.time() - start, 1)}  # fmt: skip
    return workdir_lib.mark_done(directory, record)


def _round_test_logits(context: Context, round_index: int):
    directory = os.path.join(context.round_dir(round_index), "evaluation")
    ids, logits = load_logits(os.path.join(directory, "test_logits.npz"))
    wells = pd.read_csv(os.path.join(directory, "test_predictions.csv"), dtype={"id_code": str})
    if wells["id_code"].tolist() != list(ids):
        raise ValueError(f"{directory}: test_logits.npz and test_predictions.csv disagree")
    return wells[["id_code", "experiment", "plate", "well", "cell_type", "well_type"]], logits


def _refreshed_labels(
    context: Context, source: str, chosen: int, bank_path: str | None, weight: float
):
    """(pseudo-label table, logit bank) from round `chosen`'s test logits blended into the bank."""
    wells, logits = _round_test_logits(context, chosen)
    members = context.members
    source_logits = (
        evaluation.ensemble_logits([logits[name] for name in members])
        if source == ENSEMBLE
        else logits[source]
    )
    bank = None
    if bank_path is not None:
        bank_ids, stored = load_logits(bank_path)
        if list(bank_ids) != wells["id_code"].tolist():
            raise ValueError(f"{bank_path}: the bank's wells differ from round {chosen}'s")
        bank = stored["bank"]
    bank = pseudo_labels.blend_bank(bank, source_logits, weight)
    method = context.method
    table = evaluation.well_predictions(
        wells, bank, method=method, plate_design=None if method == "none" else context.plate_design
    )
    column = "raw_prediction" if method == "none" else "prediction"
    labels = table[["id_code", "experiment", "plate", "well", "cell_type"]].assign(
        pseudo_label=table[column]
    )
    return labels, bank


def pseudo_label_stage(
    context: Context, round_index: int, evaluations: list[dict], directory: str | None = None
) -> dict[str, str]:
    """Pseudo labels of round `round_index` (>= 1) for each member: `{member: csv path}`.

    For each source (the ensemble, or each member's own teacher) the labels come from the round
    with the best validation score of that source's predictions so far (`pseudo_labels.source_score`:
    post-processed, then plain); they change only when that round is new (a strict improvement),
    and its test logits then enter the bank. `directory`: where to write them (default
    `round_<round_index>/pseudo_labels`; fine-tuning's are those of the round after the last).
    """
    directory = directory or os.path.join(context.round_dir(round_index), "pseudo_labels")
    sources = pseudo_labels.pseudo_label_sources(context.config)
    done = workdir_lib.read_done(directory)
    if done is not None:
        log(f"round {round_index}: pseudo labels made before, skipped")
        return {member: done["sources"][source]["path"] for member, source in sources.items()}
    weight = float(context.config.pipeline.pseudo_label_bank_weight)
    previous_directory = os.path.join(context.round_dir(round_index - 1), "pseudo_labels")
    previous = workdir_lib.read_done(previous_directory) if round_index > 1 else None
    record = {"round": round_index, "sources": {}}
    for source in sorted(set(sources.values())):
        scores = [
            pseudo_labels.source_score(e["rows"], source, context.method) for e in evaluations
        ]
        chosen = pseudo_labels.best_round(scores)
        path = os.path.join(directory, f"{source}.csv")
        old = previous["sources"][source] if previous else None
        refreshed = old is None or chosen != old["source_round"]
        previous_bank = os.path.join(previous_directory, f"{source}_bank.npz")
        if refreshed:
            table, bank = _refreshed_labels(
                context, source, chosen, previous_bank if old else None, weight
            )
        else:
            table = pd.read_csv(os.path.join(previous_directory, f"{source}.csv"))
            bank = load_logits(previous_bank)[1]["bank"]
        workdir_lib.write_csv(table, path)
        save_logits(os.path.join(directory, f"{source}_bank.npz"), table, {"bank": bank})
        record["sources"][source] = {"source_round": chosen, "refreshed": bool(refreshed),
                                     "scores": scores, "wells": int(len(table)), "path": path}  # fmt: skip
        log(
            f"round {round_index}: pseudo labels from {source}, round {chosen} "
            f"(validation scores {[tuple(round(v, 4) for v in score) for score in scores]}; "
            + ("refreshed" if refreshed else "kept: no improvement")
            + f"), {len(table)} test wells"
        )
    workdir_lib.mark_done(directory, record)
    return {member: record["sources"][source]["path"] for member, source in sources.items()}


def finetune_stage(context: Context, selected: int, evaluations: list[dict]) -> dict:
    """Per-cell-type fine-tuning of round `selected`'s models and its evaluation (paper, "Fine-tuning").

    With the mean teacher, each cell type trains on its labelled wells and its pseudo-labelled
    test wells (paper Fig. 5B), the labels made from every round as a further round would make
    them (`pseudo_label_stage`; from the selected round for the ensemble source).
    """
    from deepnoise_tf import finetuning

    pipeline = context.config.pipeline
    name = f"finetune_round_{selected}_{pipeline_config.finetune_settings_key(context.config)}"
    directory = os.path.join(context.workdir, name)
    done = workdir_lib.read_done(directory)
    if done is None:
        cell_types = tuple(pipeline.finetune_cell_types) or None
        label_paths = {}
        if context.config.mean_teacher.enabled:
            label_paths = pseudo_label_stage(
                context,
                len(evaluations),
                evaluations,
                directory=os.path.join(directory, "pseudo_labels"),
            )
        run_folders: dict[str, dict[str, str]] = {}
        for backbone in context.members:
            log(f"fine-tuning round {selected}'s {backbone} per cell type")
            exports = finetuning.run(
                pipeline_config.member_config(context.config, backbone, 0),
                os.path.join(directory, backbone),
                init_workdir=os.path.join(context.round_dir(selected), backbone),
                cell_types=cell_types,
                pseudo_labels=(read_pseudo_labels(label_paths[backbone]) if label_paths else None),
            )
            free_memory()
            for cell_type, export_dir in exports.items():
                folder = os.path.dirname(os.path.abspath(export_dir))
                run_folders.setdefault(cell_type, {})[backbone] = folder
        record = {
            "init_round": selected,
            "settings": context.config.finetune.to_dict(),
            "pseudo_labels": label_paths,
            "workdirs": run_folders,
        }
        done = workdir_lib.mark_done(directory, record)
    evaluation_record = finetune_evaluation(context, directory, done["workdirs"])
    return {"directory": directory, "workdirs": done["workdirs"], "evaluation": evaluation_record}


def finetune_evaluation(
    context: Context, directory: str, run_folders: dict[str, dict[str, str]]
) -> dict:
    """Scores the fine-tuned models on the validation experiments of their own cell type."""
    evaluation_dir = os.path.join(directory, "evaluation")
    done = workdir_lib.read_done(evaluation_dir)
    if done is not None:
        log("fine-tuned models evaluated before, skipped")
        return done
    frames, logits = [], {member: [] for member in context.members}
    for cell_type, members in sorted(run_folders.items()):
        experiments = tuple(
            e for e in context.config.data.val_experiments if e.split("-")[0] == cell_type
        )
        if not experiments:
            log(f"fine-tuned {cell_type}: no validation experiment of this cell type, not scored")
            continue
        missing = set(context.members) - set(members)
        if missing:
            raise ValueError(f"fine-tuned {cell_type} lacks members {sorted(missing)}")
        wells, cell_logits = member_logits(
            context,
            {member: members[member] for member in context.members},
            split="train",
            experiments=experiments,
            with_labels=True,
            cell_types=(cell_type,),
        )
        frames.append(wells)
        for member in context.members:
            logits[member].append(cell_logits[member])
        free_memory()
    rows = []
    if frames:
        wells = pd.concat(frames, ignore_index=True)
        logits = {member: np.concatenate(values) for member, values in logits.items()}
        columns = prediction_columns(
            wells, logits, context.members, context.method, context.plate_design
        )
        rows = accuracy_rows(FINETUNE_ROUND, wells, columns)
        save_logits(os.path.join(evaluation_dir, "val_logits.npz"), wells, logits)
        workdir_lib.write_csv(
            wells.assign(**columns), os.path.join(evaluation_dir, "val_predictions.csv")
        )
    return workdir_lib.mark_done(evaluation_dir, {"round": FINETUNE_ROUND, "rows": rows})


def export_stage(context: Context, selected: int, finetuned: dict | None) -> dict:
    """The final ensemble SavedModel `export/` (rebuilt only when the models behind it changed).

    The paper predicts each cell type with its fine-tuned models ("Fine-tuning"): the export routes
    the fine-tuned cell types to them (`export.ROUTED_SIGNATURE`, which `predict` uses), every
    other image to round `selected`'s ensemble, which `serving_default` serves to all.
    """
    from deepnoise_tf import export

    run_folders = {
        member: os.path.join(context.round_dir(selected), member) for member in context.members
    }
    wanted = finetuned["workdirs"] if finetuned else {}
    record = {"round": selected, "workdirs": run_folders, "finetuned": wanted}
    path = os.path.join(context.workdir, "export")
    if workdir_lib.read_done(path) != record:
        log(
            f"exporting the ensemble of {len(run_folders)} models to {path}"
            + (f", {sorted(wanted)} routed to their fine-tuned models" if wanted else "")
        )
        routes = {
            cell_type: [members[member] for member in context.members]
            for cell_type, members in wanted.items()
        }
        export.export_run_folders(
            [run_folders[member] for member in context.members], path, routes=routes
        )
        workdir_lib.mark_done(path, record)
        free_memory()
    return record
