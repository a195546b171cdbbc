"""Grouped-query attention as rows: the `G = N / K` query heads of a key head
become consecutive query rows against it, so keys are never repeated.

Shapes as in `tf_mha.ops.core`; `K` key heads, `G = N / K`.
"""

import tensorflow as tf

from tf_mha.ops import equations


def rows_of_groups(query, group):
  """`[B, T, N, H]` -> `[B, T * G, K, H]`: query head `n = k * G + g` at
  time `t` becomes row `t * G + g` of key head `k`."""
  b, t, n, h = equations.dims(query)
  x = tf.reshape(query, [b, t, n // group, group, h])  # [B, T, K, G, H]
  x = tf.transpose(x, [0, 1, 3, 2, 4])  # [B, T, G, K, H]
  return tf.reshape(x, [b, t * group, n // group, h])


def groups_of_rows(out, group):
  """The inverse of `rows_of_groups`: `[B, T * G, K, V]` -> `[B, T, N, V]`."""
  if group == 1:
    return out
  b, rows, k, v = equations.dims(out)
  x = tf.reshape(out, [b, rows // group, group, k, v])  # [B, T, G, K, V]
  x = tf.transpose(x, [0, 1, 3, 2, 4])  # [B, T, K, G, V]
  return tf.reshape(x, [b, rows // group, k * group, v])


def scores_of_rows(probs, group):
  """`[B, K, T * G, S]` -> `[B, N, T, S]`."""
  if group == 1:
    return probs
  b, k, rows, s = equations.dims(probs)
  x = tf.reshape(probs, [b, k, rows // group, group, s])  # [B, K, T, G, S]
  x = tf.transpose(x, [0, 1, 3, 2, 4])  # [B, K, G, T, S]
  return tf.reshape(x, [b, k * group, rows // group, s])


def mask_rows_of_groups(mask, group, length):
  """A mask broadcastable to `[B, N, T, S]` -> to `[B, K, T * G, S]`."""
  while mask.shape.rank < 4:
    mask = tf.expand_dims(mask, 0)
  m = equations.dims(mask)
  if mask.shape[2] != 1:  # per query position: every head of a group
    mask = tf.broadcast_to(mask, [m[0], m[1], length, m[3]])
  if mask.shape[1] == 1:
    return tf.repeat(mask, group, axis=2) if mask.shape[2] != 1 else mask
  mask = tf.broadcast_to(mask, [m[0], m[1], length, m[3]])
  x = tf.reshape(mask, [m[0], m[1] // group, group, length, m[3]])
  x = tf.transpose(x, [0, 1, 3, 2, 4])  # [B, K, T, G, S]
  return tf.reshape(x, [m[0], m[1] // group, length * group, m[3]])
