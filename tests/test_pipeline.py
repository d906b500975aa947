"""The DeepNoise pipeline (Algorithm 1) end to end on a tiny synthetic RxRx1, one shared run.

The run trains for real (mean teacher, pseudo-label loss, per-cell-type fine-tuning), but with a
two-layer stand-in for Xception: the pipeline is orchestration, the backbones have their own tests
(tests/test_models.py), and tracing the real graph for every one of the run's eight trainings would
cost minutes. References are independent: the data's ground truth as written by `synthetic`, numpy
means of the stored logits, a brute-force plate assignment, and the exported SavedModel run through
`predict` (another reading of the data set).
"""

import dataclasses
import itertools
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import tensorflow_datasets as tfds
from conftest import stand_in_backbone

import tfds_rxrx1  # noqa: F401  (registers the builder)
from deepnoise_tf import (
    algorithm,
    constants,
    evaluation,
    finetuning,
    inference,
    models,
    pipeline_config,
    pseudo_labels,
    stages,
    synthetic,
    training,
)
from deepnoise_tf import config as config_lib
from deepnoise_tf import workdir as workdir_lib

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "deepnoise.py")
VAL_EXPERIMENTS = ("HEPG2-02", "HUVEC-02")
ROUNDS = 2
FINETUNE_CELL_TYPES = ("HEPG2",)
MEMBERS = ("xception", "xception_wide")


def build_data(root, layout):
    """The tiny preset with two train experiments per cell type (one labelled, one validation)."""
    manual = root / "manual"
    truth = synthetic.write_dataset(
        manual, layout=layout, preset="tiny", seed=0, train_experiments=2
    )
    builder = tfds.builder("rxrx1/native", data_dir=str(root))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual), try_download_gcs=False)
    )
    return str(root), truth


def tiny_config(data_dir):
    config = config_lib.load(CONFIG + ":cpu")
    config.data.data_dir = data_dir
    config.data.builder = "rxrx1/native"
    config.data.synthetic_preset = ""
    config.data.image_size = 16
    config.data.val_experiments = VAL_EXPERIMENTS
    config.data.shuffle_buffer = 64
    config.train.batch_size = 8
    config.mean_teacher.labelled_share = (
        0.5  # 12 unlabelled rows per epoch: some carry pseudo labels
    )
    config.train.steps_per_epoch = 3
    config.train.epochs = 2
    config.train.export = False
    config.pipeline.pseudo_label_rounds = ROUNDS
    config.pipeline.retrain_epochs = 1
    config.pipeline.eval_batch_size = 16
    config.pipeline.finetune_cell_types = FINETUNE_CELL_TYPES
    config.finetune.cycles = 1
    config.finetune.cycle_epochs = 1.0
    config.finetune.final_epochs = 0
    return config


@pytest.fixture(scope="module")
def stand_in():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models, "build", stand_in_backbone)
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_data(tmp_path_factory.mktemp("pipeline_data"), "release")


@pytest.fixture(scope="module")
def run(stand_in, data, tmp_path_factory):
    """One pipeline run: (config, workdir, outcome)."""
    data_dir, _ = data
    workdir = str(tmp_path_factory.mktemp("pipeline_run"))
    config = tiny_config(data_dir)
    outcome = algorithm.run(config, workdir)
    return config, workdir, outcome


@pytest.fixture(scope="module")
def truth(data):
    """One row per well of the ground truth (test labels included: the tests may read them)."""
    return data[1].drop_duplicates("id_code").set_index("id_code")


def sirna_group_of(truth):
    """{siRNA: set of siRNAs sharing its plates}, from the labelled training plates of the truth."""
    plates = truth[(truth["dataset"] == "train") & (truth["well_type"] == "treatment")]
    sets = [
        frozenset(group) for group in plates.groupby(["experiment", "plate"])["sirna"].apply(set)
    ]
    return {sirna: group for group in sets for sirna in group}


