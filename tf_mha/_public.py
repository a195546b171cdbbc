"""The public names of `tf_mha`, imported by its `__init__` (at once, or in a
tf_mha command at the first use of one; see `tf_mha/__init__.py`)."""

# pylint: disable=unused-import
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
