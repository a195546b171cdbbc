"""The pure attention op: `dot_product_attention` and its plain, causal-chunk
and blockwise paths, masks, einsum equations and argument checks.

Imports TensorFlow only: nothing from Keras, nothing else of tf_mha.
"""

from tf_mha.ops.core import dot_product_attention
from tf_mha.ops.masks import causal_mask
from tf_mha.ops.masks import combine_masks
from tf_mha.ops.plain import dropout
from tf_mha.ops.plain import random_seed
from tf_mha.ops.segments import positions as segment_positions
from tf_mha.ops.rotary import rotary_embedding