def log_softmax(logits):
    logits = np.asarray(logits, np.float64)[:, : constants.NUM_SIRNAS]
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def brute_force_assignment(wells, log_probs, truth):
    """Plate prior by exhaustive search: each experiment's cyclic group rotation by the summed
    log-probability that a well's siRNA lies in its plate's group, then per plate the permutation
    of the group's siRNAs with the highest summed log-probability."""
    groups = sorted({tuple(sorted(group)) for group in sirna_group_of(truth).values()})
    groups.sort(key=min)  # groups numbered by smallest member, so plate p holds (g1 + p - 1) mod 4
    prediction = np.empty(len(wells), np.int64)
    for _, experiment in wells.groupby("experiment"):
        best = None
        for rotation in range(len(groups)):
            score = 0.0
            for row in experiment.itertuples():
                members = list(groups[(rotation + row.plate - 1) % len(groups)])
                score += np.log(np.exp(log_probs[row.Index, members]).sum())
            if best is None or score > best[0] + 1e-9:
                best = (score, rotation)
        for plate, rows in experiment.groupby("plate"):
            members = groups[(best[1] + plate - 1) % len(groups)]
            index = rows.index.to_numpy()
            choice = max(
                itertools.permutations(members, len(index)),
                key=lambda labels: sum(
                    log_probs[i, label] for i, label in zip(index, labels, strict=True)
                ),
            )
            prediction[index] = choice
    return prediction


def score(results, round_name, model):
    """(post-processed, plain) overall accuracy of a model in a round, from results.csv."""
    rows = results[(results["round"] == round_name) & (results["model"] == model)]
    rows = rows.set_index("postprocess")["accuracy"]
    return rows["assign"], rows["none"]


def stored(workdir, round_name, split):
    ids, logits = stages.load_logits(
        os.path.join(workdir, f"round_{round_name}", "evaluation", f"{split}_logits.npz")
    )
    return list(ids), logits


# ------------------------------------------------------------------------------------------------
# The shared run


@pytest.mark.slow
def test_stages_run_in_order_and_write_their_files(run, capsys):
    config, workdir, outcome = run
    stages = []
    for round_index in range(ROUNDS + 1):
        round_dir = os.path.join(workdir, f"round_{round_index}")
        if round_index:
            stages.append(os.path.join(round_dir, "pseudo_labels"))
        stages += [os.path.join(round_dir, member) for member in MEMBERS]
        stages.append(os.path.join(round_dir, "evaluation"))
    selected = outcome["selected_round"]
    finetune_dir = outcome["finetune_dir"]
    assert os.path.basename(finetune_dir).startswith(f"finetune_round_{selected}_")
    stages += [finetune_dir, os.path.join(finetune_dir, "evaluation")]
    times = [os.path.getmtime(os.path.join(stage, workdir_lib.DONE_FILE)) for stage in stages]
    assert times == sorted(times), "stages finished out of order"
    assert os.path.getmtime(os.path.join(workdir, "export", workdir_lib.DONE_FILE)) >= times[-1]
    for round_index in range(ROUNDS + 1):
        for member in MEMBERS:
            member_dir = os.path.join(workdir, f"round_{round_index}", member)
            record = workdir_lib.read_done(member_dir)
            assert os.path.isfile(record["checkpoint"])
            member_config = json.load(open(os.path.join(member_dir, "config.json")))
            assert member_config["model"]["backbone"] == member and "pipeline" not in member_config
            losses = pd.read_csv(os.path.join(member_dir, "metrics.csv"))["pseudo_label_loss"]
            if round_index == 0:
                assert record["initial_weights"] is None and record["pseudo_labels"] is None
                assert (losses == 0).all()
            else:
                previous = workdir_lib.read_done(
                    os.path.join(workdir, f"round_{round_index - 1}", member)
                )
                assert record["initial_weights"] == previous["checkpoint"]
                assert record["pseudo_labels"] == os.path.join(
                    workdir, f"round_{round_index}", "pseudo_labels", "ensemble.csv"
                )
                assert (losses > 0).all(), "the pseudo labels did not reach the loss"
    # Fine-tuning trains on the pseudo labels of the round after the last (from every round).
    finetune_labels = os.path.join(finetune_dir, "pseudo_labels", "ensemble.csv")
    record = workdir_lib.read_done(os.path.join(finetune_dir, "pseudo_labels"))
    assert record["round"] == ROUNDS + 1
    assert record["sources"]["ensemble"]["source_round"] == selected
    for cell_type in FINETUNE_CELL_TYPES:
        for member in MEMBERS:
            folder = os.path.join(finetune_dir, member, cell_type)
            done = workdir_lib.read_done(folder)
            assert done["pseudo_label_wells"] == len(pd.read_csv(finetune_labels))
            losses = pd.read_csv(os.path.join(folder, "metrics.csv"))["pseudo_label_loss"]
            assert (losses > 0).all(), "the pseudo labels did not reach the fine-tuning loss"
    export_record = workdir_lib.read_done(os.path.join(workdir, "export"))
    assert sorted(export_record["finetuned"]) == sorted(FINETUNE_CELL_TYPES)
    assert os.path.isfile(os.path.join(workdir, "export", "saved_model.pb"))
    assert os.path.isfile(os.path.join(workdir, "results.csv"))
    assert outcome["export"] == os.path.join(workdir, "export")


