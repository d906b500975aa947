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

Model 4 here is the ensemble of the two mean teachers; the paper's Model 4 also retrains the students
with pseudo labels from that ensemble (pSoftmax), which this ablation leaves out.
"""

from __future__ import annotations

import sys

import pandas as pd

from deepnoise_tf import cli, config_flags, quiet


def parse_command_line(argv):
    """The flags below plus any number of `--config.path=value`, applied to every training step."""
    from deepnoise_tf import ablation_steps  # TensorFlow: only after quiet.configure

    parser = cli.new_parser(
        "python -m deepnoise_tf.ablation", __doc__.split("\n")[0], epilog=config_flags.OVERRIDE_HELP
    )
    parser.add_argument("--workdir", required=True, help="where steps, tables and charts go")
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
        default="cpu",
        help="cpu: every config's :cpu variant on the synthetic ablation preset; cpu_morphology: "
        "the shape phenotype; paper: the paper configs as they are",
    )
    parser.add_argument(
        "--steps",
        nargs="+",
        choices=ablation_steps.STEP_NAMES,
        default=list(ablation_steps.STEP_NAMES),
        help="the steps to run (and the trainings they need); all are scored",
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
    return parser.parse_args(rest), overrides


def main(argv=None) -> pd.DataFrame:
    argv = sys.argv[1:] if argv is None else argv
    quiet.configure(argv)
    arguments, overrides = parse_command_line(argv)
    from deepnoise_tf import ablation_steps

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
