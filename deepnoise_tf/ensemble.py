"""`python -m deepnoise_tf.ensemble --workdirs W1 W2 [...] --output DIR`: one SavedModel for an ensemble.

Rebuilds each training folder's inference network (the teacher when there is one) from its
`config.json` and `checkpoints/best.weights.h5` (falling back to `last.weights.h5`), and exports
them together (`export.export_run_folders`): logits averaged in logit space (paper, "Model
ensemble"), the same `serving_default` and `metadata` signatures as a single model, so
`deepnoise_tf.predict` runs either.

`--serving_version N` writes `OUTPUT/N/` (TF Serving's layout); `--sirna_names DIR` stores the siRNA
names of a release-layout `metadata.csv` as the export's class names.

Example:
    python -m deepnoise_tf.ensemble --workdirs runs/xception runs/xception_wide --output runs/ensemble
"""

from __future__ import annotations

import sys

from deepnoise_tf import cli, quiet


def main(argv=None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    quiet.configure(argv)
    parser = cli.new_parser("python -m deepnoise_tf.ensemble", __doc__.split("\n")[0])
    parser.add_argument("--workdirs", nargs="+", required=True, help="training workdirs")
    parser.add_argument("--output", required=True, help="SavedModel directory to write")
    parser.add_argument(
        "--serving_version",
        type=int,
        default=None,
        help="write OUTPUT/<version>/saved_model.pb, the TF Serving layout (--model_base_path=OUTPUT)",
    )
    parser.add_argument(
        "--sirna_names",
        default=None,
        help="RxRx1 release-layout folder whose metadata.csv names the siRNAs (the export's class names)",
    )
    arguments = parser.parse_args(argv)
    from deepnoise_tf import export  # TensorFlow: only after quiet.configure

    class_names = None
    if arguments.sirna_names:
        from deepnoise_tf import raw_images

        class_names = export.class_names_from(raw_images.sirna_names(arguments.sirna_names))
    path = export.export_run_folders(
        arguments.workdirs,
        arguments.output,
        class_names=class_names,
        serving_version=arguments.serving_version,
    )
    print(
        f"[deepnoise] exported an ensemble of {len(arguments.workdirs)} models to {path}",
        flush=True,
    )
    return path


if __name__ == "__main__":
    main()
