"""`python -m deepnoise_tf.pipeline --config configs/deepnoise.py[:cpu] --workdir DIR [--config.a.b=v]`.

The whole of DeepNoise (paper, Algorithm 1) in one command, as resumable stages under DIR:

1. `round_0/<backbone>/`: train ST-Xception and ST-Xception-Wide (`train.train`, mean teacher).
2. `round_0/evaluation/`: each teacher's site-averaged logits of the validation wells (held-out
   labelled experiments) and of the unlabelled test wells; the ensemble = their mean in logit space
   (SPEC 8); the plate prior (`postprocess`, each experiment's plate groups inferred from the
   predictions, never from labels).
3. `round_<r>/pseudo_labels/`, `round_<r>/<backbone>/`, `round_<r>/evaluation/` for r = 1..R: pseudo
   labels for the test treatment wells from the post-processed ensemble (SPEC 5, paper default) or
   each model's own teacher (`config.mean_teacher.pseudo_label_source`), then both students
   retrained from round r-1 with the pseudo-label loss. The pseudo labels are refreshed only when
   the validation score of the predictions they come from improves; the logits behind them are
   blended into a running bank (weight 1 first, then `pipeline.pseudo_label_bank_weight`).
4. `finetune_round_<b>_<key>/<backbone>/<cell type>/` (when `pipeline.finetune`; `<key>` names
   the fine-tuning settings): per-cell-type fine-tuning (`finetune.run`) of the selected round b's
   models, and their evaluation.
5. `export/`: the ensemble SavedModel of round b (the round with the best post-processed ensemble
   validation accuracy; `ensemble.build_ensemble`, the same signatures as a single model), plus
   `export_finetuned/<cell type>/` after fine-tuning; `results.csv` (validation accuracy of every
   teacher, the ensemble and the post-processed ensemble, per round) and `results_by_cell_type.csv`.

Every stage writes its outputs, then a marker (`pipeline_stage.json`) last; rerunning the command
skips finished stages, and an interrupted training resumes from its `backup/`. Test-split labels are
never decoded: test wells are read with `with_labels=False` (tests/test_pipeline.py proves the pseudo
labels do not change when the test labels are removed from the data).

Example (2 CPU cores, the synthetic quickstart data generated into DIR/data):
    python -m deepnoise_tf.pipeline --config configs/deepnoise.py:cpu --workdir runs/deepnoise_cpu
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
import time

import numpy as np
import pandas as pd

from deepnoise_tf import config as config_lib
from deepnoise_tf import constants, metrics, postprocess

STAGE_FILE = "pipeline_stage.json"
CONFIG_FILE = "pipeline_config.json"
RESULTS_FILE = "results.csv"
RESULTS_BY_CELL_TYPE_FILE = "results_by_cell_type.csv"
ENSEMBLE = "ensemble"
FINETUNE_ROUND = "finetune"
# Fields a rerun may change on a finished workdir: they add stages without invalidating done ones
# (fine-tuning settings name their own folder, `finetune_settings_key`).
EXTENDABLE_FIELDS = (
    "pipeline.pseudo_label_rounds",
    "pipeline.finetune",
    "pipeline.finetune_cell_types",
    "pipeline.eval_batch_size",
    "finetune.",
)


def log(message: str) -> None:
    print(f"[pipeline] {message}", flush=True)


# ------------------------------------------------------------------------------------------------
# Configuration


def validate(config):
    """Checks the `pipeline` block (and what it needs of the rest); raises ValueError naming the field."""
    config_lib.validate(config)
    if "pipeline" not in config:
        raise ValueError("the config has no `pipeline` block: use configs/deepnoise.py")
    pipeline = config.pipeline
    backbones = tuple(pipeline.backbones)
    if not backbones or len(set(backbones)) != len(backbones):
        raise ValueError(
            f"config.pipeline.backbones={list(backbones)} must name distinct backbones"
        )
    for backbone in backbones:
        if backbone not in config_lib.BACKBONES:
            raise ValueError(
                f"config.pipeline.backbones: {backbone!r} is not one of {list(config_lib.BACKBONES)}"
            )
    if pipeline.postprocess not in postprocess.METHODS:
        raise ValueError(
            f"config.pipeline.postprocess={pipeline.postprocess!r} is not one of {list(postprocess.METHODS)}"
        )
    for field in ("pseudo_label_rounds", "train_epochs", "retrain_epochs"):
        if int(pipeline[field]) < 0:
            raise ValueError(f"config.pipeline.{field}={pipeline[field]} must be >= 0")
    if not 0.0 < pipeline.pseudo_label_bank_weight <= 1.0:
        raise ValueError(
            f"config.pipeline.pseudo_label_bank_weight={pipeline.pseudo_label_bank_weight} must be in (0, 1]"
        )
    if pipeline.pseudo_label_rounds and not config.mean_teacher.enabled:
        raise ValueError(
            "pseudo-label rounds need config.mean_teacher.enabled (the pseudo-label loss is the student's)"
        )
    if not config.data.val_experiments:
        raise ValueError(
            "config.data.val_experiments is empty: rounds are scored and selected on them"
        )
    for cell_type in pipeline.finetune_cell_types:
        if cell_type not in constants.CELL_TYPES:
            raise ValueError(
                f"config.pipeline.finetune_cell_types: {cell_type!r} is not one of {list(constants.CELL_TYPES)}"
            )
    return config


def member_config(config, backbone: str, round_index: int):
    """The `train.train` config of one model in one round: the shared config minus `pipeline`.

    Round 0 trains `pipeline.train_epochs` (0 = `train.epochs`). Later rounds start from the previous
    round's checkpoint, whose optimizer state (step counter included) comes with it, so the
    schedules continue; they train `pipeline.retrain_epochs` at the constant
    `pipeline.retrain_learning_rate` (0 = the continued `train` schedule).
    """
    pipeline = config.pipeline
    result = copy.deepcopy(config)
    with result.unlocked():
        del result["pipeline"]
        result.model.backbone = backbone
        if round_index == 0:
            result.train.epochs = int(pipeline.train_epochs or config.train.epochs)
        else:
            result.train.epochs = int(pipeline.retrain_epochs or config.train.epochs)
            if pipeline.retrain_learning_rate:
                result.train.learning_rates = (float(pipeline.retrain_learning_rate),)
                result.train.lr_epoch_boundaries = ()
    return config_lib.validate(result)


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted paths whose values differ between two config dicts (JSON round-tripped)."""
    paths = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            paths += config_differences(a, b, path + ".")
        elif a != b:
            paths.append(path)
    return paths


