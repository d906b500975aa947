"""The ablation protocol: bootstrap statistics against brute force, the designs x seeds run, its tables.

The statistics are checked against a loop written out by hand over the same draws, exact cases
(constant vectors, identical predictions) and the coverage of a simulated Bernoulli vector. The run
uses stand-in data preparation, trainer, evaluator and floors that hand back crafted logits on the
tiny data set's test wells, so every number in the tables has a plain numpy reference.
"""

import os
import pathlib
import pickle

import numpy as np
import pandas as pd
import pytest
import tensorflow_datasets as tfds

from deepnoise_tf import (
    ablation,
    ablation_cache,
    ablation_jobs,
    ablation_protocol,
    ablation_steps,
    constants,
    data,
    evaluation,
    plots,
    synthetic,
)
from deepnoise_tf import ablation_statistics as statistics
from deepnoise_tf import config as config_lib
from deepnoise_tf import workdir as workdir_lib

# ------------------------------------------------------------------------------------------------
# Statistics (pure numpy)


def test_bootstrap_of_a_constant_vector_has_zero_width():
    for value in (0.0, 1.0):
        interval = statistics.bootstrap_interval(np.full((3, 40), value), samples=200)
        assert (interval.mean, interval.low, interval.high) == (value, value, value)


def test_paired_difference_of_identical_predictions_is_exactly_zero():
    correct = np.random.default_rng(0).integers(0, 2, size=(3, 60))
    difference = statistics.paired_difference(correct, correct.copy(), samples=300)
    assert (difference.mean, difference.low, difference.high) == (0.0, 0.0, 0.0)
    assert statistics.verdict(difference, strict=True) == "fails clearly"  # never better
    assert statistics.verdict(difference, strict=False) == "holds clearly"  # exactly as good


def brute_force_statistics(matrix, samples, rng_seed, resample_seeds):
    """The bootstrap written out draw by draw from the documented order of the draws."""
    seeds, wells = matrix.shape
    rng = np.random.default_rng(rng_seed)
    well_draws = rng.integers(0, wells, size=(samples, wells))
    seed_draws = (
        rng.integers(0, seeds, size=(samples, seeds))
        if resample_seeds
        else np.tile(np.arange(seeds), (samples, 1))
    )
    values = []
    for draw in range(samples):
        per_seed = [np.mean([matrix[s, w] for w in well_draws[draw]]) for s in seed_draws[draw]]
        values.append(np.mean(per_seed))
    return np.array(values)


@pytest.mark.parametrize("resample_seeds", [True, False])
def test_interval_is_the_percentiles_of_a_brute_force_bootstrap(resample_seeds):
    matrix = np.random.default_rng(1).integers(0, 2, size=(3, 25)).astype(float)
    reference = brute_force_statistics(matrix, 150, 7, resample_seeds)
    computed = statistics.bootstrap_statistics(
        matrix, samples=150, rng_seed=7, resample_seeds=resample_seeds
    )
    np.testing.assert_allclose(computed, reference, atol=1e-12)
    interval = statistics.bootstrap_interval(
        matrix, samples=150, rng_seed=7, resample_seeds=resample_seeds
    )
    np.testing.assert_allclose(
        [interval.low, interval.high], np.percentile(reference, [2.5, 97.5]), atol=1e-12
    )
    assert interval.mean == pytest.approx(matrix.mean(axis=1).mean())


def test_interval_covers_the_true_accuracy_about_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    truth, trials = 0.7, 300
    covered = 0
    for trial in range(trials):
        correct = rng.random(200) < truth
        interval = statistics.bootstrap_interval(correct, samples=400, rng_seed=trial)
        covered += interval.low <= truth <= interval.high
    assert 0.90 <= covered / trials <= 0.99  # binomial sd at 0.95: 0.013


def test_resampling_seeds_widens_the_interval_when_seeds_disagree():
    matrix = np.stack([np.ones(50), np.zeros(50)])  # one seed always right, the other never
    wells_only = statistics.bootstrap_interval(matrix, samples=500, resample_seeds=False)
    assert (wells_only.low, wells_only.high) == (0.5, 0.5)
    both = statistics.bootstrap_interval(matrix, samples=500)
    assert both.low == 0.0 and both.high == 1.0 and both.mean == 0.5


