"""Config -> objects: the distribution strategy, the networks, the optimizer and the training wrapper.

The one place that reads `config.model`/`config.train` to build things, so that models, layers and
the training wrapper take plain arguments.
"""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from deepnoise_tf import config as config_lib
from deepnoise_tf import constants, layers, models, optimizers, precision, schedules
from deepnoise_tf.mean_teacher import MeanTeacher


def configure_devices(train_config) -> None:
    """Splits the CPU into logical devices when asked (must run before TensorFlow uses a device)."""
    if train_config.cpu_devices and train_config.cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        current = tf.config.get_logical_device_configuration(cpu)
        if current is not None and len(current) == train_config.cpu_devices:
            return  # already split (a second training in this process, e.g. the next cell type)
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
    backbone = models.build(
        model_config.backbone,
        (image_size, image_size, constants.NUM_CHANNELS),
        stem=model_config.stem,
        width=model_config.width,
        sync_batch_norm=model_config.sync_batch_norm,
        batch_norm_momentum=model_config.batch_norm_momentum,
        weights=model_config.imagenet_weights or None,
        name=f"{name}_backbone",
    )
    if model_config.head == "arcface":
        head = layers.ArcFace(
            model_config.num_classes,
            scale=model_config.arcface_scale,
            margin=model_config.arcface_margin,
            name=f"{name}_head",
        )
    else:
        head = layers.SoftmaxHead(
            model_config.num_classes, dropout=model_config.dropout, name=f"{name}_head"
        )
    head.build(backbone.output_shape)
    return {"backbone": backbone, "head": head}


def finetune_epoch_scale(config) -> float:
    """The cycle-length factor r of the one cell type being fine-tuned (paper Fig. 5B; r from the public code)."""
    cell_types = tuple(config.data.cell_types)
    if len(cell_types) != 1:
        raise ValueError(
            "config.train.optimizer='sgd_cosine' is the per-cell-type fine-tuning stage: "
            f"config.data.cell_types must name exactly one cell type, got {list(cell_types)}"
        )
    scales = dict(config.finetune.cycle_scale)
    if cell_types[0] not in scales:
        raise ValueError(
            f"config.finetune.cycle_scale has no entry for {cell_types[0]!r}: {scales}"
        )
    return float(scales[cell_types[0]])


def learning_rate_schedule(config, steps_per_epoch: int):
    """Pretraining: piecewise-constant (`config.train`); fine-tuning: cosine restarts (`config.finetune`)."""
    optimizer = config.train.optimizer
    if optimizer in ("adam_l2", "adamw"):
        return schedules.PiecewiseEpochLR(
            steps_per_epoch=steps_per_epoch,
            boundaries=schedules.run_schedule(config).lr_boundaries,
            values=tuple(config.train.learning_rates),
        )
    if optimizer == "sgd_cosine":
        finetune = config.finetune
        return schedules.CosineRestartsLR(
            steps_per_epoch,
            finetune_epoch_scale(config),
            initial_learning_rate=finetune.learning_rate,
            minimum_learning_rate=finetune.min_learning_rate,
            cycles=finetune.cycles,
            cycle_epochs=finetune.cycle_epochs,
            final_learning_rate=finetune.final_learning_rate,
            final_epochs=finetune.final_epochs,
        )
    raise ValueError(
        f"config.train.optimizer={optimizer!r} is not one of {list(config_lib.OPTIMIZERS)}"
    )


def build_optimizer(config, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """`config.train.optimizer`: "adam_l2" or "adamw" (pretraining), "sgd_cosine" (fine-tuning).

    "adam_l2" (default) is the paper's Adam with L2 2e-4 (`optimizers.AdamL2`: `wd * w` added to
    the gradient before Adam's scaling, as PyTorch's `Adam(weight_decay=...)` in the authors' code);
    "adamw" is Keras's decoupled decay (lr * wd * w per step). The fine-tuning SGD has no momentum,
    where decoupled decay and the L2 gradient term are the same update. Every stage skips
    batch-norm and bias parameters (`optimizers.L2_EXCLUDED_NAMES`).
    """
    schedule = learning_rate_schedule(config, steps_per_epoch)
    if config.train.optimizer == "adam_l2":
        optimizer = optimizers.AdamL2(learning_rate=schedule, l2=config.train.weight_decay)
    elif config.train.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(
            learning_rate=schedule, weight_decay=config.train.weight_decay
        )
    else:
        optimizer = keras.optimizers.SGD(
            learning_rate=schedule,
            momentum=config.finetune.momentum,
            nesterov=config.finetune.nesterov,
            weight_decay=config.finetune.weight_decay,
        )
    optimizer.exclude_from_weight_decay(var_names=list(optimizers.L2_EXCLUDED_NAMES))
    return optimizer


def build_model(config, steps_per_epoch: int) -> MeanTeacher:
    """The training wrapper for `config` (call inside the strategy's scope); teacher starts = student.

    "auto" precision and XLA resolve here from the visible GPUs (`precision.resolve`); one line says
    what ran and why.
    """
    resolution = precision.resolve_for_devices(config.train)
    print(f"[deepnoise] {resolution.reason}", flush=True)
    if resolution.mixed_precision:
        keras.mixed_precision.set_dtype_policy(resolution.mixed_precision)
    keras.utils.set_random_seed(config.train.seed)
    student = build_network(config.model, config.data.image_size, "student")
    teacher = (
        build_network(config.model, config.data.image_size, "teacher")
        if config.mean_teacher.enabled
        else None
    )
    mean_teacher = config.mean_teacher
    schedule = schedules.run_schedule(config)  # the config's fractions as absolute epochs
    model = MeanTeacher(
        student,
        teacher,
        steps_per_epoch=steps_per_epoch,
        consistency_weight=mean_teacher.consistency_weight,
        rampup_epochs=schedule.rampup_epochs,
        consistency_start_epoch=schedule.consistency_start_epoch,
        ema_decays=tuple(mean_teacher.ema_decays),
        ema_epoch_boundaries=schedule.ema_boundaries,
        pseudo_label_weight=mean_teacher.pseudo_label_weight,
        normalization_jitter=config.data.normalization_jitter,
        # .get: config.json files written before the field existed get the default
        teacher_statistics=mean_teacher.get("teacher_statistics", "ema"),
        # the batch layout of data.training_dataset: labelled rows first in each replica's slice
        labelled_share=mean_teacher.labelled_share if mean_teacher.enabled else 1.0,
        seed=config.train.seed,
        margin_warmup_epochs=(
            schedule.arcface_margin_warmup_epochs if config.model.head == "arcface" else 0.0
        ),
    )
    if teacher is not None:
        model.copy_student_to_teacher()
    model.compile(
        optimizer=build_optimizer(config, steps_per_epoch),
        jit_compile=resolution.jit_compile,
    )
    return model


def load_inference_network(run_folder):
    """`(config, (backbone, head))` of a training folder, weights from its best (else last) checkpoint.

    The inference network is the teacher when the run has one (`MeanTeacher.inference_network`).
    Building the run may switch the global mixed-precision policy on; it is restored afterwards.
    """
    from deepnoise_tf import workdir

    config = workdir.read_config(run_folder)
    policy = keras.config.dtype_policy()
    try:
        model = build_model(config, steps_per_epoch=1)
        model.load_weights(str(workdir.checkpoint(run_folder)))
    finally:
        keras.config.set_dtype_policy(policy)
    return config, model.inference_network()
