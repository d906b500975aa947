"""The whole DeepNoise pipeline (paper, Algorithm 1): Model 3 for both backbones, pseudo-label rounds,
per-cell-type fine-tuning, the ensemble and the plate prior. Run with `deepnoise_tf.pipeline`:

    python -m deepnoise_tf.pipeline --config configs/deepnoise.py --workdir runs/deepnoise \
        --config.data.data_dir=/path/to/tensorflow_datasets

Variants (combine with a comma, e.g. `:cpu,own_teacher`):
    :cpu          the synthetic quickstart data (generated into <workdir>/data), 64 px, width 1/8,
                  short schedules: the whole pipeline in 40 min on 2 idle CPU cores; validation
                  accuracy (round 2, selected) xception 0.82, xception_wide 0.88, ensemble 0.94,
                  ensemble + plate prior 1.00 (2026-12-06, docs/pipeline.md).
    :own_teacher  pseudo labels from each model's own teacher (the public code) instead of the
                  post-processed ensemble of both teachers (the paper).

The `pipeline` block holds what only the pipeline reads; everything else is Model 3
(configs/model3_mean_teacher.py), shared by both backbones.
"""

import ml_collections

from deepnoise_tf.config import cpu_scale, default_config, parse_variant


def get_config(variant: str = ""):
    arg = parse_variant(variant, ("cpu", "own_teacher"))
    config = default_config()

    config.pipeline = ml_collections.ConfigDict()
    # ST-Xception and ST-Xception-Wide; their teachers' predictions are averaged (paper Fig. 2C).
    config.pipeline.backbones = ("xception", "xception_wide")
    # The paper's 160 epochs in all ("Training details"), pseudo labels inside them (Algorithm 1's
    # loop): round 0 trains the first 80 (40 labelled-only, then the consistency loss), then
    # 8 rounds of 10 epochs retrain with pseudo labels, each continuing the previous round's
    # checkpoint and the paper's learning-rate schedule (1e-4 from epoch 100, 1e-5 from 140). The
    # paper refreshes the pseudo labels whenever the teachers' validation score improves; here a
    # refresh can happen between rounds, every 10 epochs. Each refresh costs an evaluation of both
    # models on the validation and test wells (~54k sites, x8 with TTA: about one training epoch)
    # and a training folder per model: per-epoch rounds would nearly double the run
    # (docs/pipeline.md).
    # The schedules span all rounds, not round 0's 80 epochs; with both round lengths set below,
    # `train.epochs` is not read by the pipeline (its rounds are `pipeline.*_epochs`).
    config.train.schedule_epochs = 160
    config.pipeline.train_epochs = 80  # round 0; 0 = config.train.epochs
    config.pipeline.pseudo_label_rounds = 8
    # Later rounds continue from the previous round's checkpoint (optimizer state included).
    config.pipeline.retrain_epochs = 10  # 0 = config.train.epochs
    # Constant learning rate of those rounds; 0 = continue config.train's schedule.
    config.pipeline.retrain_learning_rate = 0.0
    # Pseudo labels (the paper's L_pSoftmax; bank of the public code): the first refresh sets the
    # logit bank, later refreshes blend in with this weight.
    config.pipeline.pseudo_label_bank_weight = 0.9
    config.pipeline.postprocess = "assign"  # assign (exact, default) | balance (greedy) | none
    # Test-time augmentation (paper, Discussion; SPEC §8): the 8 dihedral views averaged in logit
    # space, for validation, test and pseudo-label logits alike (8x the evaluation cost).
    config.pipeline.tta = True
    config.pipeline.eval_batch_size = 64
    config.pipeline.finetune = (
        True  # per-cell-type fine-tuning of the selected round (paper Fig. 5B)
    )
    config.pipeline.finetune_cell_types = ()  # () = config.data.cell_types, else all four

    if arg.own_teacher:
        config.mean_teacher.pseudo_label_source = "own_teacher"
    if arg.cpu:
        cpu_scale(config)
        # Round 0 the whole CPU schedule (32 epochs), then 2 short rounds at a constant rate and no
        # TTA: the whole pipeline fits in about an hour on 2 CPU cores, and TTA would make each
        # round's evaluation (both models, validation + test) 8x longer.
        config.train.schedule_epochs = 0  # = train.epochs
        config.pipeline.train_epochs = 0
        config.pipeline.pseudo_label_rounds = 2
        config.pipeline.retrain_epochs = 6
        config.pipeline.retrain_learning_rate = 1e-3
        config.pipeline.tta = False
    return config
