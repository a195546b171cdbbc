"""The generator demo's model: `tf_mha.models.demo`'s decoder, a small
decoder-only Transformer (`tf_mha.models.transformer.CausalLM`: pre-norm
blocks of causal `tf_mha.GroupedQueryAttention` with rotary positions, a GELU
feed-forward net, an output tied to the token embedding), and its LiteRT
export.

The same weights run two ways: `call(token_ids)`, logits for every position
of whole sequences (training, and the uncached baseline), and
`step(token_ids, positions, cache_index, caches)`, `L` new tokens against one
`[B, 2, S, K, H]` cache per block, which is what the `prefill` and `decode`
signatures export.
"""

import tensorflow as tf

from tf_mha.export import decoder_serving
from tf_mha.models import demo

# The demo's decoder: `Decoder(vocab_size, max_length=48, dim=64,
# num_query_heads=4, num_key_value_heads=2, num_layers=2, ff_dim=128)`.
Decoder = demo.decoder


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

