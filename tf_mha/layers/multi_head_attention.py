"""`MultiHeadAttention`: a drop-in for `tf.keras.layers.MultiHeadAttention`.

Shapes: `B` batch, `T` query length, `S` key/value length, `N` heads,
`H` key size, `V` value size, `D` model size. N-D inputs put extra batch
axes and several attention axes in place of `B` and `T`/`S`.

The layer holds the config and the four `EinsumDense` projections (same
names, shapes and order as tf.keras, so weights and checkpoints load both
ways) and calls `tf_mha.ops.dot_product_attention` from `_compute_attention`,
the documented override point. tf.keras' other protected methods, for
subclasses written against it, are in `_keras_hooks`.
"""

import math

import tensorflow as tf
import tf_keras

from tf_mha import ops
from tf_mha.layers import _cache
from tf_mha.layers import _config
from tf_mha.layers import _dropout
from tf_mha.layers import _inputs
from tf_mha.layers import _keras_hooks
from tf_mha.layers import _layer_checks
from tf_mha.layers import _projections
from tf_mha.layers import _rotary
from tf_mha.layers import _subclassing
from tf_mha.ops import checks
from tf_mha.ops import equations
from tf_mha.ops import masks as masks_lib

_layers = tf_keras.layers


@tf_keras.utils.register_keras_serializable(package="tf_mha")
class MultiHeadAttention(_cache.CachedCall, _keras_hooks.KerasHooks,
                         _layers.Layer):
  """Multi-head attention (Vaswani et al., 2017), API of tf.keras and Keras 3.

  Projects `query`, `key` and `value` to `num_heads` heads, runs scaled
  dot-product attention per head, and projects the concatenated heads back
  to the query's last dimension (or `output_shape`).

  Examples:
    >>> layer = MultiHeadAttention(num_heads=2, key_dim=4)
    >>> x = tf.ones([3, 5, 8])
    >>> [t.shape.as_list() for t in layer(x, x, return_attention_scores=True)]
    [[3, 5, 8], [3, 2, 5, 5]]

  Args:
    num_heads: number of attention heads `N`.
    key_dim: size `H` of each head for query and key.
    value_dim: size `V` of each head for value; defaults to `key_dim`.
    dropout: dropout rate on the attention probabilities, in `[0, 1)`.
    use_bias: whether the projections have biases.
    output_shape: int or tuple, the trailing output shape; defaults to the
      query's last dimension.
    attention_axes: axes attention runs over (ints, or one int); `None`
      means every axis but batch, heads and features.
    flash_attention: `True` always uses the blockwise exact path (an error
      where it cannot apply, e.g. with `return_attention_scores`), `False`
      never does, `None` uses it when it applies and is faster.
    kernel_initializer: with `bias_initializer`, `kernel_regularizer`,
      `bias_regularizer`, `activity_regularizer`, `kernel_constraint` and
      `bias_constraint`, passed to the projections, as in tf.keras.
    seed: int seed for the attention dropout.
    use_gate: Keras 3's gated attention: a sigmoid projection of the query
      (`gate`, `[B, T, N, V]`, built between `key` and `value` as in Keras 3)
      multiplies the attention output before the output projection.
    sliding_window: `None`, or a positive int `W` (Keras 3's argument): a
      query attends only to keys within `W - 1` positions of its own
      (`|t - s| < W`, a symmetric band over one attention axis); with
      `use_causal_mask=True` the causal sliding window of Mistral. Applied
      in the op, which skips the keys outside the band (no `[T, S]` mask).
    softmax_robust_masking: accepted for tf.keras compatibility (masking
      is always robust here).
    rope_max_wavelength, rope_scaling_factor: rotary position embeddings
      on queries and keys (`tf_mha.rotary_embedding`); `None`: none.
    **kwargs: base `Layer` arguments (`name`, `dtype`, ...).

  Call arguments:
    query: `[B, T, D]` (or N-D).
    value: `[B, S, D_v]`.
    key: `[B, S, D_k]`; defaults to `value`.
    attention_mask: boolean `[B, T, S]` (broadcastable), `True` attends.
    return_attention_scores: also return the probabilities `[B, N, T, S]`.
    training: whether dropout applies.
    use_causal_mask: query `t` attends only to keys `s <= t`.
    query_mask: `[B, T]`, defaults to the query's Keras mask.
    value_mask: `[B, S]`, defaults to the value's Keras mask.
    key_mask: `[B, S]`, defaults to the key's Keras mask.
    cache: a key/value cache `[B, 2, S_max, K, H]` (keys, then values,
      projected; KerasHub's layout) or a pair of `[B, S_max, K, H]` (LiteRT-LM's),
      for `[B, T, D]` inputs; see `tf_mha.layers._cache.CachedCall`. The call
      then returns `(output, cache)`, or `(output, scores, cache)`.
    cache_update_index: with `cache`, where the `T` new tokens' keys and
      values are written (`[i, i + T)`); query `i + t` attends to cache
      positions `<= i + t`. `None`: the cache is read as it is.
    segment_ids: int `[B, T]`, packed rows (`[B, T, D]` inputs): query `t`
      attends to key `s` only when their ids are equal and not 0 (padding);
      applied in the op, which skips the blocks between examples
      (`tf_mha.dot_product_attention`). Combines with every other mask.
    key_segment_ids: int `[B, S]`, the keys' ids when they are not the
      queries' sequence (cross-attention, a cache's slots); defaults to
      `segment_ids`.
    positions: with rotary embeddings, the query tokens' positions `[B, T]`
      (default: see `tf_mha.layers._rotary`).

  Returns:
    The attention output `[B, T, D]` (or `output_shape`), and the scores if
    `return_attention_scores`. A query row with every key masked attends
    uniformly to all keys (its output is the projected mean of the values)
    and stays finite, as in tf.keras.

  Raises:
    ValueError / TypeError: for bad constructor arguments, and at the first
      call for ranks, lengths or masks that do not fit.
  """

  def __init__(self,
               num_heads,
               key_dim,
               value_dim=None,
               dropout=0.0,
               use_bias=True,
               output_shape=None,
               attention_axes=None,
               flash_attention=None,
               kernel_initializer="glorot_uniform",
               bias_initializer="zeros",
               kernel_regularizer=None,
               bias_regularizer=None,
               activity_regularizer=None,
               kernel_constraint=None,
               bias_constraint=None,
               seed=None,
               softmax_robust_masking=False,
               sliding_window=None,
               use_gate=False,
               rope_max_wavelength=None,
               rope_scaling_factor=1.0,
               **kwargs):
    super().__init__(**kwargs)
    self.supports_masking = True
    self._num_heads = checks.positive_int("num_heads", num_heads)
    # Key/value heads: `num_heads` here; fewer in `GroupedQueryAttention`.
    self._num_key_value_heads = self._num_heads
    self._key_dim = checks.positive_int("key_dim", key_dim)
    self._value_dim = (self._key_dim if value_dim is None else
                       checks.positive_int("value_dim", value_dim))
    self._dropout = checks.rate("dropout", dropout)
    self._use_bias = bool(use_bias)
    self._output_shape = _layer_checks.output_shape(output_shape)
    self._attention_axes = _layer_checks.attention_axes(attention_axes)
    self._flash_attention = checks.tri_state("flash_attention",
                                              flash_attention)
    self._dropout_seed = checks.seed(seed)
    self._sliding_window = (None if sliding_window is None else
                            checks.positive_int("sliding_window", sliding_window))
    self._use_gate = bool(use_gate)
    self._rope = _rotary.config(rope_max_wavelength, rope_scaling_factor)
    self._softmax_robust_masking = softmax_robust_masking
    self._kernel_initializer = tf_keras.initializers.get(kernel_initializer)
    self._bias_initializer = tf_keras.initializers.get(bias_initializer)
    self._kernel_regularizer = tf_keras.regularizers.get(kernel_regularizer)
    self._bias_regularizer = tf_keras.regularizers.get(bias_regularizer)
    self._activity_regularizer = tf_keras.regularizers.get(activity_regularizer)
    self._kernel_constraint = tf_keras.constraints.get(kernel_constraint)
    self._bias_constraint = tf_keras.constraints.get(bias_constraint)
    self._built_from_signature = False
    self._query_shape = self._key_shape = self._value_shape = None
    self._dropout_seeds = _dropout.SeedStream(seed)

  # Keras 3's read-only properties. Not `property`s: tf.keras has none, and
  # a subclass written for it may assign these names (Model Garden sets
  # `self.output_dense`); its assignment then shadows the alias.
  num_heads = _subclassing.Alias("_num_heads")
  key_dim = _subclassing.Alias("_key_dim")
  value_dim = _subclassing.Alias("_value_dim")
  dropout = _subclassing.Alias("_dropout")
  use_bias = _subclassing.Alias("_use_bias")
  output_shape = _subclassing.Alias("_output_shape")
  attention_axes = _subclassing.Alias("_attention_axes")
  flash_attention = _subclassing.Alias("_flash_attention")
  seed = _subclassing.Alias("_dropout_seed")
  sliding_window = _subclassing.Alias("_sliding_window")
  use_gate = _subclassing.Alias("_use_gate")
  query_dense = _subclassing.Alias("_query_dense")
  key_dense = _subclassing.Alias("_key_dense")
  value_dense = _subclassing.Alias("_value_dense")
  output_dense = _subclassing.Alias("_output_dense")

  def get_config(self):
    return {**super().get_config(), **_config.layer_config(self)}

  @classmethod
  def from_config(cls, config):
    return _config.from_config(cls, config)

  def _build_from_signature(self, query, value, key=None):
    """Creates the projections from the shapes (or tensors) of the inputs."""
    shapes = (_layer_checks.as_shape(query), _layer_checks.as_shape(value),
              _layer_checks.as_shape(value if key is None else key))
    # Checks first: a refused call leaves the layer unbuilt. A subclass that
    # takes over the computation gets tf.keras' leniency (Model Garden's
    # MultiChannelAttention builds with a rank-4 value).
    if not _subclassing.overrides_any(self, _subclassing.COMPUTING_HOOKS):
      _layer_checks.check_signature(*shapes)
    rank = shapes[0].rank
    axes = equations.normalize_attention_axes(self._attention_axes, rank)
    if self._sliding_window is not None and len(axes) != 1:
      raise ValueError(
          "`sliding_window` needs a single attention axis. Received: "
          f"attention_axes={axes}, sliding_window={self._sliding_window}")
    self._built_from_signature = True
    self._query_shape, self._value_shape, self._key_shape = shapes
    self._attention_axes = axes
    with tf.init_scope():
      self._query_dense = self._projection(rank, self._key_dim, "query")
      self._key_dense = self._projection(self._key_shape.rank, self._key_dim,
                                         "key", heads=self._num_key_value_heads)
      if self._use_gate:
        self._gate_dense = self._projection(rank, self._value_dim, "gate",
                                            activation="sigmoid")
      self._value_dense = self._projection(self._value_shape.rank,
                                           self._value_dim, "value",
                                           heads=self._num_key_value_heads)
      self._build_attention(rank + 1)
      self._output_dense = self._make_output_dense(
          rank - 1, self._get_common_kwargs_for_sublayer(),
          "attention_output")
      # Variables now, in tf.keras' order, so that weights can be set
      # before the first call (from_config, load_weights) and the matmul
      # projections can read the kernels.
      heads = self._query_shape[:-1].concatenate([self._num_heads])
      gate = ((self._gate_dense, self._query_shape),) if self._use_gate else ()
      for dense, shape in ((self._query_dense, self._query_shape),
                           (self._key_dense, self._key_shape), *gate,
                           (self._value_dense, self._value_shape),
                           (self._output_dense,
                            heads.concatenate([self._value_dim]))):
        # An absolute scope: variable names read "<layer>/<query>/kernel",
        # as when tf.keras builds them inside the first call.
        with tf.name_scope(f"{self.name}/{dense.name}/"):
          dense.build(shape)

  def _projection(self, input_rank, head_size, name, activation=None,
                  heads=None):
    return _projections.input_projection(
        input_rank, heads or self._num_heads, head_size, name=name,
        use_bias=self._use_bias, activation=activation,
        **self._get_common_kwargs_for_sublayer())

  def build(self, query_shape, value_shape=None, key_shape=None):
    """Keras 3's `build(query_shape, value_shape, key_shape=None)`: creates
    the variables from shapes. Keras' own call of `build(query_shape)` leaves
    them to the first call, which sees every input."""
    if value_shape is not None and not self._built_from_signature:
      self._build_from_signature(query_shape, value_shape, key_shape)
    super().build(query_shape)

  def _compute_attention(self, query, key, value, attention_mask=None,
                         training=None, return_attention_scores=False,
                         use_causal_mask=False, sliding_window=None,
                         segment_ids=None):
    """Attention over projected heads; the documented override point.

    Args:
      query: projected query `[B, T, N, H]` (N-D: input layout + `[N, H]`).
      key: projected key `[B, S, N, H]`.
      value: projected value `[B, S, N, V]`.
      attention_mask: boolean `[B, T, S]` (or N-D), `True` attends.
      training: whether dropout applies.
      return_attention_scores: whether the scores are needed (tf_mha only).
      use_causal_mask: also apply the causal mask, without materialising it
        (tf_mha only; tf.keras puts it in `attention_mask`).
      sliding_window: `None`, or also apply this band, without materialising
        it (tf_mha only; Keras 3 puts it in `attention_mask`).
      segment_ids: `None`, or the `(query ids [B, T], key ids [B, S])` of
        packed rows (tf_mha only): applied in the op, which skips the blocks
        between segments.

    Returns:
      `(attention_output [B, T, N, V], attention_scores [B, N, T, S] or None)`.
    """
    if _subclassing.state_changed(self):
      # A subclass's own equations, softmax or tensor layout (Model Garden's
      # multi-query layer calls this with its rank-5 queries): tf.keras'
      # recipe on its state, with the masks the op would have applied.
      attention_mask = masks_lib.combine_masks(attention_mask, self._op_only_mask(
          query, key, use_causal_mask, sliding_window))
      if segment_ids is not None:
        attention_mask = masks_lib.combine_masks(
            attention_mask, _layer_checks.segment_mask(segment_ids))
      return self._einsum_attention(query, key, value, attention_mask, training)
    if return_attention_scores and self._flash_attention:
      raise ValueError(
          "Returning attention scores is not supported when flash "
          "attention is enabled. Please disable flash attention to access "
          "attention scores (construct the layer with flash_attention=None "
          "or False).")
    plan = self._axes_plan
    mask = None
    if attention_mask is not None:
      mask = plan.mask_to_flat(masks_lib.to_bool_mask(attention_mask), query, key)
    flat = (plan.to_flat(query), plan.to_flat(key), plan.to_flat(value))

    def attend(rate):
      return ops.dot_product_attention(
          *flat,
          mask=mask,
          is_causal=use_causal_mask,
          sliding_window=sliding_window,
          scale=1.0 / math.sqrt(float(self._key_dim)),
          dropout_rate=rate,
          dropout_seed=self._dropout_seeds.next() if rate else None,
          return_scores=return_attention_scores,
          flash_attention=self._flash_attention,
          segment_ids=None if segment_ids is None else segment_ids[0],
          key_segment_ids=None if segment_ids is None else segment_ids[1])

    result = _dropout.attend_with_rate(self._dropout, training, attend)
    out, scores = result if return_attention_scores else (result, None)
    out = plan.from_flat(out, query)
    if scores is not None:
      scores = plan.scores_from_flat(scores, query, key)
    return out, scores

  def call(self,
           query,
           value,
           key=None,
           attention_mask=None,
           return_attention_scores=False,
           training=None,
           use_causal_mask=False,
           query_mask=None,
           value_mask=None,
           key_mask=None,
           cache=None,
           cache_update_index=None,
           segment_ids=None,
           key_segment_ids=None,
           positions=None):
    ids = _layer_checks.segment_ids(self, query, segment_ids, key_segment_ids)
    if cache is not None or cache_update_index is not None:
      return self._cached_call(
          query, value, key, cache, cache_update_index,
          attention_mask=attention_mask, query_mask=query_mask,
          value_mask=value_mask, key_mask=key_mask, training=training,
          return_attention_scores=return_attention_scores,
          use_causal_mask=use_causal_mask, segment_ids=ids, positions=positions)
    if key is None:
      key = value
    query_mask = _inputs.keras_mask(query, query_mask)
    value_mask = _inputs.keras_mask(value, value_mask)
    key_mask = None if key is value else _inputs.keras_mask(key, key_mask)
    query, value, key, ragged_lengths = _inputs.dense_inputs(query, value, key)
    if not self._built_from_signature:
      self._build_from_signature(query=query, value=value, key=key)
    # The op path: the op applies the causal and sliding-window masks and
    # skips the keys they hide, instead of materialising `[T, S]` masks.
    # Subclasses that take over the attention math, or how those masks are
    # made, get them inside `attention_mask`, and tf.keras' leniency: the
    # checks below guard only what the op consumes.
    op_path = not _subclassing.takes_over(self)
    op_masks = op_path and not _subclassing.overrides_any(self, _subclassing.MASK_HOOKS)
    if op_path:
      _layer_checks.check_call(self, query, value, key)
      if ragged_lengths is None:
        _layer_checks.check_masks(self._attention_axes, query, value, key,
                            attention_mask, query_mask=query_mask,
                            value_mask=value_mask, key_mask=key_mask)
    masks = dict(attention_mask=attention_mask, query_mask=query_mask,
                 value_mask=value_mask, key_mask=key_mask)
    if op_masks:
      attention_mask = self._combined_mask(query, value, key, **masks)
    else:
      attention_mask = self._compute_attention_mask(
          query, value, key=key, use_causal_mask=use_causal_mask, **masks)
    if ids is not None and not op_path:  # tf.keras' contract: one mask
      attention_mask = masks_lib.combine_masks(attention_mask,
                                               _layer_checks.segment_mask(ids))
    gate = self._gate_dense(query) if self._use_gate else None  # [B, T, N, V]
    query, key, value = self._project(query, key, value, _rotary.call_positions(
        self, query, key, positions, ids))
    if op_path:
      output, scores = self._compute_attention(
          query, key, value, attention_mask, training,
          return_attention_scores=return_attention_scores,
          use_causal_mask=use_causal_mask and op_masks,
          sliding_window=self._sliding_window if op_masks else None,
          segment_ids=ids)
    else:
      output, scores = self._compute_attention(query, key, value,
                                               attention_mask, training)
    if gate is not None:
      output = output * gate
    output = _projections.apply(self._output_dense, output, 2,
                                self._compute_dtype_object)
    if ragged_lengths is not None:
      output = tf.RaggedTensor.from_tensor(output, lengths=ragged_lengths)
    return (output, scores) if return_attention_scores else output

  def _project(self, query, key, value, positions=(None, None)):
    """The three input projections (`_projections.apply`; three matmuls,
    README "Benchmark"), queries and keys rotated by `positions` when the
    layer has rotary embeddings (`_rotary`)."""
    q, k, v = (_projections.apply(dense, x, 1, self._compute_dtype_object)
               for dense, x in ((self._query_dense, query),
                                (self._key_dense, key), (self._value_dense, value)))
    return (_rotary.rotate(self, q, positions[0]),
            _rotary.rotate(self, k, positions[1]), v)

  def compute_output_shape(self, query_shape, value_shape, key_shape=None):
    return _layer_checks.output_shape_of_call(self._output_shape, query_shape,
                                              value_shape, key_shape)