def test_verdicts_on_constructed_intervals():
    assert statistics.verdict(statistics.Interval(0.1, 0.02, 0.2)) == "holds clearly"
    assert statistics.verdict(statistics.Interval(0.1, -0.02, 0.2)) == "holds in the mean"
    assert statistics.verdict(statistics.Interval(0.0, -0.1, 0.1)) == "fails in the mean"
    assert (
        statistics.verdict(statistics.Interval(0.0, -0.1, 0.1), strict=False) == "holds in the mean"
    )
    assert (
        statistics.verdict(statistics.Interval(-0.1, -0.2, 0.05), strict=False)
        == "fails in the mean"
    )
    assert (
        statistics.verdict(statistics.Interval(-0.1, -0.2, -0.05), strict=False) == "fails clearly"
    )
    assert statistics.verdict(statistics.Interval(-0.1, -0.2, 0.0), strict=True) == "fails clearly"
    assert (
        statistics.verdict(statistics.Interval(-0.1, -0.2, 0.0), strict=False)
        == "fails in the mean"
    )


def test_orderings_are_the_ablation_checks_plus_the_feature_baseline():
    names = set(ablation_steps.STEP_NAMES)
    assert all({o.better, o.worse} <= names for o in statistics.ORDERINGS)
    pairs = {(o.group, o.better, o.worse) for o in statistics.ORDERINGS}
    a = ablation_steps.FIGURE_3A
    b = ablation_steps.FIGURE_3B
    assert {("3A", a[i + 1], a[i]) for i in range(len(a) - 1)} <= pairs
    assert {("3B", b[i + 1], b[i]) for i in range(len(b) - 1)} <= pairs
    deep = names - set(ablation_steps.FLOOR_STEPS)
    assert {o.better for o in statistics.ORDERINGS if o.group == "floor"} == deep
    assert ("features", "ensemble", "feature_baseline") in pairs


def constructed_wells():
    """Two seeds, 40 wells: plate always right; experiment right on seed-dependent 3/4; cell type
    right on half but on more than experiment on seed 1; arcface always wrong."""
    rows = []
    for seed in (0, 1):
        for well in range(40):
            outcome = {
                "norm_plate": 1,
                "norm_experiment": int(well % 4 != 0),
                "norm_cell_type": int(well % 2 == 0) if seed == 0 else int(well % 8 != 0),
                "arcface": 0,
            }
            for step, correct in outcome.items():
                rows.append(("d", seed, step, f"w{well:02d}", "E-1", "HEPG2", 1, 1 - (1 - correct), correct))  # fmt: skip
    return pd.DataFrame(rows, columns=list(ablation_protocol.WELL_COLUMNS))


def test_summary_and_orderings_of_constructed_outcomes():
    results = ablation_protocol.summarize(constructed_wells(), samples=500)
    summary = results["summary"].set_index("step")
    assert summary.loc["norm_plate", ["mean", "low", "high"]].tolist() == [1.0, 1.0, 1.0]
    assert summary.loc["norm_experiment", "mean"] == 0.75
    assert summary.loc["norm_cell_type", "mean"] == pytest.approx((0.5 + 0.875) / 2)
    verdicts = results["orderings"].set_index("ordering")["verdict"]
    assert verdicts["norm_plate > norm_experiment"] == "holds clearly"
    # Seed 0 says experiment is better by 25 points, seed 1 says worse by 12.5: mean +6.25.
    assert verdicts["norm_experiment > norm_cell_type"] == "holds in the mean"
    assert verdicts["arcface >= norm_plate"] == "fails clearly"
    table = results["table"]
    assert len(table) == 8 and (table["wells"] == 40).all()


# ------------------------------------------------------------------------------------------------
# The run, with stand-ins

