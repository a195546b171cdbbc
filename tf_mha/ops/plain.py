"""The plain path: the `[B, N, T, S]` scores materialised; dropout and seeds.

Shapes as in `tf_mha.ops.core`. Imports TensorFlow and `masks` only.
"""

import tensorflow as tf

from tf_mha.ops import masks as masks_lib


def plain_attention(query, key, value, mask, dropout_rate, dropout_seed,
                    soft_cap=None):
  """Materialises the scores; the query is already scaled. `soft_cap`:
  None, or `c` for scores `c * tanh(scores / c)`."""
  dtype = masks_lib.logits_dtype(query.dtype)
  scores = tf.einsum("BTNH,BSNH->BNTS", tf.cast(query, dtype),
                     tf.cast(key, dtype))  # [B, N, T, S]
  if soft_cap is not None:
    scores = tf.tanh(scores / soft_cap) * soft_cap
  probs = masks_lib.masked_softmax(scores, mask)
  dropped = probs
  if dropout_rate > 0.0:
    dropped = dropout(probs, dropout_rate, dropout_seed)
  out = tf.einsum("BNTS,BSNV->BTNV", tf.cast(dropped, value.dtype), value)
  return out, probs


def dropout(x, rate, seed):
  """Stateless inverted dropout: zeroes `rate` of `x`, rescales the rest."""
  keep = tf.random.stateless_uniform(tf.shape(x), seed) >= rate
  return tf.where(keep, x / as_dtype(1.0 - rate, x.dtype), tf.zeros_like(x))


def as_dtype(number, dtype):
  """`number` (Python or tensor) in `dtype`. (`tf.cast` of a Python float
  goes through float32 first, which costs float64 eight digits.)"""
  if isinstance(number, (int, float)):
    return tf.constant(number, dtype)
  return tf.cast(number, dtype)


def random_seed(op_seed=None):
  """A fresh shape-[2] int32 seed for stateless ops.

  A stateful draw: a new value on every execution, also inside a
  tf.function, reproducible from `op_seed` in a fresh process.
  """
  return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32,
                           seed=op_seed)
