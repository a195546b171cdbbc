"""The decoder-only Transformer of KerasHub's Llama, Mistral and Qwen2, and
of the generator demo (`demo`), on tf_mha's layers.

Shapes: `B` batch, `T` tokens, `L` new tokens of a step, `S` cache slots
(`max_length`), `N` query heads, `K` key/value heads, `H` head size, `D`
model size, `F` feed-forward size, `V` vocabulary.

One block serves the four families (`DecoderConfig` says how they differ):
RMSNorm in float32, `tf_mha.GroupedQueryAttention` (causal, rotary on
queries and keys, grouped keys and values never repeated, a sliding window
inside the op, whose blockwise path then visits only the keys in the
window), RMSNorm, SwiGLU; a final RMSNorm and an output tied to the
token embedding or its own (the demo: LayerNorm and a GELU feed-forward net
with biases). The model offers the step interface
(`tf_mha.export.decoder_signatures`), so it exports for TF Serving
(`tf_mha.export.decoder_serving`) and LiteRT-LM.
"""

import dataclasses
from typing import Optional, Tuple

import tensorflow as tf
import tf_keras

import tf_mha
from tf_mha.ops import masks as ops_masks

layers = tf_keras.layers


def through_caches(blocks, x, positions, cache_index, caches, max_length):
  """A decoder step's blocks: `x` `[B, L, D]` through each block with its
  cache; returns `(x, caches)` with the new keys and values written.

  Each block is called as `block(x, cache=, cache_index=, value_mask=,
  positions=) -> (x, cache)`. Row `b`'s sequence starts at slot
  `cache_index - positions[b, 0]`; the slots before it (left padding) are
  masked out.
  """
  cache_index = tf.cast(cache_index, tf.int32)
  start = cache_index - tf.cast(positions[:, :1], tf.int32)  # [B, 1]
  in_sequence = tf.range(max_length)[None] >= start  # [B, S]
  updated = []
  for block, cache in zip(blocks, caches):
    x, cache = block(x, cache=cache, cache_index=cache_index,
                     value_mask=in_sequence, positions=positions)
    updated.append(cache)
  return x, updated


@dataclasses.dataclass(frozen=True)
class DecoderSize:
  """The sizes of every decoder family, named as KerasHub's backbones name
  them."""
  vocabulary_size: int  # V
  num_layers: int
  hidden_dim: int  # D
  num_query_heads: int  # N
  num_key_value_heads: int  # K
  head_dim: int  # H
  intermediate_dim: int  # F


@dataclasses.dataclass(frozen=True)
class DecoderConfig(DecoderSize):
  """What a Llama, Mistral, Qwen2 or demo decoder is made of."""
  family: str  # "llama", "mistral", "qwen2" or "demo"
  layer_norm_epsilon: float = 1e-6
  rope_max_wavelength: float = 10000.0
  rope_scaling_factor: float = 1.0
  rope_llama3_scaling: Optional[Tuple[float, float, float, float]] = None
  sliding_window: Optional[int] = None  # keys within `window - 1` positions
  attention_bias: bool = False  # biases on the query, key and value
  tie_word_embeddings: bool = False
  norm: str = "rms"  # or "layer": LayerNorm with a bias
  feedforward: str = "swiglu"  # or "gelu": Dense + GELU, Dense, with biases
  embeddings_stddev: Optional[float] = None  # N(0, stddev^2); None: Keras'


def norm_layer(config, name):
  """A block's norm as `config.norm` says: RMSNorm or LayerNorm."""
  if config.norm == "layer":
    return layers.LayerNormalization(epsilon=config.layer_norm_epsilon, name=name)
  return RMSNorm(config.layer_norm_epsilon, name=name)


