"""The training wrapper: a `keras.Model` holding student and teacher, with the DeepNoise `train_step`.

It owns the step and nothing else (networks come from `models`/`layers`, formulas from `losses`,
`augment` and `schedules`, Keras/TensorFlow workarounds from `keras_compat`). Which view feeds which
loss (the paper's Fig. 2C; the three views are the authors' code):

- student, *normal* view of the labelled rows only, with labels -> ArcFace margin logits ->
  classification loss (eq. 4);
- student, *easy* view of every row, no margin -> consistency MSE against the teacher (eq. 5), and
  the pSoftmax pseudo-label loss (the unlabelled rows that carry a pseudo label);
- teacher, *hard* view of every row, no margin, no gradient -> consistency target.

A pass whose result has weight 0 does not run: no teacher pass while the consistency weight is 0
(the labelled-only epochs), and no easy-view pass unless the consistency weight is positive or the
batch has pseudo-labelled rows (`step_phase.passes_to_run`). Where an epoch lies wholly in one phase
(`step_phase.StepPhase` tells the model before it begins), the compiled step holds only that
phase's passes; otherwise a `tf.cond` picks them per step, at a cost: TensorFlow's oneDNN rewrites
skip the ops inside a branch (the max-pool gradient falls back to a kernel 15x slower) and the
skipped branch's bookkeeping still runs (benchmarks/train.py, 64 px, one inter-op thread: 2.08
plain steps before, 1.94 after; BENCHMARKS.md). The teacher's trainable weights are the EMA of the
student's (Tarvainen & Valpola 2017; `teacher_ema`), updated once per step after the optimizer.
Every loss term is reduced by the global count of the rows it covers, so the sum of the replicas'
gradients is the gradient of the global-batch loss whatever the number of replicas.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import keras
import tensorflow as tf

from deepnoise_tf import augment, constants, keras_compat, losses, schedules, teacher_ema
from deepnoise_tf.step_phase import passes_to_run, phase_of_steps, run_if

# `views[name](images, seed) -> images` for each name; `augment.VIEWS` are the paper's.
ViewFunction = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
VIEW_NAMES = ("easy", "normal", "hard")


def labelled_prefix(rows: int, labelled_share: float) -> int:
    """Labelled rows at the start of a replica's batch of `rows` (`data.labelled_batch_size`)."""
    return max(1, min(rows, round(rows * labelled_share)))


