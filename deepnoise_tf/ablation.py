"""`python -m deepnoise_tf.ablation --workdir DIR [--protocol P] [--jobs N] [--scale SCALE] [--steps ...]`.

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
finished step is never redone); its validation logits are cached in `DIR/<step>/evaluation/`. The table is
`DIR/ablation.csv` (per cell type: `DIR/ablation_by_cell_type.csv`), the charts
`DIR/figure_3a.png` and `DIR/figure_3b.png`.

`--scale cpu` runs every config's `:cpu` variant with `scales.ablation_scale_settings("cpu")` (without `--data_dir`: the
synthetic `ablation` preset, generated into `DIR/data`): 38 CPU-minutes, about 50 minutes on 2
busy cores (docs/ablation.md). `--scale cpu_morphology` does the same on the `ablation_morphology`
preset (a phenotype of cell shape) for 64 epochs at a third of the CPU learning rate, with the
ArcFace margin ramped in over 16 and the mean teachers trained on labelled data alone for the
first 32 (the paper's order: ArcFace first, then consistency): six such trainings take about 50
minutes on 2 cores as parallel processes (one `--steps` each, same DIR).
`--scale paper` runs the paper configs as they are (4 GPUs, days). Any `--config.a.b=value` applies to
every step (e.g. `--config.train.epochs=1` for a smoke run).

`--protocol held_out` (or `development`) runs the steps on synthetic designs of the family instead of
one data set: every design (`--designs`, default the first two held-out ones) with every training
seed (`--seeds`, default 0,1,2 for development and 100,101,102 for held_out), checkpoints chosen on the validation experiments and every step
reported on the test split, with bootstrap intervals and a verdict per Fig. 3 ordering
(`deepnoise_tf.ablation_protocol`; `DIR/protocol.md`; docs/ablation.md, "Protocol"). The feature
baseline (`--steps feature_baseline`) is a step of every protocol run. Its recipe is `--scale
cpu_family` (`scales`: the `:cpu` configs at 16 epochs, frozen), and its (design, seed) trainings
run `--jobs` at a time, one process each (`ablation_jobs`; default one per usable core).

Model 4 here is the ensemble of the two mean teachers; the paper's Model 4 also retrains the students
with pseudo labels from that ensemble (pSoftmax), which this ablation leaves out.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from deepnoise_tf import cli, config_flags, quiet
from deepnoise_tf import config as config_lib


def protocol_name(text: str) -> str:
    """argparse type of `--protocol`: a known name, else an error naming the closest one."""
    from deepnoise_tf.ablation_protocol import PROTOCOLS  # TensorFlow: only after quiet.configure

    if text not in PROTOCOLS:
        raise argparse.ArgumentTypeError(f"unknown protocol {text!r}{config_lib.did_you_mean(text, PROTOCOLS)}; "
                                         f"choose from {', '.join(PROTOCOLS)}")  # fmt: skip
    return text


def parse_command_line(argv):
    """The flags below plus any number of `--config.path=value`, applied to every training step."""
    from deepnoise_tf import ablation_steps  # TensorFlow: only after quiet.configure

    parser = cli.new_parser(
        "python -m deepnoise_tf.ablation", __doc__.split("\n")[0], epilog=config_flags.OVERRIDE_HELP
    )
    parser.add_argument("--workdir", required=True, help="where steps, tables and charts go")
    parser.add_argument(
        "--protocol",
        type=protocol_name,
        default="single",
        help="single: one run on one data set, scored on the validation experiments; development / "
        "held_out: the synthetic designs of that part of the family x --seeds, reported on the "
        "test split with intervals",
    )
    parser.add_argument(
        "--seeds",
        default="",
        help="training seeds of a protocol run, e.g. 0,1,2 (default: 0,1,2 for development, "
        "100,101,102 for held_out; a held-out run refuses the development seeds)",
    )
    parser.add_argument(
        "--designs",
        default="",
        help="designs of a protocol run, comma-separated (default: every development design, or "
        "the first two held-out ones)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="trainings of a protocol run at a time, one process each with an equal share of the "
        "cores (default 0: one per usable core at the cpu scales, 1 at paper scale)",
    )
    parser.add_argument(
        "--data_dir",
        default="",
        help="TFDS data dir with rxrx1 (cpu scales: optional, the synthetic preset is generated "
        "into WORKDIR/data)",
    )
    parser.add_argument(
        "--builder", default="", help="TFDS name/config, e.g. rxrx1/128 (default: the config's)"
    )
    parser.add_argument(
        "--scale",
        choices=ablation_steps.SCALES,
        default=None,
        help="cpu: every config's :cpu variant on the synthetic ablation preset; cpu_family: the "
        "same training recipe, frozen for the protocols (validation every second epoch, no "
        "export); cpu_morphology: the shape phenotype; paper: the paper configs as they are "
        "(default: cpu for --protocol single, cpu_family otherwise)",
    )
    parser.add_argument(
        "--steps",
        nargs="+",
        choices=ablation_steps.STEP_NAMES,
        default=None,
        help="the steps to run (and the trainings they need); all are scored (default: every step "
        "but feature_baseline for --protocol single, every step otherwise)",
    )
    parser.add_argument(
        "--configs_dir",
        default="",
        help="folder of the config files (default: the bundled configs)",
    )
    parser.add_argument(
        "--postprocess",
        choices=("assign", "balance"),
        default="assign",
        help="the plate prior of the post-processed step",
    )
    rest, overrides = config_flags.split_overrides(parser, argv)
    arguments = parser.parse_args(rest)
    try:
        check_protocol_arguments(arguments)
    except ValueError as error:
        parser.error(str(error))
    return arguments, overrides


def check_protocol_arguments(arguments) -> None:
    """Fills the protocol's defaults in `arguments`; a flag that does not fit the protocol fails."""
    from deepnoise_tf import ablation_jobs, ablation_protocol, ablation_steps, scales

    arguments.scale = arguments.scale or scales.DEFAULT_SCALES[arguments.protocol]
    if arguments.jobs < 0:
        raise ValueError(f"--jobs must be 0 (automatic) or more, got {arguments.jobs}")
    if arguments.protocol == "single":
        given = [flag for flag in ("seeds", "designs", "jobs") if getattr(arguments, flag)]
        if given:
            raise ValueError(f"--{given[0]} needs --protocol development or held_out")
        arguments.steps = arguments.steps or list(ablation_steps.DEFAULT_STEPS)
        return
    if arguments.data_dir or arguments.builder:
        raise ValueError("--protocol generates its designs' data: drop --data_dir and --builder")
    arguments.steps = arguments.steps or list(ablation_steps.STEP_NAMES)
    seeds = ablation_protocol.parse_seeds(arguments.seeds) if arguments.seeds else ()
    arguments.seeds = ablation_protocol.resolve_seeds(arguments.protocol, seeds)
    designs = tuple(name.strip() for name in arguments.designs.split(",") if name.strip())
    arguments.designs = ablation_protocol.resolve_designs(arguments.protocol, designs)
    if not arguments.jobs:  # trainings at CPU scale hardly use a second core (`ablation_jobs`)
        arguments.jobs = 1 if arguments.scale == "paper" else ablation_jobs.usable_cores()


def main(argv=None) -> pd.DataFrame:
    argv = sys.argv[1:] if argv is None else argv
    verbose = quiet.configure(argv)
    arguments, overrides = parse_command_line(argv)
    from deepnoise_tf import ablation_protocol, ablation_steps

    if arguments.protocol != "single":
        return ablation_protocol.run_protocol(
            arguments.workdir, arguments.protocol, seeds=arguments.seeds,
            designs=arguments.designs, steps=tuple(arguments.steps), scale=arguments.scale,
            overrides=overrides, configs_dir=arguments.configs_dir or None,
            method=arguments.postprocess, jobs=arguments.jobs, verbose=verbose,
        )["summary"]  # fmt: skip
    return ablation_steps.run_ablation(
        arguments.workdir,
        data_dir=arguments.data_dir,
        builder=arguments.builder,
        scale=arguments.scale,
        steps=tuple(arguments.steps),
        overrides=overrides,
        configs_dir=arguments.configs_dir or None,
        method=arguments.postprocess,
    )


if __name__ == "__main__":
    main()
