"""`python -m deepnoise_tf.pipeline --config configs/deepnoise.py[:cpu] --workdir DIR [--config.a.b=v]`.

The whole of DeepNoise (paper, Algorithm 1) in one command, as resumable stages under DIR:

1. `round_0/<backbone>/`: train ST-Xception and ST-Xception-Wide (`training.run`, mean teacher).
2. `round_0/evaluation/`: each teacher's site-averaged logits of the validation wells (held-out
   labelled experiments) and of the unlabelled test wells; the ensemble = their mean in logit space
   (paper, "Model ensemble"); the plate prior (`postprocess`, each experiment's plate groups inferred from the
   predictions, never from labels).
3. `round_<r>/pseudo_labels/`, `round_<r>/<backbone>/`, `round_<r>/evaluation/` for r = 1..R: pseudo
   labels for the test treatment wells from the post-processed ensemble (paper, "Pseudo labels"; the default) or
   each model's own teacher (`config.mean_teacher.pseudo_label_source`), then both students
   retrained from round r-1 with the pseudo-label loss. The pseudo labels are refreshed only when
   the validation score of the predictions they come from improves; the logits behind them are
   blended into a running bank (weight 1 first, then `pipeline.pseudo_label_bank_weight`).
4. `finetune_round_<b>_<key>/<backbone>/<cell type>/` (when `pipeline.finetune`; `<key>` names
   the fine-tuning settings): per-cell-type fine-tuning (`finetuning.run`) of the selected round b's
   models on the cell type's data and the pseudo labels made from every round (`pseudo_labels/`),
   and their evaluation.
5. `export/`: one ensemble SavedModel (`export.export_run_folders`): `serving_default` serves round
   b's ensemble (the round with the best post-processed ensemble validation accuracy), and
   `serving_by_cell_type` predicts each fine-tuned cell type with its fine-tuned pair (the paper's
   prediction; `predict` uses it); `results.csv` (validation accuracy of every
   teacher, the ensemble and the post-processed ensemble, per round) and `results_by_cell_type.csv`; `summary.json` (the selected round and the paths).

Every stage writes its outputs, then a marker (`done.json`) last; rerunning the command
skips finished stages, and an interrupted training resumes from its `backup/`. Test-split labels are
never decoded: test wells are read with `with_labels=False` (tests/test_pipeline.py proves the pseudo
labels do not change when the test labels are removed from the data).

Example (2 CPU cores, the synthetic quickstart data generated into DIR/data):
    python -m deepnoise_tf.pipeline --config configs/deepnoise.py:cpu --workdir runs/deepnoise_cpu
"""

from __future__ import annotations

import sys

from deepnoise_tf import config_flags, quiet


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    quiet.configure(argv)
    parser = config_flags.argument_parser("python -m deepnoise_tf.pipeline", __doc__.split("\n")[0])
    known, config = config_flags.parse_arguments(parser, argv)
    from deepnoise_tf import algorithm  # TensorFlow: only after quiet.configure

    return algorithm.run(config, known.workdir)


if __name__ == "__main__":
    main()
