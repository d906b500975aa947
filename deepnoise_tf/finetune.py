"""`python -m deepnoise_tf.finetune --config configs/<name>.py[:variant] --workdir OUT --init PRETRAINED`.

Per-cell-type fine-tuning (paper, "Fine-tuning"; `deepnoise_tf.finetuning`): for each cell type, start from the pretrained
run's inference backbone (the teacher when mean teacher is on, else the student) with a *fresh* head,
and train on that cell type's wells only with SGD under cosine annealing with warm restarts
(`config.finetune`: `cycles` cycles of `cycle_epochs * cycle_scale[cell type]` epochs, then
`final_epochs` at `final_learning_rate`). Everything else is `training.run`: each cell type's folder
`OUT/<cell type>/` holds what a training workdir holds (config.json, backup/, checkpoints/,
metrics.csv, export/).

Rerunning the same command skips the cell types that finished (`OUT/<cell type>/done.json`)
and resumes an interrupted one from its `backup/`. Options:
    --init DIR         a train.py workdir (config.json and checkpoints/best.weights.h5 or last.weights.h5)
    --cell_types A,B   default: config.data.cell_types, or all four
    --config.a.b=v     overrides, as for train.py

Example (CPU scale, about a minute per cell type on 2 cores after a `:cpu` pretraining):
    python -m deepnoise_tf.train --config configs/model3_mean_teacher.py:cpu --workdir runs/m3cpu
    python -m deepnoise_tf.finetune --config configs/model3_mean_teacher.py:cpu \\
        --workdir runs/m3cpu_finetune --init runs/m3cpu --cell_types U2OS,HUVEC
"""

from __future__ import annotations

import json
import sys

from deepnoise_tf import config_flags, quiet


def main(argv=None) -> dict[str, str]:
    argv = sys.argv[1:] if argv is None else argv
    quiet.configure(argv)
    parser = config_flags.argument_parser("python -m deepnoise_tf.finetune", __doc__.split("\n")[0])
    parser.add_argument("--init", required=True, help="the pretrained train.py workdir")
    parser.add_argument(
        "--cell_types",
        default="",
        help="comma-separated, e.g. U2OS,HUVEC (default: config.data.cell_types, or all four)",
    )
    known, config = config_flags.parse_arguments(parser, argv)
    from deepnoise_tf import finetuning  # TensorFlow: only after quiet.configure

    exports = finetuning.run(
        config, known.workdir, init_workdir=known.init, cell_types=known.cell_types or None
    )
    print(json.dumps(exports, indent=2), flush=True)
    return exports


if __name__ == "__main__":
    main()