VAL_EXPERIMENTS = ("HEPG2-02", "HUVEC-02")
TINY_OVERRIDES = {
    "data.val_experiments": repr(VAL_EXPERIMENTS),
    "data.image_size": "16",
    "model.width": "0.0625",
    "train.epochs": "1",
}
FAMILY = {"development": ("dev_a", "dev_b"), "held_out": ("held_a", "held_b", "held_c")}
SEEDS = (100, 101)  # held-out seeds: the development ones are refused there


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """(data_dir, builder, ground truth) of a tiny release-layout RxRx1 (test labels included)."""
    import tfds_rxrx1  # noqa: F401

    data_dir = tmp_path_factory.mktemp("protocol_data")
    truth = synthetic.write_dataset(
        data_dir / "manual", layout="release", preset="tiny", train_experiments=2
    )
    builder = tfds.builder("rxrx1/native", data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=str(data_dir / "manual"), try_download_gcs=False
        )
    )
    return str(data_dir), "rxrx1/native", truth


def labelled_test_wells(truth):
    wells = truth[truth["dataset"] == "test"].drop_duplicates("id_code")
    wells = wells.rename(columns={"sirna": "label"}).reset_index(drop=True)
    return wells[list(evaluation.WELL_COLUMNS)]


def crafted_logits(wells, design, seed, step):
    """Noise plus a bonus for the truth on a share of the wells that grows along the steps."""
    index = ablation_steps.STEP_NAMES.index(step)
    rng = np.random.default_rng([index, seed, sum(map(ord, design))])
    logits = rng.normal(size=(len(wells), constants.NUM_CLASSES))
    rows, labels = np.arange(len(wells)), wells["label"].to_numpy()
    lucky = rng.random(len(wells)) < 0.1 + 0.08 * index
    logits[rows[lucky], labels[lucky]] += 10.0
    return logits


class StandIns:
    """Records every call; 'training' leaves what `training.run` leaves for the resume logic."""

    def __init__(self, data_dir, builder, wells):
        self.data_dir, self.builder, self.wells = data_dir, builder, wells
        self.prepared, self.trained, self.evaluated, self.fitted = [], [], [], []

    def prepare_data(self, data_dir, design):
        self.prepared.append(design)
        return self.data_dir, self.builder

    def trainer(self, config, step_folder):
        folder = pathlib.Path(step_folder)
        self.trained.append((folder.parent.parent.name, config.train.seed, folder.name))
        (folder / "config.json").write_text(config_lib.to_json(config))
        (folder / "trained_by_process.txt").write_text(
            str(os.getpid())
        )  # the `--jobs` test reads it
        workdir_lib.mark_done(folder, {"epochs": config.train.epochs})

    def evaluator(self, config, step_folder, report_split):
        folder = pathlib.Path(step_folder)
        design, seed = folder.parent.parent.name, config.train.seed
        self.evaluated.append((design, seed, folder.name, report_split))
        return self.wells, crafted_logits(self.wells, design, seed, folder.name)

    def fitter(self, name):
        def fit(config, *, report_split):
            self.fitted.append((name, report_split))
            return self.wells, crafted_logits(self.wells, "floor", 0, name)

        return fit


@pytest.fixture(scope="module")
def protocol_run(tiny_data, tmp_path_factory):
    data_dir, builder, truth = tiny_data
    workdir = tmp_path_factory.mktemp("protocol_run")
    stand_ins = StandIns(data_dir, builder, labelled_test_wells(truth))
    titles = []
    original_plot = plots.plot_interval_figure
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(ablation_protocol, "family_designs", FAMILY.__getitem__)

    def recording_plot(summary, steps, labels, path, title):
        titles.append(title)
        return original_plot(summary, steps, labels, path, title)

    monkeypatch.setattr(plots, "plot_interval_figure", recording_plot)

    def run():
        return ablation_protocol.run_protocol(
            workdir, "held_out", seeds=SEEDS, overrides=TINY_OVERRIDES, samples=300,
            trainer=stand_ins.trainer, evaluator=stand_ins.evaluator,
            floor_fitters={name: stand_ins.fitter(name) for name in ablation_steps.FLOOR_STEPS},
            prepare_data=stand_ins.prepare_data,
        )  # fmt: skip

    results = run()
    yield workdir, stand_ins, run, results, titles
    monkeypatch.undo()


