"""Scaled dot-product attention as a pure function: no variables, no Keras.

Glossary of shapes:
  B: batch size.          T: query length.       S: key/value length.
  N: number of heads.     H: key/query head size. V: value head size.

`dot_product_attention` is the single entry point. It chooses between the
plain path (which materialises the `[B, N, T, S]` scores) and the blockwise
exact path in `tf_mha.flash` (linear memory, online softmax).
"""

import math

import tensorflow as tf

from tf_mha import flash
from tf_mha import masks as masks_lib


def dot_product_attention(query,
                          key,
                          value,
                          *,
                          mask=None,
                          is_causal=False,
                          scale=None,
                          dropout_rate=0.0,
                          dropout_seed=None,
                          return_scores=False,
                          flash_attention=None,
                          block_sizes=None):
  """Multi-head scaled dot-product attention.

  A query row whose every key is masked attends uniformly to all keys (its
  output is the mean of `value` over `S`, as tf.keras gives); outputs and
  gradients stay finite.

  >>> q = tf.ones([2, 3, 4, 8])
  >>> kv = tf.ones([2, 5, 4, 8])
  >>> dot_product_attention(q, kv, kv, is_causal=True).shape
  TensorShape([2, 3, 4, 8])

  Args:
    query: `[B, T, N, H]`.
    key: `[B, S, N, H]`.
    value: `[B, S, N, V]`.
    mask: boolean, broadcastable to `[B, N, T, S]`, `True` where attention is
      allowed; or `None`.
    is_causal: also apply `masks.causal_mask(T, S)` (query `t` sees `s <= t`).
    scale: multiplies the query; defaults to `1 / sqrt(H)`.
    dropout_rate: fraction of attention probabilities dropped, in `[0, 1)`.
    dropout_seed: shape-`[2]` int seed for the stateless dropout; drawn at
      random when `None`.
    return_scores: also return the probabilities `[B, N, T, S]` (before
      dropout). Needs the plain path.
    flash_attention: `True` forces the blockwise path (error where it cannot
      apply), `False` forbids it, `None` picks it when it applies and is
      faster.
    block_sizes: `(query_block, key_block)` for the blockwise path; chosen
      from the shapes when `None`.

  Returns:
    `[B, T, N, V]` in the dtype of `query`, and the probabilities if
    `return_scores`.

  Raises:
    ValueError: on inconsistent shapes, a bad `dropout_rate`, or
      `flash_attention=True` with `return_scores=True`.
  """
  query = tf.convert_to_tensor(query)
  key = tf.convert_to_tensor(key, dtype_hint=query.dtype)
  value = tf.convert_to_tensor(value, dtype_hint=query.dtype)
  _check_shapes(query, key, value)
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError("`dropout_rate` must be in [0, 1). "
                     f"Received: dropout_rate={dropout_rate!r}")
  if flash_attention and return_scores:
    raise ValueError(
        "Returning attention scores is not supported with "
        "flash_attention=True: the blockwise path never forms them. Pass "
        "flash_attention=None or False to get the scores.")
  if scale is None:
    scale = 1.0 / math.sqrt(query.shape[-1])
  # Scale the query: it is the smaller tensor ([B, T, N, H] vs [B, N, T, S]).
  query = query * tf.cast(scale, query.dtype)
  if mask is not None:
    mask = masks_lib.to_bool_mask(mask)
  if dropout_rate > 0.0 and dropout_seed is None:
    dropout_seed = random_seed()

  use_flash = flash_attention
  if use_flash is None:
    use_flash = not return_scores and flash.is_preferred(query, key)
  if use_flash:
    out = flash.blockwise_attention(
        query, key, value, mask=mask, is_causal=is_causal,
        dropout_rate=dropout_rate, dropout_seed=dropout_seed,
        block_sizes=block_sizes)
    return (out, None) if return_scores else out
  out, probs = _plain_attention(query, key, value, mask, is_causal,
                                dropout_rate, dropout_seed)
  return (out, probs) if return_scores else out


def _plain_attention(query, key, value, mask, is_causal, dropout_rate,
                     dropout_seed):
  """Materialises the scores; the query is already scaled."""
  dtype = masks_lib.logits_dtype(query.dtype)
  scores = tf.einsum("BTNH,BSNH->BNTS", tf.cast(query, dtype),
                     tf.cast(key, dtype))  # [B, N, T, S]
  if is_causal:
    causal = masks_lib.causal_mask(tf.shape(query)[1], tf.shape(key)[1])
    mask = masks_lib.combine_masks(mask, causal)
  probs = masks_lib.masked_softmax(scores, mask)
  dropped = probs
  if dropout_rate > 0.0:
    dropped = dropout(probs, dropout_rate, dropout_seed)
  out = tf.einsum("BNTS,BSNV->BTNV", tf.cast(dropped, value.dtype), value)
  return out, probs


def dropout(x, rate, seed):
  """Stateless inverted dropout: zeroes `rate` of `x`, rescales the rest."""
  keep = tf.random.stateless_uniform(tf.shape(x), seed) >= rate
  return tf.where(keep, x / tf.cast(1.0 - rate, x.dtype), tf.zeros_like(x))


def random_seed(op_seed=None):
  """A fresh shape-[2] int32 seed for stateless ops.

  A stateful draw: a new value on every execution, also inside a
  tf.function, reproducible from `op_seed` in a fresh process.
  """
  return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32,
                           seed=op_seed)


def _check_shapes(query, key, value):
  for name, t in (("query", query), ("key", key), ("value", value)):
    if t.shape.rank is not None and t.shape.rank != 4:
      raise ValueError(f"`{name}` must have rank 4, [batch, length, heads, "
                       f"head_size]. Received: {name}.shape={t.shape}")
  pairs = (("key", key, 1, "value", value, 1, "length"),
           ("query", query, 2, "key", key, 2, "number of heads"),
           ("key", key, 2, "value", value, 2, "number of heads"),
           ("query", query, 3, "key", key, 3, "head size"))
  for a_name, a, i, b_name, b, j, what in pairs:
    da, db = a.shape[i], b.shape[j]
    if da is not None and db is not None and da != db:
      raise ValueError(f"`{a_name}` and `{b_name}` must have the same {what}. "
                       f"Received: {a_name}.shape={a.shape}, "
                       f"{b_name}.shape={b.shape}")