class MeanTeacher(keras_compat.PrebuiltModelMixin, keras.Model):
    """Student/teacher pair trained with margin, consistency and pseudo-label losses.

    Args:
        student: `{"backbone": keras.Model, "head": layer}` trained by the optimizer.
        teacher: the same structure, or None for the supervised Models 1 and 2 (then only the
            classification loss is used and the student is what gets evaluated and exported).
        steps_per_epoch: converts the step counter to the (fractional) epoch of the schedules.
        consistency_weight, rampup_epochs: the weight of the consistency loss (eq. 5), ramped up
            over the first epochs (paper, Discussion) as 100 * exp(-5 (1 - t/T)^2).
        consistency_start_epoch: labelled-only (margin loss) training before this epoch, as the
            paper's Discussion describes; the consistency ramp-up starts there (0: from the first step).
        ema_decays, ema_epoch_boundaries: the EMA decay schedule of the teacher (authors' code).
        pseudo_label_weight: weight of the pSoftmax loss when a batch carries pseudo labels (the
            classification loss then gets 1 - this).
        normalization_jitter: mean/std jitter of the training-time normalization (eqs. 1-3).
        views: `{"easy", "normal", "hard"}` -> `fn(images, seed)`, the student's and teacher's
            input perturbations; default `augment.VIEWS`, the paper's augmentation (Method, Training
            details). Pass e.g. `functools.partial` of them to change `augment.ViewParameters`, or
            identities to train on the plain normalized image.
        teacher_statistics: "batch" (default; the paper's code, Tarvainen & Valpola) normalises the
            teacher's hard view with batch statistics and keeps batch-norm statistics out of the
            EMA: the teacher's moving statistics come from its own passes (from the student's
            while it runs none, see `teacher_ema.update_teacher`); "ema" averages the student's
            statistics into the teacher, which then runs in inference mode.
        labelled_share: the fixed labelled share of every batch, whose labelled rows come first in
            each replica's slice (`data.training_dataset`): the normal view then runs on that static
            prefix (`labelled_prefix`). None: on the rows with a label, gathered by a mask
            (any order, dynamic shape, not for XLA).
        seed: seeds the in-step augmentation (stateless; folded with the step and the replica).
        margin_warmup_epochs: the ArcFace margin grows linearly from 0 to the head's margin over
            this many epochs (0: the paper, full margin from the first step); ArcFace heads only.

    Example:
        model = MeanTeacher(student, teacher, steps_per_epoch=100)
        model.compile(optimizer=keras.optimizers.AdamW(3e-4, weight_decay=2e-4))
        model.fit(training_dataset(config), steps_per_epoch=100, epochs=160)

    Reference:
        Yang et al. 2023, "DeepNoise" (Genomics Proteomics Bioinformatics), Method and Fig. 2C;
        Tarvainen & Valpola 2017, "Mean teachers are better role models".
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
        views: Mapping[str, ViewFunction] = augment.VIEWS,
        teacher_statistics: str = "batch",
        labelled_share: float | None = None,
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
        if set(views) != set(VIEW_NAMES):
            raise ValueError(f"views must name exactly {list(VIEW_NAMES)}, got {sorted(views)}")
        self.views = {name: views[name] for name in VIEW_NAMES}
        if teacher_statistics not in constants.TEACHER_STATISTICS:
            raise ValueError(
                f"teacher_statistics={teacher_statistics!r} is not one of {list(constants.TEACHER_STATISTICS)}"
            )
        self.teacher_statistics = teacher_statistics
        if labelled_share is not None and not 0 < labelled_share <= 1:
            raise ValueError(f"labelled_share={labelled_share} must be in (0, 1] or None")
        self.labelled_share = labelled_share
        self.seed = int(seed)
        self.margin_warmup_epochs = float(margin_warmup_epochs)
        if self.margin_warmup_epochs < 0:
            raise ValueError(f"margin_warmup_epochs={margin_warmup_epochs} must be >= 0")
        if self.margin_warmup_epochs > 0 and not hasattr(self.student_head, "margin"):
            raise ValueError("margin_warmup_epochs needs a margin head (ArcFace)")

        names = [
            "loss",
            "classification_loss",
            "consistency_loss",
            "pseudo_label_loss",
            "consistency_weight",
        ]
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in names}
        # None: the step picks its passes per step; else the phase every step it runs lies in
        # (`specialise_step`).
        self.step_phase: str | None = None
        self.student_accuracy = keras.metrics.SparseCategoricalAccuracy(name="student_accuracy")
        self.teacher_accuracy = keras.metrics.SparseCategoricalAccuracy(name="teacher_accuracy")
        self.built = True  # the sub-networks arrive built (see keras_compat.PrebuiltModelMixin)

    # -- networks -----------------------------------------------------------------------------
    def network(self, role: str) -> dict:
        """`{"backbone", "head"}` of the "student" or the "teacher" (a method, not an attribute:
        Keras's weight saving walks attributes and would save the networks twice)."""
        return {
            "backbone": getattr(self, f"{role}_backbone"),
            "head": getattr(self, f"{role}_head"),
        }

    @property
    def student_variables(self):
        return teacher_ema.trainable_variables(self.network("student"))

    @property
    def teacher_variables(self):
        return teacher_ema.trainable_variables(self.network("teacher"))

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
        """Starts the teacher as an exact copy of the student (`teacher_ema`)."""
        teacher_ema.copy_student_to_teacher(self.network("teacher"), self.network("student"))

    def compile(self, optimizer, **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        # Only the student is optimised: build the optimizer on its variables before Keras would
        # build it on every trainable variable (the teacher's included).
        self.optimizer.build(self.student_variables)

    @property
    def metrics(self):
        return [*self.loss_trackers.values(), self.student_accuracy, self.teacher_accuracy]

    # -- the phase of the coming steps -------------------------------------------------------
    def specialise_step(self, first_step: int, steps: int) -> bool:
        """Sets `step_phase` for the `steps` optimizer steps from `first_step` (an epoch): the
        phase they all lie in (`phase_of_steps`), None without a teacher. True when it
        changed, and a step compiled before must then be traced again."""
        phase = None
        if self.has_teacher:
            phase = phase_of_steps(
                first_step,
                first_step + steps - 1,
                steps_per_epoch=self.steps_per_epoch,
                consistency_weight=self.consistency_weight,
                rampup_epochs=self.rampup_epochs,
                start_epoch=self.consistency_start_epoch,
            )
        changed = phase != self.step_phase
        self.step_phase = phase
        return changed

    # -- the step -----------------------------------------------------------------------------
    def train_step(self, data):
        """One step of the paper's Algorithm 1 on a batch mixing labelled and unlabelled rows.

        Labelled and unlabelled rows go through the same step: the classification loss covers the
        labelled ones, the consistency loss all of them, the pSoftmax loss those with a pseudo label.
        """
        data, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        targets = self._targets(data)
        epoch = self._epoch()
        views = self._make_views(data, targets)
        passes = self._passes(epoch, targets)
        teacher_logits = None
        if self.has_teacher:
            teacher_logits = self._teacher_targets(views["hard"], passes["teacher"], targets)
        with tf.GradientTape() as tape:
            terms, embedding = self._student_losses(views, targets, teacher_logits, epoch, passes)
            scaled_loss = self.optimizer.scale_loss(terms["loss"])
        self._update_student(tape.gradient(scaled_loss, self.student_variables))
        if self.has_teacher:
            self._update_teacher(epoch, passes["teacher"])
        return self._update_metrics(terms, targets, embedding)

    def _epoch(self):
        """The (fractional, 0-based) epoch of this step: what every schedule is a function of."""
        return tf.cast(self.optimizer.iterations, tf.float32) / float(self.steps_per_epoch)

    def _step_seeds(self, count):
        """`count` stateless seeds for this step, different per step and per replica."""
        step = tf.cast(self.optimizer.iterations, tf.int64)
        seed = tf.stack([tf.constant(self.seed, tf.int64), step])
        seed = tf.random.experimental.stateless_fold_in(
            seed, tf.cast(keras_compat.replica_id(), tf.int64)
        )
        return tf.unstack(tf.random.experimental.stateless_split(seed, count))

    def _targets(self, data):
        """Labels (-1: unlabelled), pseudo labels (-1: none), the labelled rows and global counts.

        The counts are summed over replicas, so that each loss is the mean over the global batch
        (eq. 4's 1/N, eq. 5's expectation) whatever the number of replicas. `labelled_index` picks
        the labelled rows: the static prefix of `labelled_share` (an int; a row with a label after
        it is an error, not a silently dropped row), else the indices of the rows with a label.
        """
        labels = tf.cast(data["label"], tf.int32)
        pseudo_labels = tf.cast(data.get("pseudo_label", tf.fill(tf.shape(labels), -1)), tf.int32)
        labelled = losses.labelled_mask(labels)
        has_pseudo = tf.cast(pseudo_labels >= 0, tf.float32)
        rows = labels.shape[0]
        if self.labelled_share is not None and rows is not None:
            index = labelled_prefix(rows, self.labelled_share)
            tf.debugging.assert_negative(
                labels[index:],
                message=f"rows with a label after the labelled share's first {index} rows",
            )
        else:
            index = tf.where(labels >= 0)[:, 0]
        return {
            "labels": labels,
            "pseudo_labels": pseudo_labels,
            "may_have_pseudo_labels": "pseudo_label" in data,
            "labelled_index": index,
            "labelled_rows": tf.maximum(keras_compat.global_sum(tf.reduce_sum(labelled)), 1.0),
            "pseudo_rows": keras_compat.global_sum(tf.reduce_sum(has_pseudo)),
            "rows": keras_compat.global_sum(tf.cast(tf.shape(labels)[0], tf.float32)),
            "local_rows": tf.shape(labels)[0],
        }

    @staticmethod
    def _labelled(tensor, targets):
        """The labelled rows of a per-row tensor (see `_targets`)."""
        index = targets["labelled_index"]
        return tensor[:index] if isinstance(index, int) else tf.gather(tensor, index)

    def _make_views(self, data, targets):
        """Normalized images (eqs. 1-3, with the training-time mean/std jitter), then their views.

        The paper perturbs the student and the teacher differently (Discussion; augmentation in
        Method, Training details): the teacher sees the hard view, the student the normal view for
        the margin loss (labelled rows only, as in the authors' code) and the easy view for the
        consistency and pSoftmax losses (every row). Each view (own seed) is drawn by a function
        called in the pass that uses it.
        """
        seeds = dict(
            zip(("normalization", "normal", "easy", "hard"), self._step_seeds(4), strict=True)
        )
        images = augment.normalize(
            data["image"],
            data["mean"],
            data["std"],
            jitter=self.normalization_jitter,
            seed=seeds["normalization"],
        )
        labelled_images = self._labelled(images, targets)
        return {
            "normal": lambda: self.views["normal"](labelled_images, seeds["normal"]),
            "easy": lambda: self.views["easy"](images, seeds["easy"]),
            "hard": lambda: self.views["hard"](images, seeds["hard"]),
        }

    def _passes(self, epoch, targets):
        """The consistency weight w_c(epoch) (eq. 5) and which passes run (`passes_to_run`)."""
        if not self.has_teacher:
            return {"weight": tf.constant(0.0), "teacher": False, "easy": False}
        weight = schedules.consistency_weight(
            epoch, self.consistency_weight, self.rampup_epochs, self.consistency_start_epoch
        )
        pseudo = targets["pseudo_rows"] > 0 if targets["may_have_pseudo_labels"] else False
        return {"weight": weight, **passes_to_run(self.step_phase, weight, pseudo)}

    def _teacher_targets(self, hard_view, run, targets):
        """The teacher's no-margin logits on the hard view: the consistency target f(x, θ') of eq. 5.

        Computed outside the tape, so that none of the teacher's activations are kept for the
        backward pass, and without gradient; zeros, without a pass, where `run` is false.
        "batch": the teacher normalises the hard view with its batch statistics and updates its own
        moving averages (Tarvainen & Valpola 2017; the authors' code); "ema": its batch-norm
        statistics are the EMA of the student's, so it runs in inference mode, as it is evaluated.
        """
        training = self.teacher_statistics == "batch"

        def logits():
            embedding = self.teacher_backbone(hard_view(), training=training)
            return tf.cast(self.teacher_head(embedding, training=training), tf.float32)

        def skipped():
            return tf.zeros([targets["local_rows"], self.teacher_head.num_classes], tf.float32)

        return tf.stop_gradient(run_if(run, logits, skipped))

    def _classification_loss(self, embedding, targets, epoch):
        """ArcFace margin cross-entropy (eq. 4) of the labelled rows, over the global labelled count.

        `embedding` holds the labelled rows only. With `margin_warmup_epochs` > 0 the margin m grows
        linearly from 0 (not in the paper).
        """
        labels = self._labelled(targets["labels"], targets)
        if self.margin_warmup_epochs > 0:
            margin = self.student_head.margin * schedules.linear_rampup(
                epoch, self.margin_warmup_epochs
            )
            margin_logits = self.student_head(embedding, labels, margin=margin, training=True)
        else:
            margin_logits = self.student_head(embedding, labels, training=True)
        return (
            tf.reduce_sum(losses.classification_loss(labels, margin_logits))
            / targets["labelled_rows"]
        )

    def _student_losses(self, views, targets, teacher_logits, epoch, passes):
        """Every loss term of the step by name, and the student's embedding of the labelled rows.

        `loss` = (1 - w_p) * classification + w_p * pseudo_label + w_c(epoch) * consistency, with
        classification the ArcFace loss (eq. 4) on the normal view of the labelled rows;
        consistency the MSE between the student's and the teacher's softmax (eq. 5) on the easy
        view, every row; pseudo_label the pSoftmax cross-entropy (Method, Pseudo label softmax
        loss) on the easy view's rows that carry a pseudo label, w_p = `pseudo_label_weight` when
        there are any, else 0. A term whose pass is skipped (`_passes`) is 0. Without a teacher,
        `loss` is the classification loss alone (Models 1 and 2) and the others are 0.
        """
        embedding = self.student_backbone(views["normal"](), training=True)
        classification = self._classification_loss(embedding, targets, epoch)
        zero = tf.constant(0.0)
        if not self.has_teacher:
            terms = dict(consistency_loss=zero, pseudo_label_loss=zero, consistency_weight=zero)
            return dict(loss=classification, classification_loss=classification, **terms), embedding

        pseudo_rows = targets["pseudo_rows"]

        def easy_terms():
            easy_logits = self.student_head(
                self.student_backbone(views["easy"](), training=True), training=True
            )
            consistency = (
                tf.reduce_sum(losses.consistency_loss(easy_logits, teacher_logits))
                / targets["rows"]
            )
            pseudo = tf.reduce_sum(
                losses.pseudo_label_loss(targets["pseudo_labels"], easy_logits)
            ) / tf.maximum(pseudo_rows, 1.0)
            if isinstance(passes["teacher"], bool):
                return (consistency if passes["teacher"] else zero), pseudo
            return tf.where(passes["teacher"], consistency, zero), pseudo

        consistency, pseudo = run_if(passes["easy"], easy_terms, lambda: (zero, zero))
        weight = passes["weight"]
        pseudo_weight = tf.where(pseudo_rows > 0, self.pseudo_label_weight, 0.0)
        total = (
            (1.0 - pseudo_weight) * classification + pseudo_weight * pseudo + weight * consistency
        )
        terms = {
            "consistency_loss": consistency,
            "pseudo_label_loss": pseudo,
            "consistency_weight": weight,
        }
        return {"loss": total, "classification_loss": classification, **terms}, embedding

    def _update_student(self, gradients):
        """One optimizer step on the student only (the teacher is never optimised, Fig. 2C).

        Under a strategy Keras sums the replicas' gradients; the losses' global counts make that sum
        the gradient of the global-batch loss.
        """
        self.optimizer.apply(gradients, self.student_variables)

    def _update_teacher(self, epoch, teacher_ran):
        """θ' <- d θ' + (1 - d) θ: the teacher as the EMA of the student (`teacher_ema`).

        d = min(1 - 1/(step + 1), d(epoch)) with d(epoch) from `ema_decays` at `ema_epoch_boundaries`
        (authors' code). `optimizer.iterations` has advanced: the first update sees step 1 (decay
        0.5, not 0), as in Tarvainen & Valpola's code; `epoch` is the 0-based epoch of this step.
        """
        decay = schedules.ema_decay(
            self.optimizer.iterations,
            tf.floor(epoch),
            last_epochs=self.ema_epoch_boundaries,
            decays=self.ema_decays[:-1],
            final_decay=self.ema_decays[-1],
        )
        teacher_ema.update_teacher(
            self.network("teacher"),
            self.network("student"),
            tf.cast(decay, tf.float32),
            statistics=self.teacher_statistics,
            teacher_ran=teacher_ran,
        )

    def _update_metrics(self, terms, targets, embedding):
        """Feeds the loss terms and the student's no-margin accuracy to the trackers; returns the logs.

        Keras averages the replicas' logs, while each replica's loss term holds its share of the
        global-batch loss: each is scaled by the number of replicas so that the mean is the sum.
        The consistency weight is the same on every replica and is logged as it is. The accuracy
        is the student's on the normal view of the labelled rows (`embedding`).
        """
        replicas = float(keras_compat.num_replicas())
        shares = {**terms, "consistency_weight": terms["consistency_weight"] / replicas}
        for name, value in shares.items():
            self.loss_trackers[name].update_state(value * replicas)
        no_margin = self.student_head(embedding, training=False)
        labels = self._labelled(targets["labels"], targets)
        self.student_accuracy.update_state(
            tf.maximum(labels, 0), no_margin, sample_weight=losses.labelled_mask(labels)
        )
        return keras_compat.step_logs(
            {
                metric.name: metric.result()
                for metric in self.metrics
                if metric is not self.teacher_accuracy
            }
        )

    def test_step(self, data):
        """Accuracy of student and teacher (inference mode, no margin) on the labelled rows."""
        data, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        labels = tf.cast(data["label"], tf.int32)
        labelled = losses.labelled_mask(labels)
        images = augment.normalize(data["image"], data["mean"], data["std"])
        logs = {}
        for role in ("student", "teacher") if self.has_teacher else ("student",):
            network = self.network(role)
            logits = network["head"](network["backbone"](images, training=False))
            accuracy = self.student_accuracy if role == "student" else self.teacher_accuracy
            accuracy.update_state(tf.maximum(labels, 0), logits, sample_weight=labelled)
            logs[accuracy.name] = accuracy.result()
        return keras_compat.step_logs(logs)
