"""tf_mha: multi-head attention for TensorFlow (tf_keras), drop-in and scalable.

Public names: the layers `MultiHeadAttention` and `Attention`, the pure op
`dot_product_attention`, and the mask helpers.
"""

from tf_mha import _startup

with _startup.quiet_import():  # TensorFlow's start-up logs, for commands
  from tf_mha.attention import Attention
  from tf_mha.masks import causal_mask
  from tf_mha.masks import combine_masks
  from tf_mha.multi_head_attention import MultiHeadAttention
  from tf_mha.ops import dot_product_attention

__version__ = "0.1.0"

__all__ = [
    "Attention",
    "MultiHeadAttention",
    "causal_mask",
    "combine_masks",
    "dot_product_attention",
]