TRAINING_STEPS = [step.name for step in ablation_steps.STEPS if step.trains]


def test_each_design_seed_and_step_runs_once_and_floors_once_per_design(protocol_run):
    _, stand_ins, _, _, _ = protocol_run
    designs = FAMILY["held_out"][: ablation_protocol.HELD_OUT_DESIGN_COUNT]
    assert stand_ins.prepared == list(designs)  # data made once per design, shared by seeds
    expected = [(d, s, step) for d in designs for s in SEEDS for step in TRAINING_STEPS]
    assert stand_ins.trained == expected
    assert [call[:3] for call in stand_ins.evaluated] == expected
    assert sorted(stand_ins.fitted) == sorted(
        [(name, "test") for name in ablation_steps.FLOOR_STEPS] * len(designs)
    )
    assert {call[3] for call in stand_ins.evaluated} == {"test"}  # report_split reaches it


def expected_accuracy(wells, logits):
    treatment = (wells["well_type"] == "treatment").to_numpy()
    predicted = logits[treatment, : constants.NUM_SIRNAS].argmax(1)
    return float(np.mean(predicted == wells["label"].to_numpy()[treatment]))


def test_tables_match_numpy(protocol_run):
    workdir, stand_ins, _, _, _ = protocol_run
    table = pd.read_csv(workdir / ablation_protocol.TABLE_FILE)
    assert list(table.columns) == ["design", "seed", "step", "wells", "correct", "accuracy"]
    wells = stand_ins.wells
    for row in table[table["step"].isin(TRAINING_STEPS)].itertuples():
        logits = crafted_logits(wells, row.design, row.seed, row.step)
        assert row.accuracy == pytest.approx(expected_accuracy(wells, logits))
    floor = table[table["step"] == "linear_floor"]
    assert floor["accuracy"].nunique() == 1  # one fit, repeated for every seed
    ensemble = table[(table["step"] == "ensemble")].iloc[0]
    members = [crafted_logits(wells, ensemble.design, ensemble.seed, name)
               for name in ("mean_teacher", "mean_teacher_wide")]  # fmt: skip
    assert ensemble.accuracy == pytest.approx(expected_accuracy(wells, np.mean(members, axis=0)))

    summary = pd.read_csv(workdir / ablation_protocol.SUMMARY_FILE)
    mean_over_seeds = table.groupby(["design", "step"])["accuracy"].mean()
    per_well = pd.read_csv(workdir / ablation_protocol.WELLS_FILE)
    for row in summary.itertuples():
        assert row.mean == pytest.approx(mean_over_seeds[(row.design, row.step)])
        assert row.low <= row.mean <= row.high
        part = per_well[(per_well["design"] == row.design) & (per_well["step"] == row.step)]
        matrix = part.pivot(index="seed", columns="id_code", values="correct").sort_index(axis=1)
        interval = statistics.bootstrap_interval(matrix.to_numpy(), samples=300)
        assert (row.low, row.high) == pytest.approx((interval.low, interval.high))

    orderings = pd.read_csv(workdir / ablation_protocol.ORDERINGS_FILE)
    assert set(orderings["verdict"]) <= set(statistics.VERDICTS)
    for row in orderings.itertuples():
        strict = ">=" not in row.ordering
        interval = statistics.Interval(row.mean_difference, row.low, row.high)
        assert row.verdict == statistics.verdict(interval, strict)
        difference = (summary.set_index(["design", "step"]).loc[(row.design, row.better), "mean"]
                      - summary.set_index(["design", "step"]).loc[(row.design, row.worse), "mean"])  # fmt: skip
        assert row.mean_difference == pytest.approx(difference)


def test_report_and_figures_name_the_synthetic_design(protocol_run):
    workdir, _, _, _, titles = protocol_run
    report = (workdir / "protocol.md").read_text()
    designs = FAMILY["held_out"][:2]
    assert len(titles) == 2 * len(designs)
    for title in titles:
        assert "rxrx1" not in title.lower()
        assert "synthetic design held_" in title and "seeds 100,101, test split" in title
    for design in designs:
        assert f"### synthetic design {design}, seeds 100,101, test split" in report
        for figure in ("3a", "3b"):
            path = workdir / f"{design}_figure_{figure}.png"
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert path.name in report
    assert "rxrx1" not in report.lower()
    assert "feature_baseline" in report and "linear_floor" in report