class RMSNorm(layers.Layer):
  """`x / rms(x) * scale`, computed in float32 (KerasHub's Llama norm), or
  float64 for float64 `x`."""

  def __init__(self, epsilon=1e-6, **kwargs):
    super().__init__(**kwargs)
    self.epsilon = epsilon

  def build(self, input_shape):
    self.scale = self.add_weight("scale", shape=[input_shape[-1]],
                                 initializer="ones")
    super().build(input_shape)

  def gain(self):
    """What the normalised `x` is multiplied by."""
    return self.scale

  def call(self, x):
    """`x * gain / rms(x)`, in float32 at least (16-bit `x` loses the sum of
    squares), cast back to `x`'s dtype. The gain multiplies `x` before
    `1 / rms(x)` does: a multiply by a constant right before the tied output
    matmul is what the TFLite converter folds into that matmul's weights,
    storing the embedding table a second time (Gemma 3 270M's file: 671 MB
    more in float32)."""
    wide = tf.cast(x, ops_masks.softmax_dtype(x.dtype))
    inverse = tf.math.rsqrt(tf.reduce_mean(tf.square(wide), -1, keepdims=True) +
                            self.epsilon)
    return tf.cast(wide * tf.cast(self.gain(), wide.dtype) * inverse, x.dtype)


class CausalLM(tf_keras.Model):
  """Token ids `[B, T]` -> next-token logits `[B, T, V]`, and the step
  interface over caches of `max_length` slots.

  Examples:
    >>> config = DecoderConfig(family="llama", vocabulary_size=11,
    ...                        num_layers=1, hidden_dim=8, num_query_heads=2,
    ...                        num_key_value_heads=1, head_dim=4,
    ...                        intermediate_dim=16)
    >>> CausalLM(config, max_length=8)(tf.constant([[2, 5, 6]])).shape.as_list()
    [1, 3, 11]
  """

  config_class = DecoderConfig  # what `from_config` rebuilds

  def __init__(self, config, max_length, **kwargs):
    super().__init__(**kwargs)
    self.config, self.max_length = config, int(max_length)
    self.num_layers = config.num_layers
    stddev = getattr(config, "embeddings_stddev", None)
    self.embed = layers.Embedding(
        config.vocabulary_size, config.hidden_dim, name="token_embedding",
        embeddings_initializer=("uniform" if stddev is None else
                                tf_keras.initializers.RandomNormal(stddev=stddev)))
    self.blocks = [self._block(config, i) for i in range(config.num_layers)]
    self.final_norm = self._final_norm(config)
    self.embed.build([None])
    for block in self.blocks:
      block.build([None, None, config.hidden_dim])
    self.final_norm.build([None, None, config.hidden_dim])
    if not config.tie_word_embeddings:
      self.output_kernel = self.add_weight(
          "output_kernel", shape=[config.hidden_dim, config.vocabulary_size])

  # What a family changes (`gemma3.Gemma3CausalLM`): its block, its norm,
  # how ids become vectors and vectors logits.
  def _block(self, config, index):
    return _Block(config, name=f"block_{index}")

  def _final_norm(self, config):
    return norm_layer(config, "final_norm")

  def _embed(self, token_ids):
    """The token embeddings `[B, T, D]`, looked up with one axis of ids: in
    TFLite a GATHER of `[B * T]` ids, which `tf_mha.export.quantized` turns
    into the EMBEDDING_LOOKUP that ai-edge-quantizer quantizes."""
    token_ids = tf.convert_to_tensor(token_ids)
    flat = self.embed(tf.reshape(token_ids, [-1]))
    x = tf.reshape(flat, tf.concat([tf.shape(token_ids), tf.shape(flat)[-1:]], 0))
    x.set_shape(token_ids.shape.concatenate(flat.shape[-1:]))
    return x

  def cache_shape(self, batch=None):
    """One layer's cache: `[B, 2, S, K, H]`."""
    return [batch, 2, self.max_length, self.config.num_key_value_heads,
            self.config.head_dim]

  def empty_caches(self, batch):
    """Zero caches, one per layer."""
    return [tf.zeros(self.cache_shape(batch), self.dtype) for _ in self.blocks]

  def call(self, token_ids):
    x = self._embed(tf.convert_to_tensor(token_ids))
    for block in self.blocks:  # rotary positions: arange(T)
      x = block(x)
    return self._logits(x)

  def step(self, token_ids, positions, cache_index, caches):
    """Runs `L` new tokens through the caches.

    Args:
      token_ids: `[B, L]` int32.
      positions: `[B, L]` int32, each token's position in its row's sequence
        (`cache_index + arange(L)` when nothing is padded); row `b`'s
        sequence starts at slot `cache_index - positions[b, 0]` and the
        slots before it (left padding) are masked out.
      cache_index: int32 scalar, the slot of the first new token.
      caches: one per layer, `[B, 2, S, K, H]` or a pair of `[B, S, K, H]`.

    Returns:
      `(logits [B, L, V], caches)`, the caches with the new keys and values.
    """
    x, updated = through_caches(self.blocks, self._embed(token_ids), positions,
                                cache_index, caches, self.max_length)
    return self._logits(x), updated

  def _logits(self, x):
    x = self.final_norm(x)
    if self.config.tie_word_embeddings:
      return tf.einsum("btd,vd->btv", x, self.embed.embeddings)
    return tf.einsum("btd,dv->btv", x, self.output_kernel)

  def get_config(self):
    return {"config": dataclasses.asdict(self.config),
            "max_length": self.max_length, "name": self.name}

  @classmethod
  def from_config(cls, config):
    decoder = dict(config.pop("config"))
    if decoder.get("rope_llama3_scaling") is not None:
      decoder["rope_llama3_scaling"] = tuple(decoder["rope_llama3_scaling"])
    return cls(cls.config_class(**decoder), **config)


