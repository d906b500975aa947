"""`python -m deepnoise_tf.predict --model DIR --data_dir TFDS_DIR --output submission.csv`.

Runs any SavedModel of this package (one model or an ensemble, `deepnoise_tf.export`) over a split of
the TFDS `rxrx1` data set and writes the Kaggle submission (`id_code,sirna`, one row per treatment
well; the labels of control wells are known, so they are not predicted). The sites of a well and the
optional 8 dihedral test-time views are averaged in logit space (`deepnoise_tf.inference`), then the
plate prior is applied (`deepnoise_tf.evaluation`: the plate design, siRNA groups and their order
over the plates, learned from the train split's labels, each test experiment's assignment of groups
to plates inferred from the predictions; exact assignment by default). When the predicted wells carry labels (the release layout, the synthetic data), accuracy
overall and per cell type, before and after post-processing, is printed and written to
`<output stem>_accuracy.csv`.

`--images DIR` reads an RxRx1 source folder's PNGs instead of a TFDS build (the plate statistics are
computed on the fly, `deepnoise_tf.raw_images`). When the siRNA names are known (the export's class
names, or a release-layout `--images` folder), `<output stem>_predictions.csv` adds `sirna_name`.

Example:
    python -m deepnoise_tf.predict --model workdir/export --data_dir ~/tensorflow_datasets \\
        --split test --output submission.csv --tta
    python -m deepnoise_tf.predict --model workdir/export --images /data/rxrx1 --output submission.csv
"""

from __future__ import annotations

import pathlib
import sys

import pandas as pd

from deepnoise_tf import cli, evaluation, postprocess, quiet


def write_submission(predictions: pd.DataFrame, path) -> pathlib.Path:
    """The Kaggle format: `id_code,sirna` (the predicted siRNA), one row per treatment well."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    predictions[["id_code"]].assign(sirna=predictions["prediction"]).to_csv(path, index=False)
    return path


def accuracy_path(output) -> pathlib.Path:
    output = pathlib.Path(output)
    return output.with_name(f"{output.stem}_accuracy.csv")


def write_named_predictions(predictions: pd.DataFrame, submission) -> pathlib.Path:
    """`<submission stem>_predictions.csv`: id_code, sirna (id) and sirna_name of each prediction.

    The submission itself stays Kaggle's `id_code,sirna`; the names go beside it.
    """
    path = pathlib.Path(submission)
    path = path.with_name(f"{path.stem}_predictions.csv")
    table = predictions[["id_code", "prediction", "sirna_name"]].rename(
        columns={"prediction": "sirna"}
    )
    table.to_csv(path, index=False)
    return path


def parse_arguments(argv):
    """The flags, checked as far as they can be without TensorFlow (model folder, output path)."""
    parser = cli.new_parser("python -m deepnoise_tf.predict", __doc__.split("\n")[0])
    cli.add_split_arguments(parser)
    parser.add_argument("--output", required=True, help="the submission, a .csv file")
    parser.add_argument(
        "--postprocess",
        choices=postprocess.METHODS,
        default="assign",
        help="the plate prior: exact assignment, balancing, or none",
    )
    parser.add_argument(
        "--groups_split",
        default="train",
        help='labelled split the plate design of the plate prior is learned from ("": no plate groups)',
    )
    arguments = parser.parse_args(argv)
    cli.check_model(parser, arguments.model)
    cli.check_output(parser, arguments.output, (".csv",))
    return parser, arguments


def main(argv=None) -> pd.DataFrame:
    """Writes the submission (and the accuracy table when labels are known); returns the predictions."""
    argv = sys.argv[1:] if argv is None else argv
    quiet.configure(argv)
    parser, arguments = parse_arguments(argv)
    # TensorFlow loads here, after quiet.configure and the checks that need no data.
    from deepnoise_tf import inference

    splits = {"--split": arguments.split, "--groups_split": arguments.groups_split}
    cli.check_source(parser, arguments, splits)
    predictor = inference.load_export(arguments.model)
    outputs = cli.well_outputs(arguments, {"model": predictor})
    design = cli.plate_design(arguments, arguments.groups_split) if arguments.groups_split else None
    if design is not None:
        print(f"[deepnoise] plate design: {design.describe()}", flush=True)
    predictions = evaluation.well_predictions(
        outputs.wells, outputs.logits["model"], method=arguments.postprocess, plate_design=design
    )
    predictions = cli.with_sirna_names(
        predictions, cli.sirna_names(arguments, predictor), "prediction"
    )
    path = write_submission(predictions, arguments.output)
    print(f"[deepnoise] wrote {len(predictions)} treatment wells to {path}", flush=True)
    if "sirna_name" in predictions:
        named = write_named_predictions(predictions, path)
        print(f"[deepnoise] predictions with siRNA names written to {named}", flush=True)
    report = evaluation.accuracy_report(predictions, arguments.postprocess)
    if report is not None:
        report.to_csv(accuracy_path(path), index=False)
        with pd.option_context("display.width", 120):
            print(report.to_string(index=False, float_format=lambda value: f"{value:.4f}"))
        print(f"[deepnoise] accuracy written to {accuracy_path(path)}", flush=True)
    return predictions


if __name__ == "__main__":
    main()