def check_workdir_config(config, workdir: str) -> None:
    """Refuses to continue a workdir made with another config (finished stages would be stale)."""
    path = os.path.join(workdir, CONFIG_FILE)
    new = json.loads(config_lib.to_json(config))
    if os.path.exists(path):
        with open(path) as file:
            old = json.load(file)
        changed = [
            field
            for field in config_differences(old, new)
            if not any(
                field == allowed or (allowed.endswith(".") and field.startswith(allowed))
                for allowed in EXTENDABLE_FIELDS
            )
        ]
        if changed:
            raise ValueError(
                f"{workdir} was made with another config (differs in {changed}); use a new --workdir "
                f"(only {list(EXTENDABLE_FIELDS)} may change between runs)"
            )
    write_json(path, new)


# ------------------------------------------------------------------------------------------------
# Files


def write_json(path: str, value) -> None:
    """Writes atomically (temporary file + rename): a kill never leaves half a marker."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.tmp"
    with open(temporary, "w") as file:
        json.dump(value, file, indent=2, default=_json_default)
    os.replace(temporary, path)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"cannot write {type(value)} to JSON")


def read_stage(directory: str) -> dict | None:
    """The marker of a finished stage, or None when the stage has not finished."""
    path = os.path.join(directory, STAGE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as file:
        return json.load(file)


def finish_stage(directory: str, record: dict) -> dict:
    write_json(os.path.join(directory, STAGE_FILE), record)
    return record


def write_csv(frame: pd.DataFrame, path: str) -> None:
    temporary = f"{path}.tmp"
    frame.to_csv(temporary, index=False)
    os.replace(temporary, path)


def save_logits(path: str, wells: pd.DataFrame, logits: dict[str, np.ndarray]) -> None:
    """`id_code` plus one float32 [W, 1139] array per member."""
    temporary = f"{path}.tmp.npz"
    np.savez(
        temporary,
        id_code=wells["id_code"].to_numpy().astype(str),
        **{name: value.astype(np.float32) for name, value in logits.items()},
    )
    os.replace(temporary, path)


def load_logits(path: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    with np.load(path) as stored:
        return stored["id_code"], {name: stored[name] for name in stored.files if name != "id_code"}


# ------------------------------------------------------------------------------------------------
# Pure pieces: plate prior, scores, pseudo-label bookkeeping


def plate_prior_predictions(
    wells: pd.DataFrame, logits: np.ndarray, method: str, sirna_groups
) -> np.ndarray:
    """siRNA per treatment well: `method` with the plate prior, or the plain argmax for "none".

    "none" means no prior at all (argmax over the 1108 siRNAs); "assign"/"balance" restrict each
    plate to its group (inferred per experiment from these predictions) and use each siRNA once.
    """
    log_probs = postprocess.sirna_log_probs(logits)
    if method == "none":
        return np.argmax(log_probs, axis=1)
    return postprocess.postprocess_predictions(
        wells.reset_index(drop=True), log_probs, method=method, sirna_groups=sirna_groups
    )


def ensemble_logits(logits: dict[str, np.ndarray], members) -> np.ndarray:
    """SPEC 8: the members' logits averaged (in logit space)."""
    return np.mean([logits[name] for name in members], axis=0)