@pytest.mark.slow
def test_results_are_the_accuracies_of_the_stored_predictions(run, truth):
    _, workdir, outcome = run
    results = pd.read_csv(os.path.join(workdir, "results.csv"), dtype={"round": str})
    expected_rounds = [str(r) for r in range(ROUNDS + 1)] + ["finetune"]
    assert list(dict.fromkeys(results["round"])) == expected_rounds
    for round_name in expected_rounds:
        rows = results[results["round"] == round_name].set_index(["model", "postprocess"])
        assert set(rows.index) == {
            (m, p) for m in (*MEMBERS, "ensemble") for p in ("none", "assign")
        }
        folder = outcome["finetune_dir"] if round_name == "finetune" else f"round_{round_name}"
        ids, logits = stages.load_logits(
            os.path.join(workdir, folder, "evaluation", "val_logits.npz")
        )
        wells = truth.loc[list(ids)]
        assert (
            set(wells["experiment"]) <= set(VAL_EXPERIMENTS)
            and (wells["well_type"] == "treatment").all()
        )
        if round_name != "finetune":
            val = truth[
                truth["experiment"].isin(VAL_EXPERIMENTS) & (truth["well_type"] == "treatment")
            ]
            assert sorted(ids) == sorted(val.index)
        labels = wells["sirna"].to_numpy()
        logits["ensemble"] = (logits["xception"].astype(np.float64) + logits["xception_wide"]) / 2
        predictions = pd.read_csv(
            os.path.join(workdir, folder, "evaluation", "val_predictions.csv")
        )
        for model in (*MEMBERS, "ensemble"):
            argmax = np.argmax(logits[model][:, : constants.NUM_SIRNAS], axis=1)
            assert rows.loc[(model, "none"), "accuracy"] == pytest.approx(
                np.mean(argmax == labels), abs=1e-9
            )
            assert rows.loc[(model, "none"), "wells"] == len(labels)
            assigned = predictions[f"{model}+assign"].to_numpy()
            assert rows.loc[(model, "assign"), "accuracy"] == pytest.approx(
                np.mean(assigned == labels), abs=1e-9
            )
        np.testing.assert_array_equal(
            predictions["ensemble+assign"],
            brute_force_assignment(wells.reset_index(), log_softmax(logits["ensemble"]), truth),
        )
    summary = pd.DataFrame(outcome["summary"]).set_index("round")
    assert list(summary.columns) == [*MEMBERS, "ensemble", "ensemble+assign"]
    scores = [score(results, str(r), "ensemble") for r in range(ROUNDS + 1)]
    assert outcome["selected_round"] == scores.index(max(scores))  # the first best, in order


@pytest.mark.slow
def test_pseudo_labels_are_the_post_processed_ensemble_of_the_source_round(run, truth):
    _, workdir, _ = run
    test_treatment = truth[(truth["dataset"] == "test") & (truth["well_type"] == "treatment")]
    groups = sirna_group_of(truth)
    best_so_far = (-1.0, -1.0)
    for round_index in range(1, ROUNDS + 1):
        directory = os.path.join(workdir, f"round_{round_index}", "pseudo_labels")
        record = workdir_lib.read_done(directory)["sources"]["ensemble"]
        labels = pd.read_csv(os.path.join(directory, "ensemble.csv"))
        # Keyed by the test treatment wells' id_code, every one of them once.
        assert sorted(labels["id_code"]) == sorted(test_treatment.index)
        for _, plate in labels.groupby(["experiment", "plate"]):
            assert not plate["pseudo_label"].duplicated().any(), "a siRNA twice on one plate"
            assert len({groups[label] for label in plate["pseudo_label"]}) == 1, (
                "a plate mixes siRNA groups"
            )
        # Refreshed exactly when the source's validation score beat every earlier round.
        results = pd.read_csv(os.path.join(workdir, "results.csv"), dtype={"round": str})
        latest = score(results, str(round_index - 1), "ensemble")
        assert record["refreshed"] == (latest > best_so_far)
        best_so_far = max(best_so_far, latest)
        # The labels are the brute-force plate assignment of the source round's ensemble logits
        # (the first refresh takes them as they are).
        if round_index == 1:
            ids, logits = stored(workdir, record["source_round"], "test")
            ensemble = (logits["xception"].astype(np.float64) + logits["xception_wide"]) / 2
            wells = truth.loc[ids].reset_index()
            expected = dict(
                zip(ids, brute_force_assignment(wells, log_softmax(ensemble), truth), strict=True)
            )
            assert labels.set_index("id_code")["pseudo_label"].to_dict() == expected


