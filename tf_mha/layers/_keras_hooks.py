"""The protected methods of tf.keras' `MultiHeadAttention` that subclasses
override or call, with tf.keras' behaviour: `KerasHooks`, a mixin of
`tf_mha.MultiHeadAttention`.

Model Garden's attention variants (TalkingHeadsAttention, ...) build their
sublayers with `_get_common_kwargs_for_sublayer` and `_make_output_dense`,
replace `_build_attention` or `_masked_softmax`, and read the masks from
`_compute_attention_mask`. The layer always builds through the first three.
Its call combines the explicit and Keras masks with `_combined_mask`; it
calls `_masked_softmax`, `_einsum_attention`, `_compute_attention_mask` and
the causal and sliding-window mask methods only for subclasses that
override the attention math or the masks (otherwise the op applies the
causal and sliding-window masks itself, without materialising them).

Shapes: `B` batch, `T` query length, `S` key/value length, `N` heads; N-D
inputs put several attention axes in place of `T` and `S`.
"""

import math

import tensorflow as tf
import tf_keras

from tf_mha.layers import _inputs
from tf_mha.layers import _projections
from tf_mha.ops import equations
from tf_mha.ops import masks as masks_lib


class KerasHooks:
  """tf.keras' override points; reads the host layer's config attributes."""

  def _make_output_dense(self, free_dims, common_kwargs, name=None):
    """The output projection, as tf.keras builds it (subclasses override)."""
    return _projections.output_projection(
        free_dims, self._output_shape or self._query_shape[-1], name=name,
        use_bias=self._use_bias, **common_kwargs)

  def _get_common_kwargs_for_sublayer(self):
    """The sublayer arguments tf.keras subclasses build their own with."""
    # Fresh initializer instances per sublayer: a shared seeded instance
    # would give the four kernels the same values.
    def clone(initializer):
      return initializer.__class__.from_config(initializer.get_config())

    return dict(
        kernel_initializer=clone(self._kernel_initializer),
        bias_initializer=clone(self._bias_initializer),
        kernel_regularizer=self._kernel_regularizer,
        bias_regularizer=self._bias_regularizer,
        activity_regularizer=self._activity_regularizer,
        kernel_constraint=self._kernel_constraint,
        bias_constraint=self._bias_constraint,
        dtype=self._dtype_policy)

  def _build_attention(self, rank):
    """Sets what `_compute_attention` overrides written for tf.keras use."""
    (self._dot_product_equation, self._combine_equation,
     scores_rank) = equations.attention_equations(rank, self._attention_axes)
    # What the op path computes; a subclass that changes the equations
    # afterwards gets tf.keras' recipe with its own (`_einsum_attention`).
    self._op_equations = (self._dot_product_equation, self._combine_equation)
    self._axes_plan = equations.AxesPlan(rank, self._attention_axes)
    self._norm_axes = tuple(
        range(scores_rank - len(self._attention_axes), scores_rank))
    # tf.keras' sublayers, for overrides that call them (the default path
    # does not). Built now: SavedModel export skips an unbuilt sublayer.
    self._softmax = tf_keras.layers.Softmax(
        axis=self._norm_axes, robust_masking=self._softmax_robust_masking,
        dtype=self._dtype_policy)
    self._dropout_layer = tf_keras.layers.Dropout(
        rate=self._dropout, seed=self._dropout_seed, dtype=self._dtype_policy)
    for sublayer in (self._softmax, self._dropout_layer):
      sublayer.build(None)

  def _masked_softmax(self, attention_scores, attention_mask=None):
    """`self._softmax` over the key axes; the mask (a tensor or an array)
    gains the head axis it lacks."""
    if attention_mask is not None:
      axis = -len(self._attention_axes) * 2 - 1
      for _ in range(len(attention_scores.shape) - len(attention_mask.shape)):
        attention_mask = tf.expand_dims(attention_mask, axis)
    return self._softmax(attention_scores, attention_mask)

  def _einsum_attention(self, query, key, value, attention_mask, training):
    """tf.keras' own recipe, with whatever equations, softmax and dropout
    a subclass has set: for subclasses that take over the computation."""
    query = tf.multiply(query, 1.0 / math.sqrt(float(self._key_dim)))
    scores = tf.einsum(self._dot_product_equation, key, query)
    scores = self._masked_softmax(scores, attention_mask)
    dropped = self._dropout_layer(scores, training=training)
    return tf.einsum(self._combine_equation, dropped, value), scores

  def _compute_attention_mask(self, query, value, key=None,
                              attention_mask=None, use_causal_mask=False,
                              query_mask=None, value_mask=None, key_mask=None):
    """Combines the explicit, Keras, causal and sliding-window masks into
    `[B, T, S]`.

    Query masks become `[B, T, 1]`, value and key masks `[B, 1, S]`, the
    causal and sliding-window masks `[1, T, S]`; all are ANDed with
    `attention_mask`.
    """
    return self._combined_mask(
        query, value, key, attention_mask, query_mask, value_mask, key_mask,
        causal=use_causal_mask, window=self._sliding_window is not None)

  def _combined_mask(self, query, value, key=None, attention_mask=None,
                     query_mask=None, value_mask=None, key_mask=None,
                     causal=False, window=False):
    """`_compute_attention_mask`, with the causal and window parts optional."""
    if query_mask is None and value_mask is None and key_mask is None:
      query_mask = getattr(query, "_keras_mask", None)
      value_mask = getattr(value, "_keras_mask", None)
      if key is not None and key is not value:
        key_mask = getattr(key, "_keras_mask", None)
    axes = len(self._attention_axes) if self._built_from_signature else 1
    parts = _inputs.padding_masks(query_mask, value_mask, key_mask, axes)
    if causal:
      parts.append(self._compute_causal_mask(query, value))
    if window:
      parts.append(self._compute_sliding_window_mask(query, value))
    if not parts:  # as tf.keras: the caller's mask, as it came
      return attention_mask
    return masks_lib.combine_masks(attention_mask, *parts)

  def _compute_causal_mask(self, query, value=None):
    """Lower-triangular `[1, T, S]` mask over the (first) attention axis."""
    return self._length_mask(masks_lib.causal_mask, query, value)

  def _compute_sliding_window_mask(self, query, value=None):
    """The `[1, T, S]` band `|t - s| < sliding_window` over the attention axis."""
    return self._length_mask(
        lambda t, s: masks_lib.band_mask(t, s, self._sliding_window),
        query, value)

  def _length_mask(self, make_mask, query, value):
    """`make_mask(T, S)` on the lengths of the first attention axis, `[1, T, S]`."""
    axis = self._attention_axes[0] if self._built_from_signature else 1
    value = query if value is None else value
    return tf.expand_dims(
        make_mask(tf.shape(query)[axis], tf.shape(value)[axis]), 0)

  def _op_only_mask(self, query, key, causal, window):
    """The causal and sliding-window masks, `[1, T, S]` over the first
    attention axis of the projected `query` and `key`, or None."""
    if not causal and window is None:
      return None
    axis = self._attention_axes[0]
    return tf.expand_dims(masks_lib.position_mask(
        tf.shape(query)[axis], tf.shape(key)[axis], causal=causal,
        window=window), 0)
