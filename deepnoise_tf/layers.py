"""Classification heads on the embedding: ArcFace (paper eq. 4; Models 2-4) and softmax (Model 1).

Both heads run in float32 whatever the global dtype policy: under mixed precision the embeddings
are cast up, because cosines near +-1 and a scale of 30 need more than float16's precision.
Written with `keras.ops` only, so they run on the TensorFlow and the JAX backends.
"""

from __future__ import annotations

import keras
from keras import ops

# Floor of 1 - cos^2 under the square root: keeps sin and its gradient finite when |cos| -> 1.
_SINE_SQUARED_FLOOR = 1e-12
# Floor of the squared L2 norm when normalising (an all-zero vector stays zero).
_NORM_SQUARED_FLOOR = 1e-12


def l2_normalize(x, axis: int = -1):
    """x / ||x||_2 along `axis`, safe for zero vectors."""
    squared_norm = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x * ops.rsqrt(ops.maximum(squared_norm, _NORM_SQUARED_FLOOR))


def _float32_kwargs(kwargs):
    # Heads default to a float32 policy so a global mixed_float16 / mixed_bfloat16 policy
    # does not make them compute in half precision.
    kwargs.setdefault("dtype", "float32")
    return kwargs


@keras.saving.register_keras_serializable(package="deepnoise_tf")
class ArcFace(keras.layers.Layer):
    """Additive angular margin head (ArcFace, paper eq. 4).

    `layer(embeddings)` returns `scale * cos(theta_j)` for every class j, with the embeddings and
    the class weights W_j both L2-normalised (inference, unlabelled data, pseudo-label loss).
    `layer(embeddings, labels)` returns the training logits: the target class gets
    `scale * cos(theta_y + margin)`, computed as cos*cos(m) - sin*sin(m) with
    sin = sqrt(1 - cos^2); where cos <= cos(pi - m) (theta + m would pass pi, where cos(theta + m)
    stops decreasing) it falls back to `cos - sin(pi - m) * m`. Rows whose label is negative
    (-1 = unlabelled) get no margin.

    Args:
      num_classes: number of classes (1139 for RxRx1: siRNAs and controls).
      scale: s, the radius of the hypersphere (30 in the paper).
      margin: m, the additive angular margin in radians (0.1 in the paper).
      kernel_initializer: initialiser of the (embedding_dim, num_classes) class weights.

    Example:
      head = ArcFace(1139)
      train_logits = head(embeddings, labels)   # margin on the target class
      logits = head(embeddings)                 # no margin

    Reference: Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition",
    CVPR 2019.
    """

    def __init__(
        self,
        num_classes: int,
        scale: float = 30.0,
        margin: float = 0.1,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**_float32_kwargs(kwargs))
        self.num_classes = int(num_classes)
        self.scale = float(scale)
        self.margin = float(margin)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, embeddings_shape):
        self.kernel = self.add_weight(
            shape=(int(embeddings_shape[-1]), self.num_classes),
            initializer=self.kernel_initializer,
            name="kernel",
        )

    def cosine(self, embeddings):
        """cos(theta_j) between the L2-normalised embeddings and class weights: [B, classes]."""
        embeddings = l2_normalize(ops.cast(embeddings, self.compute_dtype), axis=-1)
        kernel = l2_normalize(ops.cast(self.kernel, self.compute_dtype), axis=0)
        return ops.matmul(embeddings, kernel)

    def call(self, embeddings, labels=None, margin=None):
        """Logits `[B, classes]`; `margin` (a scalar, may be a tensor) replaces `self.margin` for
        this call: the trainer's margin warm-up (`model.arcface_margin_warmup_fraction`)."""
        cosine = self.cosine(embeddings)
        if labels is None:
            return self.scale * cosine
        labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
        margin = ops.cast(self.margin if margin is None else margin, cosine.dtype)
        sine = ops.sqrt(ops.maximum(1.0 - ops.square(cosine), _SINE_SQUARED_FLOOR))
        cos_theta_plus_margin = cosine * ops.cos(margin) - sine * ops.sin(margin)
        # Where theta + m > pi, i.e. cos(theta) < cos(pi - m) = -cos(m), use the linear fallback
        # cos - sin(pi - m) * m = cos - sin(m) * m.
        target_logit = ops.where(
            cosine > -ops.cos(margin), cos_theta_plus_margin, cosine - ops.sin(margin) * margin
        )
        # one_hot of an unlabelled row (-1) must be all zeros: clamp then mask explicitly
        # rather than rely on a backend's out-of-range behaviour.
        labelled = ops.expand_dims(labels >= 0, -1)
        is_target = ops.logical_and(
            ops.cast(ops.one_hot(ops.maximum(labels, 0), self.num_classes), "bool"), labelled
        )
        return self.scale * ops.where(is_target, target_logit, cosine)

    def compute_output_shape(self, embeddings_shape, labels_shape=None, margin_shape=None):
        return (*embeddings_shape[:-1], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            scale=self.scale,
            margin=self.margin,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config


@keras.saving.register_keras_serializable(package="deepnoise_tf")
class SoftmaxHead(keras.layers.Layer):
    """Dropout then a dense layer with bias: the plain softmax baseline (Model 1).

    Same call signature as `ArcFace`; the labels are accepted and ignored (no margin).

    Args:
      num_classes: number of classes.
      dropout: dropout rate on the embedding during training (0.5 in the public code).
    """

    def __init__(self, num_classes: int, dropout: float = 0.5, **kwargs):
        super().__init__(**_float32_kwargs(kwargs))
        self.num_classes = int(num_classes)
        self.dropout_rate = float(dropout)
        self.dropout = keras.layers.Dropout(self.dropout_rate, dtype=self.dtype_policy)
        self.dense = keras.layers.Dense(self.num_classes, dtype=self.dtype_policy, name="dense")

    def build(self, embeddings_shape):
        self.dense.build(embeddings_shape)

    def call(self, embeddings, labels=None, training=None):
        embeddings = ops.cast(embeddings, self.compute_dtype)
        return self.dense(self.dropout(embeddings, training=training))

    def compute_output_shape(self, embeddings_shape, labels_shape=None):
        return (*embeddings_shape[:-1], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, dropout=self.dropout_rate)
        return config
