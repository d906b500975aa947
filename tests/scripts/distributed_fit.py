"""Trains a tiny MeanTeacher for a few steps under a chosen strategy; prints JSON on the last line.

Run in a subprocess by tests/test_distributed.py: logical CPU devices and TF_CONFIG must be set up
before TensorFlow initialises, so each configuration gets a fresh process.
    python tests/scripts/distributed_fit.py --devices 4 --strategy mirrored
    TF_CONFIG=... python tests/scripts/distributed_fit.py --strategy multi_worker
"""

import argparse
import json

import numpy as np


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument(
        "--strategy", default="default", choices=["default", "mirrored", "multi_worker"]
    )
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from deepnoise_tf import data, layers, optimizers
    from deepnoise_tf.mean_teacher import VIEW_NAMES, MeanTeacher

    if args.devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(args.devices)]
        )
    if args.strategy == "mirrored":
        strategy = tf.distribute.MirroredStrategy(
            [d.name for d in tf.config.list_logical_devices("CPU")]
        )
    elif args.strategy == "multi_worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync

    rng = np.random.default_rng(0)
    size, channels, classes = 6, 6, 5

    def stream(count, labelled, offset):
        images = rng.integers(0, 256, (count, size, size, channels)).astype(np.uint8)
        labels = (
            rng.integers(0, classes, count).astype(np.int32)
            if labelled
            else np.full(count, -1, np.int32)
        )
        pseudo = (
            np.full(count, -1, np.int32)
            if labelled
            else rng.integers(-1, classes, count).astype(np.int32)
        )
        return tf.data.Dataset.from_tensor_slices(
            {
                "image": images,
                "mean": np.full((count, channels), 100.0 + offset, np.float32),
                "std": np.full((count, channels), 50.0, np.float32),
                "label": labels,
                "pseudo_label": pseudo,
            }
        )

    n_labelled = data.labelled_batch_size(args.batch, 0.5, replicas)
    labelled = stream(64, True, 0).repeat().batch(n_labelled, drop_remainder=True)
    unlabelled = stream(64, False, 5).repeat().batch(args.batch - n_labelled, drop_remainder=True)
    dataset = data.interleave_per_replica(labelled, unlabelled, replicas)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    dataset = dataset.with_options(options)

    def network(seed):
        keras.utils.set_random_seed(seed)
        backbone = keras.Sequential(
            [
                keras.Input((size, size, channels)),
                keras.layers.Conv2D(
                    4, 3, use_bias=False
                ),  # a bias before BN has only round-off gradients
                keras.layers.BatchNormalization(synchronized=True),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(8),
            ]
        )
        head = layers.ArcFace(classes)
        head.build((None, 8))
        return {"backbone": backbone, "head": head}

    plain_views = {name: (lambda images, seed: images) for name in VIEW_NAMES}
    with strategy.scope():
        model = MeanTeacher(
            network(1),
            network(2),
            steps_per_epoch=2,
            normalization_jitter=0.0,
            views=plain_views,  # unaugmented: 1 and 4 replicas see the same inputs, so their trajectories agree
            rampup_epochs=1.0,
            labelled_share=0.5,  # the layout of data.interleave_per_replica: a static prefix
        )
        model.copy_student_to_teacher()
        # The default optimizer's kind (Adam with L2), its term made large enough to matter here.
        optimizer = optimizers.AdamL2(1e-2, l2=1e-2)
        optimizer.exclude_from_weight_decay(var_names=list(optimizers.L2_EXCLUDED_NAMES))
        model.compile(optimizer=optimizer)
    history = {"loss": [], "consistency_loss": []}
    if args.steps:
        history = model.fit(dataset, epochs=args.steps, steps_per_epoch=1, verbose=0).history
    teacher = np.concatenate([v.numpy().ravel() for v in model.teacher_variables])
    teacher_stats = np.concatenate(
        [v.numpy().ravel() for v in model.teacher_backbone.non_trainable_weights]
    )
    print(
        json.dumps(
            {
                "replicas": replicas,
                "loss": np.ravel(history["loss"]).tolist(),
                "consistency_loss": np.ravel(history["consistency_loss"]).tolist(),
                "teacher": teacher.tolist(),
                "teacher_stats": teacher_stats.tolist(),
            }
        )
    )


if __name__ == "__main__":
    main()