def test_rerun_resumes_without_retraining(protocol_run):
    workdir, stand_ins, run, first, _ = protocol_run
    for calls in (stand_ins.trained, stand_ins.evaluated, stand_ins.fitted):
        calls.clear()
    again = run()
    assert stand_ins.trained == [] and stand_ins.evaluated == [] and stand_ins.fitted == []
    pd.testing.assert_frame_equal(again["summary"], first["summary"])

    # An evaluation of another split is no cache for this one: evaluated again, not retrained.
    step = workdir / "held_a" / "seed_101" / "arcface"
    wells, logits, seconds = ablation_cache.load_step_logits(step)
    ablation_cache.save_step_logits(step, wells, logits, seconds, report_split="val")
    run()
    assert stand_ins.trained == [] and stand_ins.evaluated == [("held_a", 101, "arcface", "test")]


def test_a_rerun_with_another_recipe_is_refused(protocol_run, family):
    """The recipe is frozen: finished steps made with another config are not mixed into the tables."""
    workdir, stand_ins, _, _, _ = protocol_run
    for calls in (stand_ins.trained, stand_ins.evaluated):
        calls.clear()
    with pytest.raises(ValueError, match="recipe is frozen") as error:
        ablation_protocol.run_protocol(
            workdir, "held_out", seeds=SEEDS, overrides={**TINY_OVERRIDES, "train.epochs": "2"},
            samples=50, trainer=stand_ins.trainer, evaluator=stand_ins.evaluator,
            floor_fitters={name: stand_ins.fitter(name) for name in ablation_steps.FLOOR_STEPS},
            prepare_data=stand_ins.prepare_data,
        )  # fmt: skip
    assert "train.epochs" in str(error.value)
    assert stand_ins.trained == [] and stand_ins.evaluated == []


def run_side_by_side(workdir, stand_ins, trainer):
    return ablation_protocol.run_protocol(
        workdir, "held_out", seeds=SEEDS, overrides=TINY_OVERRIDES, samples=300, jobs=2,
        trainer=trainer, evaluator=stand_ins.evaluator,
        floor_fitters={name: stand_ins.fitter(name) for name in ablation_steps.FLOOR_STEPS},
        prepare_data=stand_ins.prepare_data,
    )  # fmt: skip


def test_units_side_by_side_give_the_same_tables_from_one_fresh_process_each(
    protocol_run, family, tmp_path
):
    """`jobs=2`: each (design, seed) trains in its own spawned process; the tables are the ones of
    the in-process run (the stand-ins' logits depend on design, seed and step only)."""
    _, base, _, first, _ = protocol_run
    stand_ins = StandIns(base.data_dir, base.builder, base.wells)
    results = run_side_by_side(tmp_path, stand_ins, stand_ins.trainer)
    assert stand_ins.trained == []  # the parent trained nothing: the workers did
    for name in ("wells", "summary", "orderings"):
        pd.testing.assert_frame_equal(results[name], first[name])
    units = [(d, s) for d in FAMILY["held_out"][:2] for s in SEEDS]
    pids = {}
    for design, seed in units:
        unit_pids = {(tmp_path / design / f"seed_{seed}" / step / "trained_by_process.txt").read_text()
                     for step in TRAINING_STEPS}  # fmt: skip
        assert len(unit_pids) == 1  # one process trained the whole unit
        pids[(design, seed)] = unit_pids.pop()
    assert len(set(pids.values())) == len(units) and str(os.getpid()) not in pids.values()


class FailingTrainer:
    """Trains like the stand-in except for one step of one seed (picklable: a module-level class)."""

    def __init__(self, stand_ins, seed, step):
        self.stand_ins, self.seed, self.step = stand_ins, seed, step

    def __call__(self, config, step_folder):
        if config.train.seed == self.seed and pathlib.Path(step_folder).name == self.step:
            raise OSError("disk full (simulated)")
        self.stand_ins.trainer(config, step_folder)


