"""The training wrapper: a `keras.Model` holding student and teacher, with the DeepNoise `train_step`.

It owns the step and nothing else (networks come from `models`/`layers`, formulas from `losses`,
`augment` and `schedules`). Which view feeds which loss (SPEC 3, 5):

- student, *normal* view, with labels -> ArcFace margin logits -> classification loss (labelled rows);
- student, *easy* view, no margin -> consistency MSE against the teacher, and the pseudo-label loss
  (unlabelled rows that carry a pseudo label);
- teacher, *hard* view, no margin, no gradient -> consistency target.

The teacher's trainable weights are the EMA of the student's (Tarvainen & Valpola 2017), updated once
per step after the optimizer; its batch-norm moving statistics come from its own forward passes on the
hard view, as in the authors' code (the EMA does not cover them). Every loss term is reduced by the
global count of the rows it covers, so the sum of the replicas' gradients is the gradient of the
global-batch loss whatever the number of replicas.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from deepnoise_tf import augment, constants, losses, schedules


def _replica_context():
    return tf.distribute.get_replica_context()


def _global_sum(value):
    """Sum over all replicas (identity without distribution)."""
    context = _replica_context()
    if context is None:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def _num_replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


def _logs(values: dict) -> dict:
    """Step outputs; shaped [1] under MultiWorkerMirroredStrategy, whose Keras 3.15 reduction of
    logs takes a mean along axis 0 and fails on scalars."""
    if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        return {name: tf.reshape(value, [1]) for name, value in values.items()}
    return values


def ema_update(teacher_variables, student_variables, decay):
    """teacher <- decay * teacher + (1 - decay) * student, once per variable even under a strategy.

    Called in replica context, it hands over to cross-replica context (as Keras's optimizer does)
    so that each mirrored teacher variable is written through the strategy, not once per replica.
    """
    pairs = [(t.value, s.value) for t, s in zip(teacher_variables, student_variables, strict=True)]

    def update_all(strategy, pairs, decay):
        for teacher, student in pairs:
            strategy.extended.update(
                teacher,
                lambda t, s, d: t.assign(d * t + (1.0 - d) * tf.cast(s, t.dtype)),
                args=(student, decay),  # per-replica values are unwrapped per device
                group=False,
            )

    tf.__internal__.distribute.interim.maybe_merge_call(update_all, tf.distribute.get_strategy(), pairs, decay)


class MeanTeacher(keras.Model):
    """Student/teacher pair trained with margin, consistency and pseudo-label losses.

    Args:
        student: `{"backbone": keras.Model, "head": layer}` trained by the optimizer.
        teacher: the same structure, or None for the supervised Models 1 and 2 (then only the
            classification loss is used and the student is what gets evaluated and exported).
        steps_per_epoch: converts the step counter to the (fractional) epoch of the schedules.
        consistency_weight, rampup_epochs: weight 100 * sigmoid ramp-up (SPEC 5).
        consistency_start_epoch: labelled-only (margin loss) training before this epoch; the
            consistency ramp-up starts there (SPEC 6; 0: from the first step).
        ema_decays, ema_epoch_boundaries: the EMA decay schedule (SPEC 6).
        pseudo_label_weight: pSoftmax weight when a batch carries pseudo labels (SPEC 5).
        normalization_jitter: mean/std jitter of the training-time normalization (SPEC 2).
        augment_views: False turns the three views into the plain normalized image (for tests).
        teacher_statistics: "ema" (default) averages the student's batch-norm statistics into the teacher,
            which then runs in inference mode; "batch" lets the teacher keep its own (Tarvainen & Valpola).
        seed: seeds the in-step augmentation (stateless; folded with the step and the replica).
        margin_warmup_epochs: the ArcFace margin grows linearly from 0 to the head's margin over
            this many epochs (0: the paper, full margin from the first step); ArcFace heads only.

    Example:
        model = MeanTeacher(student, teacher, steps_per_epoch=100)
        model.compile(optimizer=keras.optimizers.AdamW(3e-4, weight_decay=2e-4))
        model.fit(training_dataset(config), steps_per_epoch=100, epochs=160)
    """

    def __init__(
        self,
        student,
        teacher=None,
        *,
        steps_per_epoch: int,
        consistency_weight: float = 100.0,
        rampup_epochs: float = 5.0,
        consistency_start_epoch: float = 0.0,
        ema_decays=(0.5, 0.9, 0.99, 0.999),
        ema_epoch_boundaries=(1, 10, 20),
        pseudo_label_weight: float = 0.05,
        normalization_jitter: float = 0.1,
        augment_views: bool = True,
        teacher_statistics: str = "ema",
        seed: int = 0,
        margin_warmup_epochs: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.student_backbone = student["backbone"]
        self.student_head = student["head"]
        self.has_teacher = teacher is not None
        if self.has_teacher:
            self.teacher_backbone = teacher["backbone"]
            self.teacher_head = teacher["head"]
        self.steps_per_epoch = int(steps_per_epoch)
        self.consistency_weight = float(consistency_weight)
        self.rampup_epochs = float(rampup_epochs)
        self.consistency_start_epoch = float(consistency_start_epoch)
        if self.consistency_start_epoch < 0:
            raise ValueError(f"consistency_start_epoch={consistency_start_epoch} must be >= 0")
        self.ema_decays = tuple(float(d) for d in ema_decays)
        self.ema_epoch_boundaries = tuple(ema_epoch_boundaries)
        self.pseudo_label_weight = float(pseudo_label_weight)
        self.normalization_jitter = float(normalization_jitter)
        self.augment_views = bool(augment_views)
        if teacher_statistics not in constants.TEACHER_STATISTICS:
            raise ValueError(f"teacher_statistics={teacher_statistics!r} is not one of {list(constants.TEACHER_STATISTICS)}")
        self.teacher_statistics = teacher_statistics
        self.seed = int(seed)
        self.margin_warmup_epochs = float(margin_warmup_epochs)
        if self.margin_warmup_epochs < 0:
            raise ValueError(f"margin_warmup_epochs={margin_warmup_epochs} must be >= 0")
        if self.margin_warmup_epochs > 0 and not hasattr(self.student_head, "margin"):
            raise ValueError("margin_warmup_epochs needs a margin head (ArcFace)")

        names = ["loss", "classification_loss", "consistency_loss", "pseudo_label_loss", "consistency_weight"]
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.student_accuracy = keras.metrics.SparseCategoricalAccuracy(name="student_accuracy")
        self.teacher_accuracy = keras.metrics.SparseCategoricalAccuracy(name="teacher_accuracy")
        self.built = True  # the sub-networks arrive built

    # -- networks -----------------------------------------------------------------------------
    @property
    def student_variables(self):
        return self.student_backbone.trainable_weights + self.student_head.trainable_weights

    @property
    def teacher_variables(self):
        return self.teacher_backbone.trainable_weights + self.teacher_head.trainable_weights

    def inference_network(self):
        """(backbone, head) that is evaluated and exported: the teacher when there is one."""
        if self.has_teacher:
            return self.teacher_backbone, self.teacher_head
        return self.student_backbone, self.student_head

    def call(self, inputs, training=False):
        """No-margin logits and embedding of the inference network for `{image, mean, std}`."""
        backbone, head = self.inference_network()
        images = augment.normalize(inputs["image"], inputs["mean"], inputs["std"])
        embedding = backbone(images, training=training)
        return {"logits": head(embedding, training=training), "embedding": embedding}

    def copy_student_to_teacher(self):
        """Starts the teacher as an exact copy of the student."""
        for teacher, student in zip(self.teacher_variables, self.student_variables, strict=True):
            teacher.assign(student)
        student_stats = [w for w in self.student_backbone.non_trainable_weights]
        for teacher, student in zip(self.teacher_backbone.non_trainable_weights, student_stats, strict=True):
            teacher.assign(student)

    def compile(self, optimizer, **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        # Only the student is optimised: build the optimizer on its variables before Keras would
        # build it on every trainable variable (the teacher's included).
        self.optimizer.build(self.student_variables)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3.15 traces a first batch reduced across replicas before training; under
        # MultiWorkerMirroredStrategy that reduction fails for dict batches. Nothing needs it:
        # the networks are built at construction and the optimizer in compile().
        del iterator, data_batch

    @property
    def metrics(self):
        return [*self.loss_trackers.values(), self.student_accuracy, self.teacher_accuracy]

    # -- the step -----------------------------------------------------------------------------
    def _step_seeds(self, count):
        step = tf.cast(self.optimizer.iterations, tf.int64)
        seed = tf.stack([tf.constant(self.seed, tf.int64), step])
        replica = _replica_context().replica_id_in_sync_group if _replica_context() else 0
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(replica, tf.int64))
        return tf.unstack(tf.random.experimental.stateless_split(seed, count))

    def _epoch(self):
        return tf.cast(self.optimizer.iterations, tf.float32) / float(self.steps_per_epoch)

    def train_step(self, data):
        data, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        labels = tf.cast(data["label"], tf.int32)
        pseudo_labels = tf.cast(data.get("pseudo_label", tf.fill(tf.shape(labels), -1)), tf.int32)
        seed_norm, seed_normal, seed_easy, seed_hard = self._step_seeds(4)
        images = augment.normalize(
            data["image"], data["mean"], data["std"], jitter=self.normalization_jitter, seed=seed_norm
        )
        batch = tf.shape(labels)[0]
        labelled = losses.labelled_mask(labels)
        n_labelled = tf.maximum(_global_sum(tf.reduce_sum(labelled)), 1.0)
        has_pseudo = tf.cast(pseudo_labels >= 0, tf.float32)
        n_pseudo = _global_sum(tf.reduce_sum(has_pseudo))
        n_rows = _global_sum(tf.cast(batch, tf.float32))
        epoch = self._epoch()

        if self.has_teacher:
            # Outside the tape, so that none of the teacher's activations are kept for the backward pass.
            # "ema": the teacher's batch-norm statistics are the EMA of the student's, so it runs in
            # inference mode, exactly as it is evaluated; "batch": it normalises with the hard view's
            # batch statistics and keeps its own moving averages (Tarvainen & Valpola).
            hard = augment.hard_view(images, seed_hard) if self.augment_views else images
            teacher_training = self.teacher_statistics == "batch"
            teacher_logits = self.teacher_head(
                self.teacher_backbone(hard, training=teacher_training), training=teacher_training
            )
            teacher_logits = tf.stop_gradient(teacher_logits)

        with tf.GradientTape() as tape:
            normal = augment.normal_view(images, seed_normal) if self.augment_views else images
            embedding = self.student_backbone(normal, training=True)
            if self.margin_warmup_epochs > 0:
                margin = self.student_head.margin * schedules.linear_rampup(epoch, self.margin_warmup_epochs)
                margin_logits = self.student_head(embedding, labels, margin=margin, training=True)
            else:
                margin_logits = self.student_head(embedding, labels, training=True)
            classification = tf.reduce_sum(losses.classification_loss(labels, margin_logits)) / n_labelled
            consistency = tf.constant(0.0)
            pseudo = tf.constant(0.0)
            weight = tf.constant(0.0)
            total = classification
            if self.has_teacher:
                easy = augment.easy_view(images, seed_easy) if self.augment_views else images
                student_logits = self.student_head(self.student_backbone(easy, training=True), training=True)
                consistency = tf.reduce_sum(losses.consistency_loss(student_logits, teacher_logits)) / n_rows
                weight = schedules.consistency_weight(
                    epoch, self.consistency_weight, self.rampup_epochs, self.consistency_start_epoch
                )
                pseudo = tf.reduce_sum(losses.pseudo_label_loss(pseudo_labels, student_logits)) / tf.maximum(
                    n_pseudo, 1.0
                )
                pseudo_weight = tf.where(n_pseudo > 0, self.pseudo_label_weight, 0.0)
                total = (1.0 - pseudo_weight) * classification + pseudo_weight * pseudo + weight * consistency
            scaled = self.optimizer.scale_loss(total)

        gradients = tape.gradient(scaled, self.student_variables)
        self.optimizer.apply(gradients, self.student_variables)
        if self.has_teacher:
            # optimizer.iterations has advanced: the first update sees step 1 (decay 0.5, not 0),
            # as in Tarvainen & Valpola's code; `epoch` is the 0-based epoch of this step.
            decay = schedules.ema_decay(
                self.optimizer.iterations,
                tf.floor(epoch),
                last_epochs=self.ema_epoch_boundaries,
                decays=self.ema_decays[:-1],
                final_decay=self.ema_decays[-1],
            )
            ema_update(self.teacher_variables, self.student_variables, tf.cast(decay, tf.float32))
            if self.teacher_statistics == "ema":
                ema_update(
                    self.teacher_backbone.non_trainable_weights,
                    self.student_backbone.non_trainable_weights,
                    tf.cast(decay, tf.float32),
                )

        replicas = float(_num_replicas())  # trackers average replicas; each holds 1/replicas of a term
        values = {
            "loss": total,
            "classification_loss": classification,
            "consistency_loss": consistency,
            "pseudo_label_loss": pseudo,
            "consistency_weight": weight / replicas,
        }
        for name, value in values.items():
            self.loss_trackers[name].update_state(value * replicas)
        no_margin = self.student_head(embedding, training=False)
        self.student_accuracy.update_state(tf.maximum(labels, 0), no_margin, sample_weight=labelled)
        return _logs({metric.name: metric.result() for metric in self.metrics if metric is not self.teacher_accuracy})

    def test_step(self, data):
        data, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        labels = tf.cast(data["label"], tf.int32)
        labelled = losses.labelled_mask(labels)
        images = augment.normalize(data["image"], data["mean"], data["std"])
        student_logits = self.student_head(self.student_backbone(images, training=False))
        self.student_accuracy.update_state(tf.maximum(labels, 0), student_logits, sample_weight=labelled)
        if self.has_teacher:
            teacher_logits = self.teacher_head(self.teacher_backbone(images, training=False))
            self.teacher_accuracy.update_state(tf.maximum(labels, 0), teacher_logits, sample_weight=labelled)
            return _logs(
                {"student_accuracy": self.student_accuracy.result(), "teacher_accuracy": self.teacher_accuracy.result()}
            )
        return _logs({"student_accuracy": self.student_accuracy.result()})