@pytest.mark.slow
def test_pseudo_labels_do_not_depend_on_test_labels(run, tmp_path):
    """The same pixels without test treatment labels (the Kaggle layout) give the same pseudo labels."""
    config, workdir, _ = run
    data_dir, kaggle_truth = build_data(tmp_path / "kaggle", "kaggle")
    sirnas = tfds.as_numpy(
        tfds.load("rxrx1/native", split="test", data_dir=data_dir, batch_size=-1)
    )
    treatment = sirnas["well_type"] == b"treatment"
    assert (sirnas["sirna"][treatment] == constants.UNKNOWN_LABEL).all()  # nothing to leak from
    kaggle_config = tiny_config(data_dir)
    test_experiments = sorted(
        kaggle_truth.loc[kaggle_truth["dataset"] == "test", "experiment"].unique()
    )
    design = algorithm.labelled_plate_design(kaggle_config)
    context = stages.Context(kaggle_config, str(tmp_path), design, tuple(test_experiments))
    folders = {member: os.path.join(workdir, "round_0", member) for member in MEMBERS}
    wells, logits = stages.member_logits(
        context, folders, split="test", experiments=test_experiments, with_labels=False
    )
    ensemble = evaluation.ensemble_logits([logits[member] for member in MEMBERS])
    labels = evaluation.well_predictions(wells, ensemble, method="assign", plate_design=design)[
        "prediction"
    ]
    released = pd.read_csv(
        os.path.join(workdir, "round_1", "pseudo_labels", "ensemble.csv")
    ).set_index("id_code")
    assert dict(zip(wells["id_code"], labels, strict=True)) == released["pseudo_label"].to_dict()


@pytest.mark.slow
def test_own_teacher_pseudo_labels_come_from_each_models_own_logits(run, truth, tmp_path):
    """The public code's variant: each member's labels are the plate prior on its own teacher."""
    config, workdir, _ = run
    shutil.copytree(
        os.path.join(workdir, "round_0", "evaluation"), tmp_path / "round_0" / "evaluation"
    )
    own = tiny_config(config.data.data_dir)
    own.mean_teacher.pseudo_label_source = "own_teacher"
    context = stages.Context(own, str(tmp_path), algorithm.labelled_plate_design(own), ())
    round_0 = workdir_lib.read_done(str(tmp_path / "round_0" / "evaluation"))
    paths = stages.pseudo_label_stage(context, 1, [round_0])
    ids, logits = stored(workdir, 0, "test")
    wells = truth.loc[ids].reset_index()
    for member in MEMBERS:
        assert paths[member] == str(tmp_path / "round_1" / "pseudo_labels" / f"{member}.csv")
        labels = pd.read_csv(paths[member]).set_index("id_code")["pseudo_label"].to_dict()
        expected = brute_force_assignment(wells, log_softmax(logits[member]), truth)
        assert labels == dict(zip(ids, expected, strict=True))


