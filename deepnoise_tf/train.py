"""`python -m deepnoise_tf.train --config configs/<name>.py[:variant] --workdir DIR [--config.a.b=v]`.

Trains one DeepNoise model (`deepnoise_tf.training.run`). The workdir receives `config.json`,
`split_index.json`, checkpoints (`backup/` for resuming after a crash or kill,
`checkpoints/best.weights.h5` by validation accuracy), TensorBoard logs, `metrics.csv` (one row per
epoch), the SavedModel `export/` and, last, `done.json`. Rerunning the same command resumes from the
last finished epoch, and does nothing once `done.json` exists.
"""

from __future__ import annotations

import os
import sys

from deepnoise_tf import config_flags, quiet, workdir


def parse_command_line(argv):
    """`--config FILE[:variant]`, `--workdir DIR` and any number of `--config.path=value`."""
    parser = config_flags.argument_parser("python -m deepnoise_tf.train", __doc__.split("\n")[0])
    known, config = config_flags.parse_arguments(parser, argv)
    return config, os.path.abspath(known.workdir)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    quiet.configure(argv)
    config, folder = parse_command_line(argv)
    if workdir.read_done(folder) is not None:
        print(
            f"[deepnoise] {folder} holds a finished run ({workdir.DONE_FILE}); nothing to do. "
            "Use another --workdir, or delete that file to train again.",
            flush=True,
        )
        return
    from deepnoise_tf import resume, training  # TensorFlow: only after quiet.configure

    try:
        training.run(config, folder)
    except resume.RunFolderError as error:  # a refusal to touch the folder: the message is the news
        sys.exit(f"[deepnoise] {error}")


if __name__ == "__main__":
    main()
