"""`python -m deepnoise_tf.ensemble --workdirs W1 W2 [...] --output DIR`: one SavedModel for an ensemble.

Rebuilds each training folder's inference network (the teacher when there is one) from its
`config.json` and `checkpoints/best.weights.h5` (falling back to `last.weights.h5`), and exports
them together (`export.export_run_folders`): logits averaged in logit space (paper, "Model
ensemble"), the same `serving_default` and `metadata` signatures as a single model, so
`deepnoise_tf.predict` runs either.

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
    arguments = parser.parse_args(argv)
    from deepnoise_tf import export  # TensorFlow: only after quiet.configure

    path = export.export_run_folders(arguments.workdirs, arguments.output)
    print(f"[deepnoise] exported an ensemble of {len(arguments.workdirs)} models to {path}", flush=True)
    return path


if __name__ == "__main__":
    main()
