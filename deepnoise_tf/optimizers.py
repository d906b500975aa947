"""Adam with an L2 penalty on the weights: the paper's pretraining optimizer (docs/method.md §7).

The paper trains with "Adam with weight decay (2e-4)", and the authors' code uses PyTorch's
`Adam(weight_decay=2e-4)`, which adds `2e-4 * w` to each gradient *before* Adam's moment estimates
(the gradient of the loss term `1e-4 * ||w||^2`). That is not Keras's `AdamW`, whose decoupled decay
shrinks a weight by `lr * 2e-4` per step, outside Adam's scaling. `AdamL2` does the former inside the
optimizer's per-variable update, so `MeanTeacher.train_step` and a plain `model.fit` both get it
without a change to the loss (and it stays right under loss scaling and `tf.distribute`: the term is
added to the already unscaled, all-reduced gradient, once per variable).
"""

from __future__ import annotations

import keras
from keras import ops

# Variables whose name contains one of these get no L2: batch-norm scales and offsets and biases,
# as the fine-tuning SGD's decay (factory.build_optimizer). Kernels of convolutions, separable
# convolutions, dense layers and the ArcFace class weights are regularised.
L2_EXCLUDED_NAMES = ("gamma", "beta", "bias")


@keras.saving.register_keras_serializable(package="deepnoise_tf")
class AdamL2(keras.optimizers.Adam):
    """`keras.optimizers.Adam` on `gradient + l2 * w` (PyTorch's `Adam(weight_decay=l2)`).

    Args:
      l2: the coefficient added to the gradient, `gradient + l2 * w` (the gradient of the penalty
        `l2 / 2 * ||w||^2`). Variables excluded with `exclude_from_weight_decay` get none.
      **kwargs: Adam's arguments; `weight_decay` (Keras's decoupled decay) is refused, so the two
        kinds of decay cannot be combined by accident.

    Example:
      optimizer = AdamL2(learning_rate=3e-4, l2=2e-4)
      optimizer.exclude_from_weight_decay(var_names=list(L2_EXCLUDED_NAMES))
    """

    def __init__(self, learning_rate=1e-3, *, l2: float = 0.0, **kwargs):
        if kwargs.get("weight_decay") is not None:
            raise ValueError(
                "AdamL2 adds l2 * w to the gradient; it takes no decoupled weight_decay"
            )
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, **kwargs)
        if not l2 >= 0:
            raise ValueError(f"l2={l2} must be >= 0")
        self.l2 = float(l2)

    def update_step(self, gradient, variable, learning_rate):
        """Adam's update on the gradient plus the L2 term (for the variables not excluded)."""
        if self.l2 and self._use_weight_decay(variable):
            gradient = ops.add(
                ops.cast(gradient, variable.dtype),
                ops.multiply(ops.cast(self.l2, variable.dtype), variable),
            )
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config["l2"] = self.l2
        return config
