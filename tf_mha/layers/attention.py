"""`Attention`: Luong-style dot-product attention, drop-in for tf.keras'.

Shapes: `B` batch, `T` query length, `S` key/value length, `D` features.
"""

import tensorflow as tf
import tf_keras
from absl import logging

from tf_mha import ops
from tf_mha.layers import _dropout
from tf_mha.ops import checks
from tf_mha.ops import masks as masks_lib

_SCORE_MODES = ("dot", "concat")


@tf_keras.utils.register_keras_serializable(package="tf_mha")
class Attention(tf_keras.layers.Layer):
  """Dot-product attention layer, a.k.a. Luong-style attention.

  `scores = query @ key^T` ("dot", optionally times a learned `scale`) or
  `concat_score_weight * sum(tanh(scale * (query + key)))` ("concat"); the
  output is `softmax(scores) @ value`, zeroed where the query is masked.

  Examples:
    >>> layer = Attention()
    >>> q, v = tf.ones([2, 3, 4]), tf.ones([2, 5, 4])
    >>> layer([q, v]).shape
    TensorShape([2, 3, 4])

  Args:
    use_scale: learn a scalar `scale` that multiplies the scores.
    score_mode: "dot" or "concat".
    dropout: dropout rate on the attention probabilities, in `[0, 1)`.
    seed: int seed for the dropout.
    **kwargs: base `Layer` arguments; the deprecated `causal=True` is
      accepted with a warning (use `use_causal_mask` in `call`).

  Call arguments:
    inputs: `[query [B, T, D], value [B, S, D]]` or `[query, value, key]`,
      key `[B, S, D]` defaulting to value.
    mask: `[query_mask [B, T], value_mask [B, S]]`; either may be `None`.
    training: whether dropout applies.
    return_attention_scores: also return the probabilities `[B, T, S]`.
    use_causal_mask: query `t` attends only to keys `s <= t`.

  Returns:
    `[B, T, D_v]`, and the probabilities if `return_attention_scores`. A
    query row with every key masked attends uniformly (finite output).

  Raises:
    ValueError / TypeError: naming the argument, for a bad `score_mode`,
      `dropout` or `seed`, and at call time for inputs that are missing or
      not numeric, or whose batch, feature, length or mask shapes do not fit.
  """

  def __init__(self, use_scale=False, score_mode="dot", dropout=0.0, seed=None,
               **kwargs):
    causal = kwargs.pop("causal", None)
    if causal is not None:
      logging.warning("`causal` argument is deprecated. Please use "
                      "`use_causal_mask` in call() method to specify causal "
                      "masking.")
    super().__init__(**kwargs)
    if score_mode not in _SCORE_MODES:
      raise ValueError("Invalid value for argument score_mode. Expected one "
                       "of {'dot', 'concat'}. "
                       f"Received: score_mode={score_mode!r}")
    self.use_scale = use_scale
    self.score_mode = score_mode
    self.dropout = checks.rate("dropout", dropout)
    self.seed = checks.seed(seed)
    self.causal = bool(causal)
    self.supports_masking = True
    self._seeds = _dropout.SeedStream(seed)

  def build(self, input_shape):
    self.scale = None
    self.concat_score_weight = None
    if self.use_scale:
      self.scale = self.add_weight(
          name="scale", shape=(), initializer="ones", dtype=self.dtype,
          trainable=True)
    if self.score_mode == "concat":
      self.concat_score_weight = self.add_weight(
          name="concat_score_weight", shape=(), initializer="ones",
          dtype=self.dtype, trainable=True)
    super().build(input_shape)

  def _calculate_scores(self, query, key):
    """`[B, T, D]`, `[B, S, D]` -> `[B, T, S]`."""
    if self.score_mode == "dot":
      scores = tf.matmul(query, key, transpose_b=True)
      if self.scale is None:
        return scores
      return scores * tf.cast(self.scale, scores.dtype)
    summed = tf.expand_dims(query, -2) + tf.expand_dims(key, -3)  # [B, T, S, D]
    if self.scale is not None:
      summed = tf.cast(self.scale, summed.dtype) * summed
    weight = tf.cast(self.concat_score_weight, summed.dtype)
    return weight * tf.reduce_sum(tf.tanh(summed), axis=-1)

  def _calculate_score_mask(self, scores, v_mask, use_causal_mask):
    """Keras 3's helper: with `use_causal_mask`, the causal `[1, T, S]` mask
    ANDed with `v_mask` (`[B, S]`, as `[B, 1, S]`); otherwise `v_mask` as
    given (or `None`)."""
    if not use_causal_mask:
      return v_mask
    shape = tf.shape(scores)
    causal = tf.expand_dims(masks_lib.causal_mask(shape[-2], shape[-1]), 0)
    if v_mask is None:
      return causal
    return tf.logical_and(tf.expand_dims(masks_lib.to_bool_mask(v_mask), -2),
                          causal)

  def call(self, inputs, mask=None, training=None,
           return_attention_scores=False, use_causal_mask=False):
    query, value, key = _check_inputs(self, inputs, mask)
    query_mask = mask[0] if mask is not None else None
    value_mask = mask[1] if mask is not None else None
    scores = self._calculate_scores(query, key)
    causal = self.causal or use_causal_mask
    keep = self._calculate_score_mask(scores, value_mask, causal)
    if keep is not None and not causal:
      keep = tf.expand_dims(masks_lib.to_bool_mask(keep), -2)  # [B, 1, S]
    weights = masks_lib.masked_softmax(scores, keep)
    used = weights
    if self.dropout > 0:
      used = _dropout.when_training(
          training,
          lambda: ops.dropout(weights, self.dropout, self._seeds.next()),
          lambda: weights)
    result = tf.matmul(tf.cast(used, value.dtype), value)
    if query_mask is not None:
      result *= tf.cast(tf.expand_dims(query_mask, -1), result.dtype)
    # The scores returned are the weights applied, after dropout, as in
    # tf.keras and Keras 3.
    return (result, used) if return_attention_scores else result

  def compute_mask(self, inputs, mask=None):
    _check_inputs(self, inputs, mask)
    if mask is not None and mask[0] is not None:
      return tf.convert_to_tensor(mask[0])
    return None

  def compute_output_shape(self, input_shape):
    query_shape = tf.TensorShape(input_shape[0])
    value_shape = tf.TensorShape(input_shape[1])
    return query_shape[:-1].concatenate(value_shape[-1:])

  def get_config(self):
    config = {"use_scale": self.use_scale, "score_mode": self.score_mode,
              "dropout": self.dropout, "seed": self.seed}
    return {**super().get_config(), **config}


