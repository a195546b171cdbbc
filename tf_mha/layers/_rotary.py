"""Rotary position embeddings in the layers: the projected queries and keys
rotated by their positions (`ops.rotary_embedding`) before attention and
before a cache write, as KerasHub's Llama attention does.

Shapes: `B` batch, `T` query tokens, `S` key tokens, `N` heads, `H` head
size.

A layer built with `rope_max_wavelength` takes `positions` in `call`: the
query tokens' positions `[B, T]` (a cached call: the new tokens', which are
also the written keys'). Defaults: `cache_update_index + arange(T)` with a
cache, each token's position in its segment with `segment_ids`, else
`arange`; the keys of an uncached call use `positions` when they are as
long as the queries (self-attention), else their own `arange`.
"""

import tensorflow as tf

from tf_mha import ops
from tf_mha.ops import checks
from tf_mha.ops import rotary


def config(max_wavelength, scaling_factor, llama3_scaling=None):
  """The checked `(max_wavelength, scaling_factor, llama3_scaling)`, or None
  (no rotary)."""
  if max_wavelength is None:
    if llama3_scaling is not None:
      raise ValueError("`rope_llama3_scaling` needs `rope_max_wavelength`.")
    return None
  if llama3_scaling is not None:
    llama3_scaling = rotary.check_llama3_scaling(llama3_scaling,
                                                 "rope_llama3_scaling")
  return (checks.positive_number("rope_max_wavelength", max_wavelength),
          checks.positive_number("rope_scaling_factor", scaling_factor),
          llama3_scaling)


def config_entries(layer):
  """The layer's rotary `get_config` entries (none without rotary)."""
  if layer._rope is None:
    return {}
  entries = {"rope_max_wavelength": layer._rope[0],
             "rope_scaling_factor": layer._rope[1]}
  if layer._rope[2] is not None:
    entries["rope_llama3_scaling"] = list(layer._rope[2])
  return entries


def rotate(layer, x, positions, start=None):
  """Projected `x` `[B, L, N, H]` rotated by `positions` (`[B, L]`, or None:
  `start + arange(L)`); `x` itself when the layer has no rotary."""
  if layer._rope is None:
    return x
  if x.shape.rank != 4:
    raise ValueError("Rotary embeddings need one attention axis "
                     "([batch, length, features] inputs). Received: "
                     f"attention_axes={layer._attention_axes}")
  if positions is None:
    positions = tf.range(tf.shape(x)[1])[None]
    if start is not None:
      positions += tf.cast(start, tf.int32)
  else:
    positions = checks.tensor("positions", positions)
  return ops.rotary_embedding(x, positions, *layer._rope)


def call_positions(layer, query, key, positions, segment_ids):
  """`(query positions, key positions)` of an uncached call (None: arange),
  or `(None, None)` without rotary."""
  if layer._rope is None:
    if positions is not None:
      raise ValueError("`positions` needs a layer built with "
                       "`rope_max_wavelength` (rotary embeddings).")
    return None, None
  if positions is None and segment_ids is not None:
    return (ops.segment_positions(segment_ids[0]),
            ops.segment_positions(segment_ids[1]))
  same_length = query.shape[1] is not None and query.shape[1] == key.shape[1]
  return positions, positions if same_length else None