@pytest.mark.slow
def test_final_export_serves_the_selected_rounds_ensemble(run, data):
    """`predict` with DIR/export (another reading of the data) reproduces the stored ensemble logits
    for the cell types not fine-tuned and the fine-tuned models' ensemble for the others; its
    `serving_default` serves the selected round's ensemble to every cell type."""
    _, workdir, outcome = run
    data_dir, _ = data
    predictor = inference.load_export(os.path.join(workdir, "export"))
    plain = dataclasses.replace(predictor, serve_by_cell_type=None)  # serving_default only
    outputs = inference.predict_split(
        {"model": predictor, "default": plain}, data_dir, "rxrx1/native", "test"
    )
    wells = outputs.wells.set_index("id_code")
    ids, members = stored(workdir, outcome["selected_round"], "test")
    general = (members["xception"].astype(np.float64) + members["xception_wide"]) / 2
    served = pd.DataFrame(outputs.logits["model"], index=wells.index).loc[ids].to_numpy()
    default = pd.DataFrame(outputs.logits["default"], index=wells.index).loc[ids].to_numpy()
    np.testing.assert_allclose(default, general, atol=1e-4)
    routed = wells.loc[ids, "cell_type"].isin(FINETUNE_CELL_TYPES).to_numpy()
    assert routed.any() and (~routed).any()
    np.testing.assert_allclose(served[~routed], general[~routed], atol=1e-4)
    finetuned = workdir_lib.read_done(outcome["finetune_dir"])["workdirs"]
    for cell_type in FINETUNE_CELL_TYPES:
        own = inference.predict_split(
            {m: inference.from_run_folder(finetuned[cell_type][m]) for m in MEMBERS},
            data_dir, "rxrx1/native", "test", cell_types=(cell_type,),
        )  # fmt: skip
        frame = {m: pd.DataFrame(own.logits[m], index=own.wells["id_code"]) for m in MEMBERS}
        mask = (wells.loc[ids, "cell_type"] == cell_type).to_numpy()
        rows = np.asarray(ids)[mask]
        expected = sum(frame[m].loc[rows].to_numpy(np.float64) for m in MEMBERS) / len(MEMBERS)
        np.testing.assert_allclose(served[mask], expected, atol=1e-4)
        assert np.abs(served[mask] - general[mask]).max() > 1e-3
    assert predictor.num_models == len(MEMBERS)


