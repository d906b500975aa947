"""Config -> objects: the distribution strategy, the networks, the optimizer and the training wrapper.

The one place that reads `config.model`/`config.train` to build things, so that models, layers and
the training wrapper take plain arguments.
"""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from deepnoise_tf import constants, layers, models, schedules
from deepnoise_tf.mean_teacher import MeanTeacher


def configure_devices(train_config) -> None:
    """Splits the CPU into logical devices when asked (must run before TensorFlow uses a device)."""
    if train_config.cpu_devices and train_config.cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(train_config.cpu_devices)]
        )


def strategy_for(train_config) -> tf.distribute.Strategy:
    """`auto`: MirroredStrategy over the GPUs when there are several... or one; else the default.

    `multi_worker` (or `auto` with a TF_CONFIG naming several workers) gives
    MultiWorkerMirroredStrategy; `mirrored` with `cpu_devices` > 1 mirrors over logical CPUs.
    """
    name = train_config.strategy
    workers = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {}).get("worker", [])
    if name == "multi_worker" or (name == "auto" and len(workers) > 1):
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and gpus):
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus)
    if name == "auto" and train_config.cpu_devices > 1:
        cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus)
    return tf.distribute.get_strategy()


def build_network(model_config, image_size: int, name: str) -> dict:
    """Backbone (images -> embedding) and head (embedding[, labels] -> logits)."""
    backbone = models.xception(
        (image_size, image_size, constants.NUM_CHANNELS),
        wide=model_config.backbone == "xception_wide",
        stem=model_config.stem,
        width=model_config.width,
        sync_batch_norm=model_config.sync_batch_norm,
        weights=model_config.imagenet_weights or None,
        name=f"{name}_backbone",
    )
    for layer in backbone.layers:  # short runs need faster-moving statistics than Keras's 0.99
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = model_config.batch_norm_momentum
    if model_config.head == "arcface":
        head = layers.ArcFace(
            model_config.num_classes,
            scale=model_config.arcface_scale,
            margin=model_config.arcface_margin,
            name=f"{name}_head",
        )
    else:
        head = layers.SoftmaxHead(model_config.num_classes, dropout=model_config.dropout, name=f"{name}_head")
    head.build(backbone.output_shape)
    return {"backbone": backbone, "head": head}


def learning_rate_schedule(train_config, steps_per_epoch: int):
    return schedules.PiecewiseEpochLR(
        steps_per_epoch=steps_per_epoch,
        boundaries=tuple(train_config.lr_epoch_boundaries),
        values=tuple(train_config.learning_rates),
    )


def build_optimizer(train_config, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """AdamW with decoupled weight decay (not on batch-norm or bias parameters)."""
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate_schedule(train_config, steps_per_epoch),
        weight_decay=train_config.weight_decay,
    )
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


def build_model(config, steps_per_epoch: int) -> MeanTeacher:
    """The training wrapper for `config` (call inside the strategy's scope); teacher starts = student."""
    if config.train.mixed_precision:
        keras.mixed_precision.set_dtype_policy(config.train.mixed_precision)
    keras.utils.set_random_seed(config.train.seed)
    student = build_network(config.model, config.data.image_size, "student")
    teacher = build_network(config.model, config.data.image_size, "teacher") if config.mean_teacher.enabled else None
    mean_teacher = config.mean_teacher
    model = MeanTeacher(
        student,
        teacher,
        steps_per_epoch=steps_per_epoch,
        consistency_weight=mean_teacher.consistency_weight,
        rampup_epochs=mean_teacher.rampup_epochs,
        ema_decays=tuple(mean_teacher.ema_decays),
        ema_epoch_boundaries=tuple(mean_teacher.ema_epoch_boundaries),
        pseudo_label_weight=mean_teacher.pseudo_label_weight,
        normalization_jitter=config.data.normalization_jitter,
        seed=config.train.seed,
    )
    if teacher is not None:
        model.copy_student_to_teacher()
    model.compile(
        optimizer=build_optimizer(config.train, steps_per_epoch),
        jit_compile=config.train.jit_compile,
    )
    return model