def test_a_failed_unit_fails_the_run_naming_it_and_the_others_stay_cached(
    protocol_run, family, tmp_path
):
    base = protocol_run[1]
    stand_ins = StandIns(base.data_dir, base.builder, base.wells)
    with pytest.raises(RuntimeError, match=r"2 of 4 protocol units failed") as error:
        run_side_by_side(tmp_path, stand_ins, FailingTrainer(stand_ins, 101, "arcface"))
    message = str(error.value)
    assert "seed 101" in message and "seed 100" not in message and "disk full" in message
    for design in FAMILY["held_out"][:2]:  # seed 100 finished; seed 101 up to its failed step
        assert ablation_cache.is_cached(
            tmp_path / design / "seed_100" / "mean_teacher_wide", "test"
        )
        assert ablation_cache.is_cached(tmp_path / design / "seed_101" / "norm_plate", "test")
        assert not (tmp_path / design / "seed_101" / "arcface" / "done.json").exists()
    results = run_side_by_side(tmp_path, stand_ins, stand_ins.trainer)  # resumes
    pd.testing.assert_frame_equal(results["summary"], protocol_run[3]["summary"])


def test_threads_per_job_shares_the_cores():
    assert [ablation_jobs.threads_per_job(jobs, cores=4) for jobs in (1, 2, 3, 4, 8)] == [
        4,
        2,
        1,
        1,
        1,
    ]
    with pytest.raises(ValueError, match="at least 1"):
        ablation_jobs.threads_per_job(0, cores=2)


@pytest.mark.parametrize("report_split, excluded", [("val", ("E-val",)), ("test", ())])
def test_the_plate_prior_learns_from_training_experiments_that_are_not_reported(
    monkeypatch, report_split, excluded
):
    """Reporting on the validation experiments keeps them out of the plate design the prior learns;
    reporting on the test split may learn from the whole train split."""
    calls = []

    def recorded(data_dir, builder, split, exclude_experiments=()):
        calls.append((data_dir, builder, split, tuple(exclude_experiments)))
        return "design"

    monkeypatch.setattr(data, "plate_design_from_split", recorded)
    reference = config_lib.default_config()
    with reference.unlocked():
        reference.data.val_experiments = ("E-val",)
        reference.data.data_dir, reference.data.builder = "/d", "rxrx1/native"
    members = {name: None for name in ablation_steps.STEPS_BY_NAME["postprocess"].members}
    assert ablation_steps.report_plate_design(reference, members, report_split) == "design"
    assert calls == [("/d", "rxrx1/native", "train", excluded)]
    del members[next(iter(members))]  # a member missing: no plate prior at all
    assert ablation_steps.report_plate_design(reference, members, report_split) is None


# ------------------------------------------------------------------------------------------------
# The command line


@pytest.fixture
def family(monkeypatch):
    monkeypatch.setattr(ablation_protocol, "family_designs", FAMILY.__getitem__)


def parse_error(argv, capsys) -> str:
    with pytest.raises(SystemExit):
        ablation.parse_command_line(["--workdir", "w", *argv])
    return capsys.readouterr().err


def test_command_line_defaults(family):
    arguments, _ = ablation.parse_command_line(["--workdir", "w", "--protocol", "held_out"])
    assert arguments.designs == FAMILY["held_out"][: ablation_protocol.HELD_OUT_DESIGN_COUNT]
    assert arguments.seeds == ablation_protocol.PROTOCOL_SEEDS["held_out"]
    assert arguments.steps == list(ablation_steps.STEP_NAMES)
    arguments, _ = ablation.parse_command_line(
        ["--workdir", "w", "--protocol", "development", "--seeds", "3,5", "--designs", "dev_b"]
    )
    assert arguments.designs == ("dev_b",) and arguments.seeds == (3, 5)
    arguments, _ = ablation.parse_command_line(["--workdir", "w"])
    assert arguments.protocol == "single" and arguments.scale == "cpu"
    assert arguments.steps == list(ablation_steps.DEFAULT_STEPS)
    # The protocols' own recipe, one training per usable core (one at paper scale), unless told.
    arguments, _ = ablation.parse_command_line(["--workdir", "w", "--protocol", "held_out"])
    assert arguments.scale == "cpu_family" and arguments.jobs == ablation_jobs.usable_cores()
    argv = ["--workdir", "w", "--protocol", "held_out", "--scale", "paper"]
    assert ablation.parse_command_line(argv)[0].jobs == 1
    assert ablation.parse_command_line([*argv, "--jobs", "3"])[0].jobs == 3


