"""The generator demo's model: a small decoder-only Transformer.

Shapes: `B` batch, `T` tokens, `L` new tokens of a step, `S` cache slots
(`max_length`), `K` key/value heads, `H` head size, `D` model size, `V`
vocabulary.

Pre-norm blocks of `tf_mha.GroupedQueryAttention` (causal, with rotary
position embeddings on queries and keys, as Llama's) and a GELU
feed-forward net, and an output layer tied to the token embedding. Attention is not blockwise by default
(`flash_attention=False`): the caches are short, and the plain path has no
control flow, which TFLite runs best. The same weights run two ways:
  * `call(token_ids)`: logits for every position of whole sequences
    (training, and the uncached baseline that recomputes the prefix);
  * `step(token_ids, positions, cache_index, caches)`: `L` new tokens
    against one `[B, 2, S, K, H]` cache per block, which the new keys and
    values are written into at `[cache_index, cache_index + L)`. This is what
    the `prefill` and `decode` signatures export.

Rows of a batch may hold prompts of different lengths, left-padded:
`positions` are the tokens' positions in their own row's sequence, so row
`b`'s sequence starts at slot `cache_index - positions[b, 0]`, and the
slots before it (its padding) are masked out.
"""

import tensorflow as tf
import tf_keras

import tf_mha
from tf_mha.export import decoder_serving
from tf_mha.models import transformer

layers = tf_keras.layers


class Decoder(tf_keras.Model):
  """Token ids `[B, T]` -> next-token logits `[B, T, V]`.

  Examples:
    >>> model = Decoder(vocab_size=11, max_length=8)
    >>> model(tf.constant([[2, 5, 6]])).shape.as_list()
    [1, 3, 11]
  """

  def __init__(self, vocab_size, *, max_length=48, dim=64, num_query_heads=4,
               num_key_value_heads=2, num_layers=2, ff_dim=128,
               flash_attention=False, **kwargs):
    super().__init__(**kwargs)
    self.vocab_size, self.max_length, self.dim = vocab_size, max_length, dim
    self.num_query_heads = num_query_heads
    self.num_key_value_heads = num_key_value_heads
    self.num_layers, self.ff_dim = num_layers, ff_dim
    self.flash_attention = flash_attention
    self.head_dim = dim // num_query_heads
    init = lambda: tf_keras.initializers.RandomNormal(stddev=0.02)
    self.embed = layers.Embedding(vocab_size, dim, embeddings_initializer=init(),
                                  name="embed")
    self.blocks = [_Block(dim, num_query_heads, num_key_value_heads, ff_dim,
                          flash_attention, name=f"block{i}")
                   for i in range(num_layers)]
    self.final_norm = layers.LayerNormalization(epsilon=1e-6, name="final_ln")

  def cache_shape(self, batch=None):
    """One block's cache: `[B, 2, S, K, H]`."""
    return [batch, 2, self.max_length, self.num_key_value_heads, self.head_dim]

  def empty_caches(self, batch):
    """Zero caches, one per block."""
    return [tf.zeros(self.cache_shape(batch)) for _ in self.blocks]

  def call(self, token_ids):
    x = self.embed(tf.convert_to_tensor(token_ids))
    for block in self.blocks:  # rotary positions: arange(T)
      x = block(x)
    return self._logits(x)

  def step(self, token_ids, positions, cache_index, caches):
    """Runs `L` new tokens through the caches.

    Args:
      token_ids: `[B, L]` int32.
      positions: `[B, L]` int32, each token's position in its row's sequence
        (`cache_index + arange(L)` when nothing is padded).
      cache_index: int32 scalar, the slot of the first new token.
      caches: one `[B, 2, S, K, H]` float32 tensor per block.

    Returns:
      `(logits [B, L, V], caches)`, the caches with the new keys and values.
    """
    x, updated = transformer.through_caches(
        self.blocks, self.embed(token_ids), positions, cache_index, caches,
        self.max_length)
    return self._logits(x), updated

  def _logits(self, x):
    x = self.final_norm(x)
    return tf.einsum("btd,vd->btv", x, self.embed.embeddings)  # tied output

  def get_config(self):
    return {"vocab_size": self.vocab_size, "max_length": self.max_length,
            "dim": self.dim, "num_query_heads": self.num_query_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "num_layers": self.num_layers, "ff_dim": self.ff_dim,
            "flash_attention": self.flash_attention, "name": self.name}


class _Block(layers.Layer):
  """Pre-norm block: causal grouped-query self-attention, then GELU MLP."""

  def __init__(self, dim, num_query_heads, num_key_value_heads, ff_dim,
               flash_attention, **kwargs):
    super().__init__(**kwargs)
    self.norm1 = layers.LayerNormalization(epsilon=1e-6, name="ln1")
    self.attention = tf_mha.GroupedQueryAttention(
        head_dim=dim // num_query_heads, num_query_heads=num_query_heads,
        num_key_value_heads=num_key_value_heads,
        flash_attention=flash_attention, rope_max_wavelength=10000,
        name="attention")
    self.norm2 = layers.LayerNormalization(epsilon=1e-6, name="ln2")
    self.ff1 = layers.Dense(ff_dim, activation="gelu", name="ff1")
    self.ff2 = layers.Dense(dim, name="ff2")

  def call(self, x, cache=None, cache_index=None, value_mask=None,
           positions=None):
    h = self.norm1(x)
    if cache is None:
      h = self.attention(h, h, use_causal_mask=True, positions=positions)
    else:
      h, cache = self.attention(h, h, cache=cache, cache_update_index=cache_index,
                                value_mask=value_mask, positions=positions)
    x = x + h
    x = x + self.ff2(self.ff1(self.norm2(x)))
    return x if cache is None else (x, cache)


def save_for_litert(model, directory):
  """Saves `prefill` and `decode` for one sequence (batch 1, static shapes
  but the prompt length) as a SavedModel to convert to TFLite: the same
  names as a serving export's signatures. Static shapes made a LiteRT
  decode step 7-11% faster (D=512, 4 blocks, 384 slots)."""
  module = tf.Module()
  module.model = model
  prefill, decode = decoder_serving.step_functions(model, batch=1)
  tf.saved_model.save(module, directory,
                      signatures={"prefill": prefill, "decode": decode})

