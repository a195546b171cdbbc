"""Keras 3 layers on tf_mha's op: `MultiHeadAttention` and
`GroupedQueryAttention` (`import tf_mha.keras3`; `import tf_mha` loads none
of it).

They are Keras 3's own `keras.layers.MultiHeadAttention` and
`keras.layers.GroupQueryAttention`, subclassed: the same arguments, config,
weights (names, shapes, order), LoRA, quantization, dtype policies,
symbolic `KerasTensor` inputs and `compute_output_spec`, so models and
weights move both ways with Keras' layers. On the TensorFlow backend their
attention runs through `tf_mha.dot_product_attention`: `flash_attention=True`
works (Keras refuses it there), `None` chooses as tf_mha's layers do, the
causal mask and sliding window are applied inside the op (causal chunks and
block skipping; no `[T, S]` mask), and GroupedQueryAttention's query heads
attend to their key/value head without repeating it. On JAX or PyTorch they
are Keras' layers.

Shapes: `B` batch, `T` query length, `S` key length, `N` query heads, `K`
key/value heads, `H` head size.
"""

import math

import keras
import tensorflow as tf

from keras.src import backend as keras_backend

from tf_mha import ops
from tf_mha.layers import _projections
from tf_mha.ops import equations
from tf_mha.ops import masks as masks_lib

def _on_tensorflow():
  return keras.backend.backend() == "tensorflow"


def _attend(layer, query, key, value, mask, *, causal, window, training,
            return_scores, attention_axes, segment_ids=None):
  """tf_mha's op on projected `[B, T, N, H]` / `[B, S, K, H]` tensors (or
  several attention axes), with Keras' `[B, T, S]` mask; returns
  `(output, scores or None)`."""
  if layer._flash_attention and return_scores:  # pylint: disable=protected-access
    raise ValueError(
        "Returning attention scores is not supported when flash attention is "
        "enabled. Please disable flash attention to access attention scores.")
  # `_compute_attention` is public to subclasses, which may pass arrays.
  query, key, value = (tf.convert_to_tensor(x) for x in (query, key, value))
  plan = equations.AxesPlan(query.shape.rank, attention_axes)
  if mask is not None:
    mask = plan.mask_to_flat(masks_lib.to_bool_mask(mask), query, key)
  rate = layer._dropout if training else 0.0  # pylint: disable=protected-access
  seed = None
  if rate:
    seed = tf.cast(keras.random.randint([2], 0, 2**31 - 1,
                                        seed=layer._dropout_layer.seed_generator),  # pylint: disable=protected-access
                   tf.int32)
  result = ops.dot_product_attention(
      plan.to_flat(query), plan.to_flat(key), plan.to_flat(value), mask=mask,
      is_causal=causal, sliding_window=window,
      scale=1.0 / math.sqrt(float(query.shape[-1])), dropout_rate=rate,
      dropout_seed=seed, return_scores=return_scores,
      flash_attention=layer._flash_attention,  # pylint: disable=protected-access
      segment_ids=None if segment_ids is None else segment_ids[0],
      key_segment_ids=None if segment_ids is None else segment_ids[1])
  out, scores = result if return_scores else (result, None)
  out = plan.from_flat(out, query)
  if scores is not None:
    scores = plan.scores_from_flat(scores, query, key)
  return out, scores


@keras.saving.register_keras_serializable(package="tf_mha")
class MultiHeadAttention(keras.layers.MultiHeadAttention):
  """`keras.layers.MultiHeadAttention` with its attention on tf_mha's op on
  the TensorFlow backend (module docstring).

  Examples:
    >>> layer = MultiHeadAttention(num_heads=2, key_dim=4, flash_attention=True)
    >>> x = tf.ones([3, 5, 8])
    >>> layer(x, x, use_causal_mask=True).shape
    TensorShape([3, 5, 8])
  """

  def call(self, query, value, key=None, query_mask=None, value_mask=None,
           key_mask=None, attention_mask=None, return_attention_scores=False,
           training=None, use_causal_mask=False, segment_ids=None,
           key_segment_ids=None):
    """Keras' call, plus `segment_ids` `[B, T]` and `key_segment_ids`
    `[B, S]` for packed rows (see `tf_mha.dot_product_attention`)."""
    ids = _segment_ids(query, segment_ids, key_segment_ids)
    if _keras_computes(self, MultiHeadAttention):
      return super().call(
          query, value, key, query_mask=query_mask, value_mask=value_mask,
          key_mask=key_mask, attention_mask=_with_segments(attention_mask, ids),
          return_attention_scores=return_attention_scores, training=training,
          use_causal_mask=use_causal_mask)
    key = value if key is None else key
    # Keras' rule: the query's mask is its Keras mask, and the inputs'
    # masks are consumed here.
    query_mask = keras_backend.get_keras_mask(query)
    for tensor in (query, value, key):
      keras_backend.set_keras_mask(tensor, None)
    output, scores = _projected_attention(
        self, query, value, key, self._attention_axes, "_sliding_window",
        dict(query_mask=query_mask, value_mask=value_mask, key_mask=key_mask,
             attention_mask=attention_mask),
        use_causal_mask=use_causal_mask, training=training,
        return_scores=return_attention_scores, segment_ids=ids)
    if query_mask is not None:
      keras_backend.set_keras_mask(output, query_mask)
    return (output, scores) if return_attention_scores else output

  def _compute_attention(self, query, key, value, attention_mask=None,
                         training=None, return_attention_scores=False,
                         use_causal_mask=False):
    if not _on_tensorflow():
      return super()._compute_attention(
          query, key, value, attention_mask, training, return_attention_scores,
          use_causal_mask)
    # Called by subclasses or directly: the window, if any, is already in
    # `attention_mask` (Keras' contract for this method).
    return _attend(self, query, key, value, attention_mask,
                   causal=use_causal_mask, window=None, training=training,
                   return_scores=return_attention_scores,
                   attention_axes=self._attention_axes)


