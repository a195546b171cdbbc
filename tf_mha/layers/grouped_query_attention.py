"""`GroupedQueryAttention`: Keras 3's `keras.layers.GroupQueryAttention` for
tf_keras, on `tf_mha.dot_product_attention`'s grouped keys and values.

Shapes: `B` batch, `T` query length, `S` key/value length, `N` query heads,
`K` key/value heads (`K` divides `N`), `H` head size, `D` model size.

Keras 3 repeats the keys and values to `N` heads before attending; here the
`N / K` query heads that share a key head attend to it directly, so keys,
values and a cache are `N / K` times smaller in memory and traffic.
"""

import tf_keras

from tf_mha.layers import _layer_checks
from tf_mha.layers import _rotary
from tf_mha.layers import _subclassing
from tf_mha.layers import multi_head_attention
from tf_mha.ops import checks

# Keras 3's `get_config` entries besides the base layer's, as attributes.
_CONFIG = (("head_dim", "_key_dim"), ("num_query_heads", "_num_heads"),
           ("num_key_value_heads", "_num_key_value_heads"),
           ("use_bias", "_use_bias"), ("use_gate", "_use_gate"),
           ("sliding_window", "_sliding_window"), ("dropout", "_dropout"),
           ("seed", "_dropout_seed"))
_SERIALIZED = (("kernel_initializer", tf_keras.initializers),
               ("bias_initializer", tf_keras.initializers),
               ("kernel_regularizer", tf_keras.regularizers),
               ("bias_regularizer", tf_keras.regularizers),
               ("activity_regularizer", tf_keras.regularizers),
               ("kernel_constraint", tf_keras.constraints),
               ("bias_constraint", tf_keras.constraints))


