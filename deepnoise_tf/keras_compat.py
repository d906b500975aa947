"""Keras 3 / TensorFlow workarounds used by the training wrapper, gathered in one place.

Written against Keras 3.15 and TensorFlow 2.21 (the versions in the project's environment). Each
entry says what it works around, so that it can be deleted when Keras or TensorFlow no longer needs
it. Nothing else in the package should touch private Keras or TensorFlow API.

A custom `train_step` runs once per replica under a `tf.distribute` strategy (Keras's TensorFlow
trainer wraps it in `strategy.run`), and Keras 3 offers no helper for quantities that must be
global across replicas, so the replica-context helpers below are thin wrappers of `tf.distribute`.
"""

from __future__ import annotations

import tensorflow as tf


# -- replica context (public tf.distribute API, in one spot) ------------------------------------
def replica_context():
    """The current `tf.distribute.ReplicaContext`, or None in cross-replica context."""
    return tf.distribute.get_replica_context()


def replica_id():
    """Index of this replica in its sync group (0 without distribution)."""
    context = replica_context()
    return context.replica_id_in_sync_group if context else 0


def global_sum(value):
    """Sum of `value` over all replicas (identity without distribution).

    Keras 3 sums the replicas' gradients in `optimizer.apply`, so a loss normalised by a *global*
    count (of rows, labelled rows, ...) gives the gradient of the global-batch loss.
    """
    context = replica_context()
    if context is None:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def num_replicas() -> int:
    """Replicas in sync under the current strategy (1 without distribution)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


# -- private TensorFlow API ---------------------------------------------------------------------
def merge_call(function, *args):
    """Runs `function(strategy, *args)` once in cross-replica context (directly when already there).

    Works around: TF 2.21 has no public way for a replica-context step to write a mirrored
    variable once through the strategy (rather than once per replica) other than
    `ReplicaContext.merge_call`, which raises when there is no replica context. Keras 3.15's own
    optimizer uses this private helper, `tf.__internal__.distribute.interim.maybe_merge_call`, for
    the same purpose; we follow it.
    """
    return tf.__internal__.distribute.interim.maybe_merge_call(
        function, tf.distribute.get_strategy(), *args
    )


def cond_may_all_reduce() -> bool:
    """Whether a `tf.cond` branch of the replica step may all-reduce (synchronized batch norm).

    Works around: TF 2.21's `MirroredStrategy` and `MultiWorkerMirroredStrategy` all-reduce in
    replica context through `merge_call` unless XLA compiles the step on GPUs only (their private
    `extended._use_merge_call()`), and `merge_call` inside control flow raises ("`merge_call`
    called while defining a new graph ..."). Without a strategy an all-reduce is the identity.
    A strategy without that method answers False: the caller then does the branch's work always.
    """
    if not tf.distribute.has_strategy():
        return True
    use_merge_call = getattr(tf.distribute.get_strategy().extended, "_use_merge_call", None)
    return use_merge_call is not None and not use_merge_call()


# -- Keras 3 behaviours -------------------------------------------------------------------------
def step_logs(values: dict) -> dict:
    """Step outputs shaped so that Keras 3.15 can reduce them across replicas.

    Works around: under `MultiWorkerMirroredStrategy`, Keras 3.15's TensorFlow trainer reduces the
    per-replica logs with `strategy.reduce("MEAN", value, axis=0)`, which fails on scalars; a [1]
    tensor reduces to the same mean. Other strategies (and none) keep scalars.
    """
    if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        return {name: tf.reshape(value, [1]) for name, value in values.items()}
    return values


class PrebuiltModelMixin:
    """For a `keras.Model` subclass whose sub-networks are built before the model is constructed.

    Works around: before the first epoch, Keras 3.15's TensorFlow trainer
    (`_maybe_symbolic_build`) takes a first batch, reduces it across replicas with a MEAN and
    traces the model on it to build it and its optimizer. Under `MultiWorkerMirroredStrategy` that
    reduction fails for dict batches. A model built at
    construction, whose optimizer is built in `compile`, needs none of it, so it is skipped.

    Put it before `keras.Model` in the bases so that its method takes precedence.
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        del iterator, data_batch