@keras.saving.register_keras_serializable(package="tf_mha")
class GroupedQueryAttention(keras.layers.GroupQueryAttention):
  """`keras.layers.GroupQueryAttention` on tf_mha's op on the TensorFlow
  backend: the keys and values are not repeated (module docstring).

  Examples:
    >>> layer = GroupedQueryAttention(head_dim=4, num_query_heads=4,
    ...                               num_key_value_heads=2)
    >>> x = tf.ones([3, 5, 8])
    >>> layer(x, x, use_causal_mask=True).shape
    TensorShape([3, 5, 8])
  """

  def call(self, query, value, key=None, query_mask=None, value_mask=None,
           key_mask=None, attention_mask=None, return_attention_scores=False,
           training=None, use_causal_mask=False, segment_ids=None,
           key_segment_ids=None):
    """Keras' call, plus `segment_ids` `[B, T]` and `key_segment_ids`
    `[B, S]` for packed rows (see `tf_mha.dot_product_attention`)."""
    ids = _segment_ids(query, segment_ids, key_segment_ids)
    if _keras_computes(self, GroupedQueryAttention):
      return super().call(
          query, value, key, query_mask=query_mask, value_mask=value_mask,
          key_mask=key_mask, attention_mask=_with_segments(attention_mask, ids),
          return_attention_scores=return_attention_scores, training=training,
          use_causal_mask=use_causal_mask)
    output, scores = _projected_attention(
        self, query, value, value if key is None else key, (1,),
        "sliding_window", dict(query_mask=query_mask, value_mask=value_mask,
                               key_mask=key_mask, attention_mask=attention_mask),
        use_causal_mask=use_causal_mask, training=training,
        return_scores=return_attention_scores, segment_ids=ids)
    return (output, scores) if return_attention_scores else output


def _projected_attention(layer, query, value, key, attention_axes,
                         window_attribute, masks, *, use_causal_mask, training,
                         return_scores, segment_ids=None):
  """A Keras 3 attention layer's call after its inputs' Keras masks: the
  padding and explicit masks from Keras' `_compute_attention_mask`, the
  causal mask and sliding window in the op, the projections as matmuls on
  their kernels under XLA (`tf_mha.layers._projections`: the einsums' gradients
  copy transposes), and the gate."""
  window = getattr(layer, window_attribute)
  setattr(layer, window_attribute, None)  # Keras would make a [T, S] band
  try:
    attention_mask = layer._compute_attention_mask(  # pylint: disable=protected-access
        query, value, use_causal_mask=False, **masks)
  finally:
    setattr(layer, window_attribute, window)
  dtype = tf.as_dtype(layer.compute_dtype)
  project = lambda dense, x, axes=1: _projections.apply(dense, x, axes, dtype)
  # MultiHeadAttention keeps `_use_gate`, GroupQueryAttention `use_gate`.
  use_gate = getattr(layer, "_use_gate", getattr(layer, "use_gate", False))
  gate = project(layer._gate_dense, query) if use_gate else None  # pylint: disable=protected-access
  output, scores = _attend(
      layer, project(layer._query_dense, query), project(layer._key_dense, key),  # pylint: disable=protected-access
      project(layer._value_dense, value), attention_mask,  # pylint: disable=protected-access
      causal=use_causal_mask, window=window, training=training,
      return_scores=return_scores, attention_axes=attention_axes,
      segment_ids=segment_ids)
  if gate is not None:
    output = output * gate
  return project(layer._output_dense, output, 2), scores  # pylint: disable=protected-access


def _keras_computes(layer, cls):
  """Whether Keras' own call runs: on another backend, or for a subclass
  of `cls` that replaces `_compute_attention` (Keras' call uses it)."""
  return (not _on_tensorflow() or
          type(layer)._compute_attention is not cls._compute_attention)  # pylint: disable=protected-access


def _segment_ids(query, segment_ids, key_segment_ids):
  """`(query ids, key ids)` (key ids default to the queries'), or None."""
  if segment_ids is None:
    if key_segment_ids is not None:
      raise ValueError("`key_segment_ids` needs `segment_ids`. Received: "
                       "segment_ids=None")
    return None
  if len(query.shape) != 3:
    raise ValueError("`segment_ids` need `[batch, length, features]` inputs. "
                     f"Received: query with shape {query.shape}")
  ids = keras.ops.cast(segment_ids, "int32")
  key_ids = ids if key_segment_ids is None else keras.ops.cast(
      key_segment_ids, "int32")
  return ids, key_ids


def _with_segments(attention_mask, ids):
  """`attention_mask` and the dense `[B, T, S]` segment mask, for Keras'
  own call (another backend, or a subclass computing attention itself)."""
  if ids is None:
    return attention_mask
  query_ids, key_ids = ids
  same = keras.ops.equal(query_ids[:, :, None], key_ids[:, None, :])
  dense = keras.ops.logical_and(same, keras.ops.not_equal(query_ids, 0)[:, :, None])
  if attention_mask is None:
    return dense
  return keras.ops.logical_and(keras.ops.cast(attention_mask, "bool"), dense)