class _Block(layers.Layer):
  """Pre-norm block: causal grouped-query self-attention, then SwiGLU (or
  the demo's GELU net)."""

  def __init__(self, config, **kwargs):
    super().__init__(**kwargs)
    self.attention_norm = norm_layer(config, "attention_norm")
    self.attention = tf_mha.GroupedQueryAttention(
        head_dim=config.head_dim, num_query_heads=config.num_query_heads,
        num_key_value_heads=config.num_key_value_heads,
        use_bias=config.attention_bias, sliding_window=config.sliding_window,
        # With a window, the blockwise path skips the keys outside it
        # (O(window) a token); without one, the plain path (no control flow,
        # which XLA and TFLite run fastest at these cache sizes).
        flash_attention=None if config.sliding_window else False,
        rope_max_wavelength=config.rope_max_wavelength,
        rope_scaling_factor=config.rope_scaling_factor,
        rope_llama3_scaling=config.rope_llama3_scaling, name="attention")
    self.feedforward_norm = norm_layer(config, "feedforward_norm")
    gelu = config.feedforward == "gelu"
    dense = lambda size, name, **kw: layers.Dense(size, use_bias=gelu, name=name, **kw)
    self.gate = None if gelu else dense(config.intermediate_dim, "gate")
    self.up = dense(config.intermediate_dim, "up", activation="gelu" if gelu else None)
    self.down = dense(config.hidden_dim, "down")

  def build(self, input_shape):
    # Called by `CausalLM` once every block exists, in block order: the
    # demo's weights then draw from the seed stream as its first decoder's
    # did (built at its first call), so the trained demo is the same.
    model = input_shape[-1]
    shape = [None, None, model]
    self.attention._build_from_signature(shape, shape)
    for layer, size in ((self.attention_norm, model),
                        (self.feedforward_norm, model),
                        (self.gate, model), (self.up, model),
                        (self.down, self.up.units)):
      if layer is not None:
        layer.build([None, None, size])
    super().build(input_shape)

  def call(self, x, cache=None, cache_index=None, value_mask=None,
           positions=None):
    h = self.attention_norm(x)
    if cache is None:
      h = self.attention(h, h, use_causal_mask=True, positions=positions)
    else:
      h, cache = self.attention(h, h, cache=cache, cache_update_index=cache_index,
                                value_mask=value_mask, positions=positions)
    x = x + h
    h = self.feedforward_norm(x)
    h = self.up(h) if self.gate is None else tf.nn.silu(self.gate(h)) * self.up(h)
    x = x + self.down(h)
    return x if cache is None else (x, cache)