def prediction_columns(
    wells, logits: dict[str, np.ndarray], members, method: str, sirna_groups
) -> dict[str, np.ndarray]:
    """`{"<model>": argmax, "<model>+<method>": with the prior}` for each member and the ensemble."""
    named = dict(logits)
    named[ENSEMBLE] = ensemble_logits(logits, members)
    columns = {}
    for name in [*members, ENSEMBLE]:
        columns[name] = plate_prior_predictions(wells, named[name], "none", sirna_groups)
        if method != "none":
            columns[f"{name}+{method}"] = plate_prior_predictions(
                wells, named[name], method, sirna_groups
            )
    return columns


def accuracy_rows(
    round_name: str, wells: pd.DataFrame, columns: dict[str, np.ndarray]
) -> list[dict]:
    """Long-format accuracy rows (overall and per cell type) of each prediction column."""
    rows = []
    labels = wells["label"].to_numpy()
    for column, predictions in columns.items():
        model, _, method = column.partition("+")
        table = metrics.accuracy_table(labels, predictions, wells["cell_type"].to_numpy())
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


def source_score(rows: list[dict], source: str, method: str) -> tuple[float, float]:
    """(post-processed, plain) overall validation accuracy of a source's predictions.

    Compared in that order: the plain accuracy decides while the post-processed one ties, which it
    does once the plate prior saturates (100% on easy data).
    """

    def overall(post: str) -> float:
        for row in rows:
            if row["model"] == source and row["postprocess"] == post and row["cell_type"] == "all":
                return row["accuracy"]
        raise KeyError(f"no overall row for {source} / {post}")

    return overall(method), overall("none")


def best_round(scores) -> int:
    """The first round with the highest score (numbers or tuples compared in order): pseudo labels
    change, and a later round is selected, only on a strict improvement."""

    def key(score):
        values = score if isinstance(score, (tuple, list)) else (score,)
        return tuple(-np.inf if value is None or np.isnan(value) else value for value in values)

    keys = [key(score) for score in scores]
    return keys.index(max(keys))


def blend_bank(previous: np.ndarray | None, new: np.ndarray, weight: float) -> np.ndarray:
    """The running logit bank of SPEC 5: the first refresh takes the new logits, later ones blend."""
    if previous is None:
        return np.asarray(new, np.float64)
    return weight * np.asarray(new, np.float64) + (1.0 - weight) * np.asarray(previous, np.float64)


def pseudo_label_sources(config) -> dict[str, str]:
    """Which predictions label the unlabelled wells of each member: the ensemble or its own teacher."""
    members = tuple(config.pipeline.backbones)
    if config.mean_teacher.pseudo_label_source == "own_teacher":
        return {member: member for member in members}
    return {member: ENSEMBLE for member in members}


# ------------------------------------------------------------------------------------------------
# Prediction with the trained teachers (in process; the final export is checked against it)


def load_member(workdir: str):
    """The training wrapper of a workdir with its selected weights (best, else last)."""
    from deepnoise_tf import ensemble, factory

    model = factory.build_model(ensemble.workdir_config(workdir), steps_per_epoch=1)
    model.load_weights(str(ensemble.workdir_checkpoint(workdir)))
    return model


def _decode(values) -> np.ndarray:
    return np.asarray([value.decode() if isinstance(value, bytes) else value for value in values])