def test_command_line_errors_name_the_closest_choice(family, capsys):
    assert "did you mean 'held_out'" in parse_error(["--protocol", "held-out"], capsys)
    error = parse_error(["--protocol", "held_out", "--designs", "held_d,held_a"], capsys)
    assert "unknown held_out design 'held_d'" in error and "did you mean" in error
    error = parse_error(["--protocol", "held_out", "--designs", "dev_a"], capsys)
    assert "it is a development design" in error
    assert "non-negative integers" in parse_error(
        ["--protocol", "held_out", "--seeds", "0,x"], capsys
    )
    assert "given twice" in parse_error(["--protocol", "held_out", "--seeds", "1,1"], capsys)
    assert "--seeds needs --protocol" in parse_error(["--seeds", "0,1"], capsys)
    assert "--jobs needs --protocol" in parse_error(["--jobs", "2"], capsys)
    assert "--jobs must be 0 (automatic) or more" in parse_error(
        ["--protocol", "held_out", "--jobs", "-1"], capsys
    )
    error = parse_error(["--protocol", "held_out", "--seeds", "100,2"], capsys)
    assert "seeds [2] are development seeds" in error
    error = parse_error(["--protocol", "development", "--seeds", "101"], capsys)
    assert "seeds [101] are held_out seeds" in error
    error = parse_error(["--protocol", "held_out", "--data_dir", "somewhere"], capsys)
    assert "drop --data_dir" in error
    assert ablation_protocol.PROTOCOLS[0] == "single"


def test_the_documented_protocol_commands_parse(monkeypatch):
    real_family = {
        "development": tuple(f"family_dev_{index}" for index in range(1, 5)),
        "held_out": tuple(f"family_heldout_{index}" for index in range(1, 4)),
    }
    monkeypatch.setattr(ablation_protocol, "family_designs", real_family.__getitem__)
    text = (pathlib.Path(__file__).parents[1] / "docs" / "ablation.md").read_text()
    commands = [
        line.split()[3:]
        for line in text.replace("\\\n", " ").splitlines()
        if line.startswith("python -m deepnoise_tf.ablation --protocol")
    ]
    assert len(commands) >= 2  # the one command, with and without its defaults spelled out
    for argv in commands:
        arguments, _ = ablation.parse_command_line(argv)
        assert arguments.protocol == "held_out"
        assert arguments.designs == real_family["held_out"][:2]
        assert arguments.seeds == (100, 101, 102)


def test_cached_logits_of_a_frame_that_crossed_processes_load_without_pickle(tmp_path):
    """A worker's wells arrive unpickled: their object columns carry an equal copy of the object
    dtype, not numpy's singleton; they are still stored as strings (`np.load` refuses pickles)."""
    wells = pd.DataFrame({name: ["a", "b"] if name in ("id_code", "experiment", "cell_type",
                                                       "well_type") else [1, 2]
                          for name in evaluation.WELL_COLUMNS}).astype(
        {name: object for name in ("id_code", "experiment", "cell_type", "well_type")})  # fmt: skip
    crossed = pickle.loads(pickle.dumps(wells))
    assert crossed["id_code"].to_numpy().dtype is not np.dtype(object)
    ablation_cache.save_step_logits(tmp_path, crossed, np.eye(2), 1.0, report_split="test")
    loaded, logits, _ = ablation_cache.load_step_logits(tmp_path)
    assert list(loaded["id_code"]) == ["a", "b"] and logits.shape == (2, 2)