def _check_inputs(layer, inputs, mask):
  """Validates `[query, value(, key)]` and `[query_mask, value_mask]`.

  Returns:
    `(query, value, key)` as tensors; `key` is `value` when not given.
  """
  name = type(layer).__name__
  if not isinstance(inputs, (list, tuple)):
    raise ValueError(f"{name} layer must be called on a list of inputs, "
                     "namely [query, value] or [query, value, key]. "
                     f"Received: inputs={inputs!r}")
  if not 2 <= len(inputs) <= 3:
    raise ValueError(f"{name} layer accepts inputs list of length 2 or 3, "
                     "namely [query, value] or [query, value, key]. "
                     f"Received length: {len(inputs)}")
  if mask is not None:
    if not isinstance(mask, (list, tuple)):
      raise ValueError(f"{name} layer mask must be a list, namely "
                       f"[query_mask, value_mask]. Received: mask={mask!r}")
    if not 2 <= len(mask) <= len(inputs):
      raise ValueError(f"{name} layer mask must be a list of length 2, namely "
                       "[query_mask, value_mask] (it accepts a mask list of "
                       f"length 2 or 3). Received length: {len(mask)}")
  query = checks.tensor("query", inputs[0])
  value = checks.tensor("value", inputs[1])
  key = checks.tensor("key", inputs[2]) if len(inputs) > 2 else value
  q, v, k = query.shape, value.shape, key.shape
  if q.rank is None or v.rank is None or k.rank is None:
    return query, value, key
  if q.rank < 2 or v.rank < 2 or k.rank < 2:
    raise ValueError(f"{name}: `query`, `value` and `key` must have rank 2 "
                     "or more, [..., length, features]. Received: "
                     f"query.shape={q}, value.shape={v}, key.shape={k}")
  pairs = zip(q[:-2].as_list()[::-1], v[:-2].as_list()[::-1])
  if any(a not in (None, 1) and b not in (None, 1) and a != b for a, b in pairs):
    raise ValueError(
        f"{name}: `query` and `value` must have the same (or broadcastable) "
        f"batch dimensions. Received: query.shape={q}, value.shape={v}")
  if q[-1] is not None and k[-1] is not None and q[-1] != k[-1]:
    raise ValueError(
        f"{name}: `query` and `key` must have the same last dimension. "
        f"Received: query.shape={q}, key.shape={k}")
  if (v.rank and k.rank and v[-2] is not None and k[-2] is not None and
      v[-2] != k[-2]):
    raise ValueError(
        f"{name}: `value` and `key` must have the same length. "
        f"Received: value.shape={v}, key.shape={k}")
  for i, (what, x) in enumerate((("query_mask", q), ("value_mask", v))):
    shape = None if mask is None else checks.static_shape(mask[i])
    if shape is not None and not shape.is_compatible_with(x[:-1]):
      raise ValueError(
          f"{name}: `mask[{i}]` ({what}) must have the shape of its input "
          f"without the last axis, {x[:-1]}. Received: mask[{i}] with shape "
          f"{shape}")
  return query, value, key
