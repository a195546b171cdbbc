"""Training-time dropout plumbing shared by the layers (Keras-aware).

The ops take a plain `dropout_rate` and a stateless seed; this module decides
whether the rate applies (the `training` flag, or Keras' learning phase) and
draws a fresh seed for every call, reproducible when the layer has a `seed`.
"""

import tensorflow as tf
import tf_keras

from tf_mha import ops


class SeedStream:
  """Fresh shape-[2] seeds for stateless dropout, one per traced call."""

  def __init__(self, seed):
    self._seed = seed
    self._count = 0

  def next(self):
    op_seed = None
    if self._seed is not None:
      self._count += 1
      op_seed = self._seed + self._count
    return ops.random_seed(op_seed)


def when_training(training, train_fn, infer_fn):
  """`train_fn()` in training, else `infer_fn()`; a `tf.cond` if symbolic."""
  if training is None:
    training = tf_keras.backend.learning_phase()
  return tf.__internal__.smart_cond.smart_cond(training, train_fn, infer_fn)


def attend_with_rate(rate, training, attend):
  """`attend(rate)` in training when `rate > 0`, else `attend(0.0)` (the
  attention without its dropout ops)."""
  if rate > 0:
    return when_training(training, lambda: attend(rate), lambda: attend(0.0))
  return attend(0.0)
