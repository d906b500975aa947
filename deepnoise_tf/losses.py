"""Per-example losses of DeepNoise: classification, consistency, pseudo-label (docs/method.md §5).

Every function returns a float32 vector of shape [B], one value per example, and never reduces
over the batch: the training step owns the reduction (a global-batch mean under a distribution
strategy, the labelled-only mean, the loss weights). Logits are cast to float32 first, so the
losses are exact under a mixed-precision policy. Written with `keras.ops` only (any backend).
"""

from __future__ import annotations

from keras import ops


def labelled_mask(labels):
    """1.0 where the example has a label (label >= 0), 0.0 where it is unlabelled (-1): [B]."""
    labels = ops.reshape(labels, (-1,))
    return ops.cast(labels >= 0, "float32")


def _masked_cross_entropy(labels, logits):
    """Softmax cross-entropy per example; 0 (with zero gradient) where the label is negative."""
    logits = ops.cast(logits, "float32")
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    log_probabilities = ops.log_softmax(logits, axis=-1)
    # Clamp -1 to class 0 so the gather is valid everywhere, then zero those rows.
    targets = ops.one_hot(ops.maximum(labels, 0), ops.shape(logits)[-1], dtype="float32")
    cross_entropy = -ops.sum(targets * log_probabilities, axis=-1)
    return cross_entropy * labelled_mask(labels)


def classification_loss(labels, logits):
    """Cross-entropy of the (ArcFace margin or softmax) logits; 0 for unlabelled rows.

    Args:
      labels: int [B], class index or -1 for unlabelled.
      logits: [B, num_classes].

    Returns:
      float32 [B].
    """
    return _masked_cross_entropy(labels, logits)


def consistency_loss(student_logits, teacher_logits):
    """Mean over classes of (softmax(student) - softmax(teacher))^2 per example (paper eq. 5).

    The teacher side is wrapped in stop_gradient: the teacher learns only through the EMA.
    Averaging this vector over the batch gives the paper's MSE over samples and classes.

    Returns:
      float32 [B].
    """
    student_probabilities = ops.softmax(ops.cast(student_logits, "float32"), axis=-1)
    teacher_probabilities = ops.stop_gradient(
        ops.softmax(ops.cast(teacher_logits, "float32"), axis=-1)
    )
    return ops.mean(ops.square(student_probabilities - teacher_probabilities), axis=-1)


def pseudo_label_loss(pseudo_labels, student_logits):
    """Cross-entropy of the student's no-margin logits against pseudo labels (the pSoftmax loss).

    Args:
      pseudo_labels: int [B], pseudo class index or -1 where the example has none.
      student_logits: [B, num_classes], no margin (ArcFace called without labels).

    Returns:
      float32 [B]; 0 where the pseudo label is -1.
    """
    return _masked_cross_entropy(pseudo_labels, student_logits)
