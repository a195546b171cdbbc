"""tf_mha: multi-head attention for TensorFlow (tf_keras), drop-in and scalable.

Public names: the layers `MultiHeadAttention` and `Attention`, the pure op
`dot_product_attention` (with `segment_ids` for packed rows, and
`segment_positions`), `rotary_embedding`, the mask helpers, `generation` (greedy decoding
with a key/value cache), and `patch_tf_keras` (tf_keras'
`MultiHeadAttention` resolves to ours, for libraries that subclass it).

`import tf_mha` imports them all, TensorFlow with them, and registers the
layers as Keras serializables. In one of tf_mha's own commands (`tf_mha_*`,
`python -m tools.<command>`), they load at their first use instead, after
the flags are read: `--help` and a bad flag answer without loading
TensorFlow, and each command's `main` imports what it runs.
"""

from tf_mha import _startup

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

if not _startup.command:
  from tf_mha._public import *  # pylint: disable=wildcard-import
else:

  def __getattr__(name):
    if name not in __all__ and name != "generation":
      raise AttributeError(f"module 'tf_mha' has no attribute {name!r}")
    from tf_mha import _public  # pylint: disable=g-import-not-at-top
    return getattr(_public, name)