def predict_wells(
    config,
    models: dict,
    *,
    split: str,
    experiments,
    with_labels: bool,
    tta: bool = False,
    batch_size: int = 64,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Each model's logits [W, 1139] (`load_member`: the teacher) for every well of `experiments`.

    A well's sites are averaged in logit space (SPEC 8), as `predict` does with an export.
    With `with_labels=False` the split's labels are never decoded (`data.load_sites`): the `label`
    column is then -1 whatever the data set holds. `tta` averages the 8 dihedral views in logit space.
    """
    import tensorflow as tf

    from deepnoise_tf import augment, data, predict

    if not experiments:
        raise ValueError("name the experiments to predict (an empty list would mean all of them)")

    size = int(config.data.image_size) or None  # 0: the stored size
    signature = [
        tf.TensorSpec((None, size, size, constants.NUM_CHANNELS), tf.uint8),
        tf.TensorSpec((None, constants.NUM_CHANNELS), tf.float32),
        tf.TensorSpec((None, constants.NUM_CHANNELS), tf.float32),
    ]

    @tf.function(input_signature=signature)  # one trace per call, whatever the last batch's size
    def member_logits(image, mean, std):
        if tta:
            views = augment.test_time_views(image)
            count, batch = tf.shape(views)[0], tf.shape(views)[1]
            image = tf.reshape(views, tf.concat([[count * batch], tf.shape(views)[2:]], 0))
            mean, std = tf.tile(mean, [count, 1]), tf.tile(std, [count, 1])
        outputs = {}
        for name, model in models.items():
            logits = tf.cast(
                model({"image": image, "mean": mean, "std": std}, training=False)["logits"],
                tf.float32,
            )
            if tta:
                logits = tf.reduce_mean(tf.reshape(logits, [count, batch, -1]), axis=0)
            outputs[name] = logits
        return outputs

    dataset = data.evaluation_dataset(
        config,
        split=split,
        experiments=tuple(experiments),
        with_labels=with_labels,
        batch_size=batch_size,
    )
    columns = {
        name: []
        for name in ("id_code", "experiment", "plate", "well", "cell_type", "well_type", "label")
    }
    site_logits = {name: [] for name in models}
    for batch in dataset:
        outputs = member_logits(batch["image"], batch["mean"], batch["std"])
        for name, value in outputs.items():
            site_logits[name].append(value.numpy())
        for name in columns:
            columns[name].append(batch[name].numpy())
    if not columns["id_code"]:
        raise ValueError(f"no sites of {list(experiments)} in the {split!r} split")
    sites = {name: np.concatenate(values) for name, values in columns.items()}
    for name in ("id_code", "experiment", "well", "cell_type", "well_type"):
        sites[name] = _decode(sites[name])
    sites = pd.DataFrame(sites).rename(columns={"label": "sirna"})
    logits = {}
    for name, values in site_logits.items():
        wells, logits[name] = predict.aggregate_wells(sites, np.concatenate(values))
    return wells, logits


def treatment_only(wells: pd.DataFrame, logits: dict[str, np.ndarray]):
    keep = (wells["well_type"] == "treatment").to_numpy()
    return wells[keep].reset_index(drop=True), {name: value[keep] for name, value in logits.items()}


def labelled_groups(config) -> np.ndarray:
    """The siRNA groups from the labelled training wells (validation experiments left out)."""
    from deepnoise_tf import predict

    groups = predict.sirna_groups_from_split(
        config.data.data_dir or None,
        config.data.builder,
        "train",
        exclude_experiments=tuple(config.data.val_experiments),
    )
    if groups is None:
        raise ValueError(
            "no labelled treatment wells outside the validation experiments: no plate groups"
        )
    return groups


def free_memory() -> None:
    """Drops Keras's global state between stages (each stage builds fresh models)."""
    import gc

    import keras

    keras.backend.clear_session()
    gc.collect()


# ------------------------------------------------------------------------------------------------
# Stages


@dataclasses.dataclass
class Context:
    """What every stage needs: the config (data location filled in), the workdir and the groups."""

    config: object
    workdir: str
    sirna_groups: np.ndarray
    test_experiments: tuple

    @property
    def members(self) -> tuple:
        return tuple(self.config.pipeline.backbones)

    @property
    def method(self) -> str:
        return self.config.pipeline.postprocess

    def round_dir(self, round_index: int) -> str:
        return os.path.join(self.workdir, f"round_{round_index}")


def train_stage(
    context: Context,
    round_index: int,
    backbone: str,
    *,
    pseudo_labels_path=None,
    initial_weights=None,
) -> dict:
    """Trains one model of one round (skipped when done); returns its marker."""
    from deepnoise_tf import ensemble, train

    workdir = os.path.join(context.round_dir(round_index), backbone)
    done = read_stage(workdir)
    if done is not None:
        log(f"round {round_index} {backbone}: trained before, skipped")
        return done
    member = member_config(context.config, backbone, round_index)
    pseudo_labels = None
    if pseudo_labels_path is not None:
        table = pd.read_csv(pseudo_labels_path)
        pseudo_labels = (table["id_code"].astype(str).tolist(), table["pseudo_label"].to_numpy())
    resuming = os.path.isdir(os.path.join(workdir, "backup"))
    log(
        f"round {round_index} {backbone}: training {member.train.epochs} epochs"
        + (f" from {initial_weights}" if initial_weights else "")
        + (f" with {len(pseudo_labels[0])} pseudo labels" if pseudo_labels else "")
        + (" (resuming from backup/)" if resuming else "")
    )
    start = time.time()
    train.train(member, workdir, pseudo_labels=pseudo_labels, initial_weights=initial_weights)
    free_memory()
    return finish_stage(
        workdir,
        {
            "round": round_index,
            "backbone": backbone,
            "epochs": int(member.train.epochs),
            "checkpoint": str(ensemble.workdir_checkpoint(workdir)),
            "initial_weights": initial_weights,
            "pseudo_labels": pseudo_labels_path,
            "seconds": round(time.time() - start, 1),
        },
    )


def evaluate_stage(
    context: Context, round_name: str, directory: str, workdirs: dict[str, str]
) -> dict:
    """Validation and test logits of the members, the ensemble, the plate prior and the scores."""
    done = read_stage(directory)
    if done is not None:
        log(f"round {round_name}: evaluated before, skipped")
        return done
    config, pipeline = context.config, context.config.pipeline
    log(f"round {round_name}: predicting the validation and test wells with {list(workdirs)}")
    start = time.time()
    options = {"tta": bool(pipeline.tta), "batch_size": int(pipeline.eval_batch_size)}
    models = {name: load_member(path) for name, path in workdirs.items()}
    val_wells, val_logits = treatment_only(
        *predict_wells(
            config,
            models,
            split="train",
            experiments=tuple(config.data.val_experiments),
            with_labels=True,
            **options,
        )
    )
    test_wells, test_logits = treatment_only(
        *predict_wells(
            config,
            models,
            split="test",
            experiments=context.test_experiments,
            with_labels=False,
            **options,
        )
    )
    members = tuple(workdirs)
    columns = prediction_columns(
        val_wells, val_logits, members, context.method, context.sirna_groups
    )
    rows = accuracy_rows(round_name, val_wells, columns)
    os.makedirs(directory, exist_ok=True)
    save_logits(os.path.join(directory, "val_logits.npz"), val_wells, val_logits)
    save_logits(os.path.join(directory, "test_logits.npz"), test_wells, test_logits)
    write_csv(val_wells.assign(**columns), os.path.join(directory, "val_predictions.csv"))
    test_columns = prediction_columns(
        test_wells, test_logits, members, context.method, context.sirna_groups
    )
    write_csv(
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
    return finish_stage(
        directory,
        {
            "round": round_name,
            "members": dict(workdirs),
            "rows": rows,
            "seconds": round(time.time() - start, 1),
        },
    )


def pseudo_label_stage(
    context: Context, round_index: int, evaluations: list[dict]
) -> dict[str, str]:
    """Pseudo labels of round `round_index` (>= 1) for each member: `{member: csv path}`.

    For each source (the ensemble, or each member's own teacher) the labels come from the round
    with the best validation score of that source's predictions so far (`source_score`:
    post-processed, then plain); they change only when that round is new (a strict improvement),
    and its test logits then enter the bank.
    """
    directory = os.path.join(context.round_dir(round_index), "pseudo_labels")
    sources = pseudo_label_sources(context.config)
    done = read_stage(directory)
    if done is None:
        weight = float(context.config.pipeline.pseudo_label_bank_weight)
        previous_directory = os.path.join(context.round_dir(round_index - 1), "pseudo_labels")
        previous = read_stage(previous_directory) if round_index > 1 else None
        record = {"round": round_index, "sources": {}}
        for source in sorted(set(sources.values())):
            scores = [
                source_score(evaluation["rows"], source, context.method)
                for evaluation in evaluations
            ]
            chosen = best_round(scores)
            path = os.path.join(directory, f"{source}.csv")
            bank_path = os.path.join(directory, f"{source}_bank.npz")
            old = previous["sources"][source] if previous else None
            refreshed = old is None or chosen != old["source_round"]
            if refreshed:
                wells, logits = _round_test_logits(context, chosen)
                source_logits = (
                    ensemble_logits(logits, context.members)
                    if source == ENSEMBLE
                    else logits[source]
                )
                bank = None
                if old is not None:
                    bank_ids, stored = load_logits(
                        os.path.join(previous_directory, f"{source}_bank.npz")
                    )
                    if list(bank_ids) != wells["id_code"].tolist():
                        raise ValueError(
                            f"{previous_directory}: the bank's wells differ from round {chosen}'s"
                        )
                    bank = stored["bank"]
                bank = blend_bank(bank, source_logits, weight)
                labels = plate_prior_predictions(wells, bank, context.method, context.sirna_groups)
                table = wells[["id_code", "experiment", "plate", "well", "cell_type"]].assign(
                    pseudo_label=labels
                )
            else:
                table = pd.read_csv(os.path.join(previous_directory, f"{source}.csv"))
                _, stored = load_logits(os.path.join(previous_directory, f"{source}_bank.npz"))
                bank = stored["bank"]
            os.makedirs(directory, exist_ok=True)
            write_csv(table, path)
            save_logits(bank_path, table, {"bank": bank})
            record["sources"][source] = {
                "source_round": chosen,
                "refreshed": bool(refreshed),
                "scores": scores,
                "wells": int(len(table)),
                "path": path,
            }
            log(
                f"round {round_index}: pseudo labels from {source}, round {chosen} "
                f"(validation scores {[tuple(round(v, 4) for v in score) for score in scores]}; "
                + ("refreshed" if refreshed else "kept: no improvement")
                + f"), {len(table)} test wells"
            )
        done = finish_stage(directory, record)
    else:
        log(f"round {round_index}: pseudo labels made before, skipped")
    return {member: done["sources"][source]["path"] for member, source in sources.items()}


def _round_test_logits(context: Context, round_index: int):
    directory = os.path.join(context.round_dir(round_index), "evaluation")
    ids, logits = load_logits(os.path.join(directory, "test_logits.npz"))
    wells = pd.read_csv(os.path.join(directory, "test_predictions.csv"), dtype={"id_code": str})
    if wells["id_code"].tolist() != list(ids):
        raise ValueError(f"{directory}: test_logits.npz and test_predictions.csv disagree")
    return wells[["id_code", "experiment", "plate", "well", "cell_type", "well_type"]], logits


def finetune_settings_key(config) -> str:
    """8 hex digits of the fine-tuning settings: other settings fine-tune into another folder."""
    import hashlib

    settings = {
        "finetune": config.finetune.to_dict(),
        "cell_types": list(config.pipeline.finetune_cell_types),
    }
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:8]


def finetune_stage(context: Context, selected: int) -> dict | None:
    """Per-cell-type fine-tuning of round `selected`'s models and its evaluation (SPEC 7)."""
    pipeline = context.config.pipeline
    name = f"finetune_round_{selected}_{finetune_settings_key(context.config)}"
    directory = os.path.join(context.workdir, name)
    done = read_stage(directory)
    if done is None:
        from deepnoise_tf import finetune

        cell_types = tuple(pipeline.finetune_cell_types) or None
        workdirs: dict[str, dict[str, str]] = {}
        for backbone in context.members:
            log(f"fine-tuning round {selected}'s {backbone} per cell type")
            exports = finetune.run(
                member_config(context.config, backbone, 0),
                os.path.join(directory, backbone),
                init_workdir=os.path.join(context.round_dir(selected), backbone),
                cell_types=cell_types,
            )
            free_memory()
            for cell_type, export in exports.items():
                workdirs.setdefault(cell_type, {})[backbone] = os.path.dirname(
                    os.path.abspath(export)
                )
        done = finish_stage(
            directory,
            {
                "init_round": selected,
                "settings": context.config.finetune.to_dict(),
                "workdirs": workdirs,
            },
        )
    evaluation = finetune_evaluation(context, directory, done["workdirs"])
    return {"directory": directory, "workdirs": done["workdirs"], "evaluation": evaluation}


def finetune_evaluation(
    context: Context, directory: str, workdirs: dict[str, dict[str, str]]
) -> dict:
    """Scores the fine-tuned models on the validation experiments of their own cell type."""
    evaluation_dir = os.path.join(directory, "evaluation")
    done = read_stage(evaluation_dir)
    if done is not None:
        log("fine-tuned models evaluated before, skipped")
        return done
    config = context.config
    frames, logits = [], {member: [] for member in context.members}
    for cell_type, members in sorted(workdirs.items()):
        experiments = tuple(e for e in config.data.val_experiments if e.split("-")[0] == cell_type)
        if not experiments:
            log(f"fine-tuned {cell_type}: no validation experiment of this cell type, not scored")
            continue
        missing = set(context.members) - set(members)
        if missing:
            raise ValueError(f"fine-tuned {cell_type} lacks members {sorted(missing)}")
        cell_config = copy.deepcopy(config)
        with cell_config.unlocked():
            cell_config.data.cell_types = (cell_type,)
        wells, cell_logits = treatment_only(
            *predict_wells(
                cell_config,
                {member: load_member(members[member]) for member in context.members},
                split="train",
                experiments=experiments,
                with_labels=True,
                tta=bool(config.pipeline.tta),
                batch_size=int(config.pipeline.eval_batch_size),
            )
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
            wells, logits, context.members, context.method, context.sirna_groups
        )
        rows = accuracy_rows(FINETUNE_ROUND, wells, columns)
        os.makedirs(evaluation_dir, exist_ok=True)
        save_logits(os.path.join(evaluation_dir, "val_logits.npz"), wells, logits)
        write_csv(wells.assign(**columns), os.path.join(evaluation_dir, "val_predictions.csv"))
    return finish_stage(evaluation_dir, {"round": FINETUNE_ROUND, "rows": rows})


def export_stage(context: Context, selected: int, finetuned: dict | None) -> dict:
    """The final ensemble SavedModel(s); each is rebuilt only when the models behind it changed.

    The main export is checked against the in-process ensemble on one batch.
    """
    from deepnoise_tf import ensemble

    record_path = os.path.join(context.workdir, "export_record.json")
    record = {"round": None, "workdirs": None, "finetuned": {}}
    if os.path.exists(record_path):
        with open(record_path) as file:
            record = json.load(file)
    workdirs = {
        member: os.path.join(context.round_dir(selected), member) for member in context.members
    }
    if record["round"] == selected and record["workdirs"] == workdirs:
        log(f"export of round {selected} made before, skipped")
    else:
        export_dir = os.path.join(context.workdir, "export")
        log(f"exporting the ensemble of round {selected} to {export_dir}")
        ensemble.build_ensemble([workdirs[member] for member in context.members], export_dir)
        check_export(context, export_dir, workdirs)
        record.update(round=selected, workdirs=workdirs)
        write_json(record_path, record)
    wanted = finetuned["workdirs"] if finetuned else {}
    for cell_type, members in sorted(wanted.items()):
        if record["finetuned"].get(cell_type) == members:
            continue
        path = os.path.join(context.workdir, "export_finetuned", cell_type)
        log(f"exporting the fine-tuned {cell_type} ensemble to {path}")
        ensemble.build_ensemble([members[member] for member in context.members], path)
        record["finetuned"][cell_type] = members
        write_json(record_path, record)
    free_memory()
    return {"round": selected, "workdirs": workdirs, "finetuned": wanted}


def check_export(context: Context, export_dir: str, workdirs: dict[str, str]) -> float:
    """Largest |export - in-process ensemble| logit difference on one validation batch; raises if > 1e-3."""
    from deepnoise_tf import data, predict

    loaded = predict.load_export(export_dir)
    batch = next(iter(data.evaluation_dataset(context.config, batch_size=8)))
    served = loaded.serve(image=batch["image"], mean=batch["mean"], std=batch["std"])[
        "logits"
    ].numpy()
    reference = np.mean(
        [
            load_member(path)({key: batch[key] for key in ("image", "mean", "std")})[
                "logits"
            ].numpy()
            for path in workdirs.values()
        ],
        axis=0,
    )
    difference = float(np.abs(served - reference).max())
    if difference > 1e-3:
        raise RuntimeError(
            f"{export_dir} disagrees with the evaluated ensemble by {difference:.2e} in logits"
        )
    return difference


# ------------------------------------------------------------------------------------------------
# Results


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


# ------------------------------------------------------------------------------------------------
# The whole pipeline


def run(config, workdir: str) -> dict:
    """Runs (or resumes) every stage of Algorithm 1 in `workdir`; returns paths and the summary."""
    from deepnoise_tf import data, ensemble, train

    start = time.time()
    validate(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    check_workdir_config(config, workdir)
    config = train.prepare_data(copy.deepcopy(config), workdir)
    pipeline = config.pipeline
    index = data.index_splits(config.data)
    if not index.test_experiments:
        raise ValueError("the test split has no experiments: nothing to pseudo-label")
    context = Context(config, workdir, labelled_groups(config), tuple(index.test_experiments))
    log(
        f"{len(context.members)} models {list(context.members)}, {pipeline.pseudo_label_rounds} pseudo-label "
        f"round(s), post-processing {pipeline.postprocess!r}, pseudo labels from "
        f"{config.mean_teacher.pseudo_label_source!r}, fine-tuning {'on' if pipeline.finetune else 'off'}; "
        f"{index.labelled_wells} labelled wells, {index.unlabelled_wells} unlabelled in "
        f"{len(context.test_experiments)} test experiments, validation on {list(config.data.val_experiments)}"
    )

    evaluations = []
    for round_index in range(int(pipeline.pseudo_label_rounds) + 1):
        pseudo_paths = {}
        if round_index:
            pseudo_paths = pseudo_label_stage(context, round_index, evaluations)
        workdirs = {}
        for backbone in context.members:
            initial = None
            if round_index:  # continue from the previous round's model
                initial = str(
                    ensemble.workdir_checkpoint(
                        os.path.join(context.round_dir(round_index - 1), backbone)
                    )
                )
            train_stage(
                context,
                round_index,
                backbone,
                pseudo_labels_path=pseudo_paths.get(backbone),
                initial_weights=initial,
            )
            workdirs[backbone] = os.path.join(context.round_dir(round_index), backbone)
        evaluations.append(
            evaluate_stage(
                context,
                str(round_index),
                os.path.join(context.round_dir(round_index), "evaluation"),
                workdirs,
            )
        )

    scores = [
        source_score(evaluation["rows"], ENSEMBLE, context.method) for evaluation in evaluations
    ]
    selected = best_round(scores)
    finetuned = finetune_stage(context, selected) if pipeline.finetune else None
    export_record = export_stage(context, selected, finetuned)

    all_evaluations = evaluations + ([finetuned["evaluation"]] if finetuned else [])
    results = results_table(all_evaluations)
    write_csv(
        results[results["cell_type"] == "all"].drop(columns="cell_type"),
        os.path.join(workdir, RESULTS_FILE),
    )
    write_csv(results, os.path.join(workdir, RESULTS_BY_CELL_TYPE_FILE))
    summary = summary_table(results, context.members, context.method)
    seconds = time.time() - start
    with pd.option_context("display.width", 160):
        print(f"\nValidation accuracy (treatment wells of {list(config.data.val_experiments)}):")
        print(summary.to_string(float_format=lambda value: f"{value:.4f}"))
    log(
        f"selected round {selected} (best {ENSEMBLE}+{context.method}, then {ENSEMBLE}, validation "
        f"accuracy); "
        f"export: {os.path.join(workdir, 'export')}; results: {os.path.join(workdir, RESULTS_FILE)}; "
        f"{seconds:.0f} s in this call"
    )
    outcome = {
        "selected_round": selected,
        "export": os.path.join(workdir, "export"),
        "finetune_dir": finetuned["directory"] if finetuned else None,
        "finetuned_exports": {
            cell: os.path.join(workdir, "export_finetuned", cell)
            for cell in export_record["finetuned"]
        },
        "results": os.path.join(workdir, RESULTS_FILE),
        "summary": summary.reset_index(names="round").to_dict(orient="records"),
        "seconds_this_call": round(seconds, 1),
    }
    write_json(os.path.join(workdir, "pipeline_done.json"), outcome)
    return outcome


def main(argv=None) -> dict:
    from deepnoise_tf import train

    parser = train.config_parser("python -m deepnoise_tf.pipeline", __doc__.split("\n")[0])
    known, config = train.parse_config_arguments(parser, sys.argv[1:] if argv is None else argv)
    return run(config, known.workdir)


if __name__ == "__main__":
    main()
