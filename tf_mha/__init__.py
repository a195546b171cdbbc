"""tf_mha: multi-head attention for TensorFlow (tf_keras), drop-in and scalable.

Public names: the layers `MultiHeadAttention` and `Attention`, the pure op
`dot_product_attention` (with `segment_ids` for packed rows, and
`segment_positions`), `rotary_embedding`, the mask helpers, `generation` (greedy decoding
with a key/value cache), and `patch_tf_keras` (tf_keras'
`MultiHeadAttention` resolves to ours, for libraries that subclass it).
"""

from tf_mha import _startup

with _startup.quiet_import():  # TensorFlow's start-up logs, for commands
  from tf_mha import generation
  from tf_mha.layers import Attention
  from tf_mha.layers import GroupedQueryAttention
  from tf_mha.layers import MultiHeadAttention
  from tf_mha.layers import patch_tf_keras
  from tf_mha.ops import causal_mask
  from tf_mha.ops import combine_masks
  from tf_mha.ops import dot_product_attention
  from tf_mha.ops import rotary_embedding
  from tf_mha.ops import segment_positions

__version__ = "0.1.0"

__all__ = [
    "Attention",
    "GroupedQueryAttention",
    "MultiHeadAttention",
    "causal_mask",
    "combine_masks",
    "dot_product_attention",
    "patch_tf_keras",
    "rotary_embedding",
    "segment_positions",
]