@pytest.mark.slow
def test_rerun_skips_every_finished_stage(run, monkeypatch, capsys):
    config, workdir, outcome = run

    def refuse(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(training, "run", refuse)
    monkeypatch.setattr(finetuning, "run", refuse)
    monkeypatch.setattr(inference, "predict_split", refuse)
    before = open(os.path.join(workdir, "results.csv")).read()
    again = algorithm.run(config, workdir)
    assert open(os.path.join(workdir, "results.csv")).read() == before
    assert (
        again["summary"] == outcome["summary"]
        and again["selected_round"] == outcome["selected_round"]
    )
    assert "skipped" in capsys.readouterr().out


def test_only_fields_that_add_stages_may_change_between_runs(tmp_path):
    config = config_lib.load(CONFIG + ":cpu")
    pipeline_config.check_run_config(config, str(tmp_path))
    more = config_lib.load(CONFIG + ":cpu")
    more.pipeline.pseudo_label_rounds += 1
    more.finetune.learning_rate *= 2  # fine-tunes again, into a folder of its own
    pipeline_config.check_run_config(more, str(tmp_path))
    assert pipeline_config.finetune_settings_key(more) != pipeline_config.finetune_settings_key(
        config
    )
    other = config_lib.load(CONFIG + ":cpu")
    other.model.width = 0.25
    with pytest.raises(ValueError, match="model.width"):
        pipeline_config.check_run_config(other, str(tmp_path))


@pytest.mark.slow
def test_rerun_with_another_config_is_refused(run):
    config, workdir, _ = run
    changed = tiny_config(config.data.data_dir)
    changed.train.epochs = 3
    with pytest.raises(ValueError, match="train.epochs"):
        algorithm.run(changed, workdir)


# ------------------------------------------------------------------------------------------------
# Pure pieces


def test_pseudo_labels_refresh_only_on_a_strict_improvement():
    assert pseudo_labels.best_round([0.2]) == 0
    assert pseudo_labels.best_round([0.2, 0.3, 0.3]) == 1  # a tie keeps the earlier labels
    assert pseudo_labels.best_round([0.4, 0.3, 0.35]) == 0
    assert pseudo_labels.best_round([float("nan"), 0.1]) == 1
    # (post-processed, plain): the plain accuracy breaks a tie of the saturated post-processed one.
    assert pseudo_labels.best_round([(1.0, 0.7), (1.0, 0.8), (1.0, 0.8)]) == 1
    assert pseudo_labels.best_round([(1.0, 0.7), (0.9, 0.95)]) == 0


def test_source_score_reads_the_overall_rows():
    rows = [
        {"model": "ensemble", "postprocess": "assign", "cell_type": "all", "accuracy": 0.9},
        {"model": "ensemble", "postprocess": "assign", "cell_type": "RPE", "accuracy": 0.5},
        {"model": "ensemble", "postprocess": "none", "cell_type": "all", "accuracy": 0.6},
        {"model": "xception", "postprocess": "none", "cell_type": "all", "accuracy": 0.4},
    ]
    assert pseudo_labels.source_score(rows, "ensemble", "assign") == (0.9, 0.6)
    with pytest.raises(KeyError, match="xception"):
        pseudo_labels.source_score(rows, "xception", "assign")


def test_logit_bank_takes_the_first_refresh_then_blends():
    new = np.array([[1.0, 3.0]])
    np.testing.assert_array_equal(pseudo_labels.blend_bank(None, new, 0.9), new)
    np.testing.assert_allclose(
        pseudo_labels.blend_bank(np.array([[11.0, 3.0]]), new, 0.9), [[2.0, 3.0]]
    )


@pytest.mark.parametrize("variant, start", [("", "last"), (":cpu", "best")])
def test_rounds_continue_from_the_last_weights_where_they_continue_the_schedule(
    tmp_path, variant, start
):
    """Paper scale (the schedule continues): the previous round's last weights, so that its step
    counter does not go back to the best epoch; `:cpu` (a constant rate): its best checkpoint."""
    config = config_lib.load(CONFIG + variant)
    folder = tmp_path / "round_0" / "xception"
    (folder / "checkpoints").mkdir(parents=True)
    for name in ("best", "last"):
        (folder / "checkpoints" / f"{name}.weights.h5").write_bytes(b"")
    chosen = algorithm.round_start_weights(config, str(folder))
    assert chosen == str(folder / "checkpoints" / f"{start}.weights.h5")
    (folder / "checkpoints" / "last.weights.h5").unlink()
    if start == "last":
        with pytest.raises(FileNotFoundError, match="last.weights.h5 is missing"):
            algorithm.round_start_weights(config, str(folder))
    else:
        assert algorithm.round_start_weights(config, str(folder)) == chosen


def test_member_configs_per_round():
    config = config_lib.load(CONFIG)
    first = pipeline_config.member_config(config, "xception_wide", 0)
    later = pipeline_config.member_config(config, "xception", 2)
    assert "pipeline" not in first and first.model.backbone == "xception_wide"
    # Paper scale: round 0 the first 80 of the 160 epochs, later rounds continue the schedule.
    assert first.train.epochs == config.pipeline.train_epochs == 80
    assert first.train.schedule_epochs == later.train.schedule_epochs == config.train.epochs == 160
    assert first.train.learning_rates == later.train.learning_rates == config.train.learning_rates
    assert later.train.epochs == config.pipeline.retrain_epochs
    assert later.train.lr_boundary_fractions == config.train.lr_boundary_fractions
    with config.unlocked():
        config.pipeline.retrain_learning_rate = 1e-4  # a constant rate for the later rounds
    later = pipeline_config.member_config(config, "xception", 2)
    assert later.train.learning_rates == (1e-4,) and later.train.lr_boundary_fractions == ()
    assert config.model.backbone == "xception" and "pipeline" in config  # the input is left alone


def test_pseudo_label_sources_follow_the_config():
    config = config_lib.load(CONFIG)
    assert pseudo_labels.pseudo_label_sources(config) == {member: "ensemble" for member in MEMBERS}
    own = config_lib.load(CONFIG + ":own_teacher")
    assert pseudo_labels.pseudo_label_sources(own) == {member: member for member in MEMBERS}


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("backbones", ("xception", "xception"), "distinct"),
        ("backbones", ("resnet",), "resnet"),
        ("postprocess", "vote", "postprocess"),
        ("pseudo_label_bank_weight", 0.0, "bank_weight"),
    ],
)
def test_invalid_pipeline_fields_fail_clearly(field, value, message):
    config = config_lib.load(CONFIG)
    config.pipeline[field] = value
    with pytest.raises(ValueError, match=message):
        pipeline_config.validate(config)


def test_shipped_variants_validate():
    cpu = pipeline_config.validate(config_lib.load(CONFIG + ":cpu"))
    assert cpu.data.synthetic_preset == "quickstart" and cpu.pipeline.pseudo_label_rounds >= 1
    assert pipeline_config.validate(config_lib.load(CONFIG)).data.image_size == constants.IMAGE_SIZE
