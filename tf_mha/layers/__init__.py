"""The tf_keras layers (`MultiHeadAttention`, `Attention`,
`GroupedQueryAttention`, `patch_tf_keras`) and their private helpers.

May import tf_keras and `tf_mha.ops`; nothing else of tf_mha.
"""

from tf_mha.layers.attention import Attention
from tf_mha.layers.grouped_query_attention import GroupedQueryAttention
from tf_mha.layers.keras_patch import patch_tf_keras
from tf_mha.layers.multi_head_attention import MultiHeadAttention