@tf_keras.utils.register_keras_serializable(package="tf_mha")
class GroupedQueryAttention(multi_head_attention.MultiHeadAttention):
  """Grouped-query attention (Ainslie et al., 2023), API of Keras 3's layer.

  Query head `n` attends with key/value head `n // (N / K)`, as in Keras 3;
  `num_key_value_heads=1` is multi-query attention. Weights have Keras 3's
  layout and order: query `(D, N, H)`, key and value `(D, K, H)`, gate
  `(D, N, H)` (between key and value), output `(N, H, D)`, so
  `set_weights(keras_layer.get_weights())` gives Keras 3's outputs.

  Examples:
    >>> layer = GroupedQueryAttention(head_dim=4, num_query_heads=4,
    ...                               num_key_value_heads=2)
    >>> x = tf.ones([3, 5, 8])
    >>> layer(x, x, use_causal_mask=True).shape
    TensorShape([3, 5, 8])

  Args:
    head_dim: size `H` of each head.
    num_query_heads: number of query heads `N`.
    num_key_value_heads: number of key and value heads `K`, dividing `N`.
    dropout: dropout rate on the attention probabilities.
    use_bias: whether the projections have biases.
    sliding_window: `None`, or a positive int: keys within `W - 1`
      positions (with `use_causal_mask`, Mistral's causal window).
    flash_attention: as `tf_mha.MultiHeadAttention`'s (works on TensorFlow,
      where Keras 3 refuses it).
    kernel_initializer: with `bias_initializer`, `kernel_regularizer`,
      `bias_regularizer`, `activity_regularizer`, `kernel_constraint` and
      `bias_constraint`, for the projections.
    use_gate: a sigmoid gate on the attention output, as Keras 3's.
    seed: int seed for the attention dropout.
    rope_max_wavelength, rope_scaling_factor: rotary position embeddings on
      the queries and keys, before a cache write (KerasHub's Llama
      attention; `tf_mha.rotary_embedding`); `None`: none.
    rope_llama3_scaling: None, or Llama 3.1's rotary frequency scaling
      `(factor, low_freq_factor, high_freq_factor, pretraining_length)`
      (`tf_mha.rotary_embedding`'s `llama3_scaling`).
    **kwargs: base `Layer` arguments.

  Call arguments:
    query: `[B, T, D]`.
    value: `[B, S, D]`.
    key: `[B, S, D]`; defaults to `value`.
    query_mask, value_mask, key_mask: `[B, T]`, `[B, S]`, `[B, S]`; default
      to the inputs' Keras masks.
    attention_mask: boolean `[B, T, S]`, `True` attends.
    return_attention_scores: also return the probabilities `[B, N, T, S]`.
    training: whether dropout applies.
    use_causal_mask: query `t` attends only to keys `s <= t`.
    cache, cache_update_index: a key/value cache `[B, 2, S_max, K, H]` (or a
      pair of `[B, S_max, K, H]`), as `tf_mha.MultiHeadAttention`'s.
    segment_ids, key_segment_ids: packed rows, as `tf_mha.MultiHeadAttention`'s.
    positions: with rotary embeddings, the query tokens' positions `[B, T]`
      (with a cache also the written keys'); default `cache_update_index +
      arange(T)`, or each token's position in its segment.

  Raises:
    ValueError: `num_key_value_heads` does not divide `num_query_heads`, or
      another argument is not valid (named in the message).
  """

  def __init__(self,
               head_dim,
               num_query_heads,
               num_key_value_heads,
               dropout=0.0,
               use_bias=True,
               sliding_window=None,
               flash_attention=None,
               kernel_initializer="glorot_uniform",
               bias_initializer="zeros",
               kernel_regularizer=None,
               bias_regularizer=None,
               activity_regularizer=None,
               kernel_constraint=None,
               bias_constraint=None,
               use_gate=False,
               seed=None,
               rope_max_wavelength=None,
               rope_scaling_factor=1.0,
               rope_llama3_scaling=None,
               **kwargs):
    num_query_heads = checks.positive_int("num_query_heads", num_query_heads)
    num_key_value_heads = checks.positive_int("num_key_value_heads",
                                               num_key_value_heads)
    if num_query_heads % num_key_value_heads:
      raise ValueError(
          "`num_query_heads` must be divisible by `num_key_value_heads`. "
          f"Received: num_query_heads={num_query_heads}, "
          f"num_key_value_heads={num_key_value_heads}")
    head_dim = checks.positive_int("head_dim", head_dim)
    super().__init__(
        num_heads=num_query_heads, key_dim=head_dim, dropout=dropout,
        use_bias=use_bias, attention_axes=None, flash_attention=flash_attention,
        kernel_initializer=kernel_initializer, bias_initializer=bias_initializer,
        kernel_regularizer=kernel_regularizer, bias_regularizer=bias_regularizer,
        activity_regularizer=activity_regularizer,
        kernel_constraint=kernel_constraint, bias_constraint=bias_constraint,
        seed=seed, sliding_window=sliding_window, use_gate=use_gate,
        rope_max_wavelength=rope_max_wavelength,
        rope_scaling_factor=rope_scaling_factor, **kwargs)
    self._num_key_value_heads = num_key_value_heads
    self._rope = _rotary.config(rope_max_wavelength, rope_scaling_factor,
                                rope_llama3_scaling)

  head_dim = _subclassing.Alias("_key_dim")
  num_query_heads = _subclassing.Alias("_num_heads")
  num_key_value_heads = _subclassing.Alias("_num_key_value_heads")

  def get_config(self):
    config = tf_keras.layers.Layer.get_config(self)
    config.update({name: getattr(self, attr) for name, attr in _CONFIG})
    config.update({name: module.serialize(getattr(self, "_" + name))
                   for name, module in _SERIALIZED})
    config["flash_attention"] = self._flash_attention
    config.update(_rotary.config_entries(self))
    # As `MultiHeadAttention`'s: `from_config` builds the variables, so
    # that saved weights load before the first call.
    for name in ("query_shape", "key_shape", "value_shape"):
      config[name] = _layer_checks.shape_list(getattr(self, "_" + name))
    return config

  def call(self,
           query,
           value,
           key=None,
           query_mask=None,
           value_mask=None,
           key_mask=None,
           attention_mask=None,
           return_attention_scores=False,
           training=None,
           use_causal_mask=False,
           cache=None,
           cache_update_index=None,
           segment_ids=None,
           key_segment_ids=None,
           positions=None):
    return super().call(
        query, value, key=key, attention_mask=attention_mask,
        return_attention_scores=return_attention_scores, training=training,
        use_causal_mask=use_causal_mask, query_mask=query_mask,
        value_mask=value_mask, key_mask=key_mask, cache=cache,
        cache_update_index=cache_update_index, segment_ids=segment_ids,
        key_segment_ids=key_segment_ids, positions=positions)

  def compute_output_shape(self, query_shape, value_shape, key_shape=None):
    return super().compute_output_shape(query_shape, value_shape, key_shape)
