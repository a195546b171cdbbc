"""The key/value cache of `MultiHeadAttention` and `GroupedQueryAttention`.

Shapes: `B` batch, `L` new tokens, `S` cache slots (`S_max`), `N` query
heads, `K` key/value heads, `H` head size, `D` model size.

KerasHub's `CachedMultiHeadAttention` conventions: the cache is one tensor
`[B, 2, S, K, H]`, keys then values, already projected. With
`cache_update_index=i`, only the new tokens' keys and values are projected
and written at `[i, i + L)` (`dynamic_update_slice`: static shapes, no
concat, TFLite's builtin DYNAMIC_UPDATE_SLICE), and query `i + t` attends to
cache positions `<= i + t`. The blockwise path ends its key-block loop at
the last query's position at run time, so a step at position `p` costs
`O(p)`, not `O(S)`, for attention. The write itself copies the cache when
it is a tensor passed in and returned (measured in the project's notes:
3.7 ms at 4096 slots under XLA), so the cache may also be a `tf.Variable`
of that shape: it is then written in place with a slice assign (flat in
`S` under XLA) and the call returns the variable (`tf_mha.generation`).

The cache may also be a pair `(keys, values)` of `[B, S, K, H]` tensors, the
layout on-device runtimes keep (LiteRT-LM's `kv_cache_k_<i>` and
`kv_cache_v_<i>`, one buffer each, written in place): each is written with
its own `dynamic_update_slice` and the call returns the pair, so an export
boundary that speaks that layout copies nothing to stack or split them.
"""

import math

import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla

from tf_mha import ops
from tf_mha.layers import _dropout
from tf_mha.layers import _projections
from tf_mha.layers import _rotary
from tf_mha.ops import checks
from tf_mha.ops import compiler
from tf_mha.ops import masks as masks_lib

# Key blocks of this many slots for a cached call: few query rows, so small
# blocks bound the work past the last position. A one-token step at 4096
# slots (8 heads of 64, XLA) took 0.60/0.79/0.72/0.78 ms at position 256 and
# 3.6/2.3/2.3/2.8 ms at 4095 with blocks of 128/256/512/1024.
_CACHE_KEY_BLOCK = 256


def check_cache(cache, layer, batch=None):
  """Raises a ValueError naming `cache` unless it is `[B, 2, S, K, H]` (or a
  pair of `[B, S, K, H]`) of the layer's heads, head size and compute
  dtype."""
  kv_heads, size = layer._num_key_value_heads, layer._key_dim
  if isinstance(cache, (tuple, list)):
    shapes = [c.shape for c in cache]
    if any(s.rank != 4 or s[2] not in (None, kv_heads) or s[3] not in (None, size)
           for s in shapes) or shapes[0] != shapes[1] or layer._value_dim != size:
      raise ValueError(
          f"A `cache` pair must be two tensors of shape [batch, max_length, "
          f"{kv_heads}, {size}] (keys, values; the layer's key/value heads "
          "and head size, with value_dim equal to key_dim). Received: cache "
          f"with shapes {[list(s) for s in shapes]}")
    for part in cache:
      _check_cache_part(part, shapes[0], layer, batch)
    return
  shape = cache.shape
  if shape.rank != 5 or shape[1] not in (None, 2) or shape[3] not in (
      None, kv_heads) or shape[4] not in (None, size) or (
          layer._value_dim != size):
    raise ValueError(
        f"`cache` must have shape [batch, 2, max_length, {kv_heads}, {size}] "
        "(keys, then values, projected; the layer's key/value heads and "
        "head size, with value_dim equal to key_dim), or be a pair of "
        f"[batch, max_length, {kv_heads}, {size}]. Received: cache with "
        f"shape {shape}")
  _check_cache_part(cache, shape, layer, batch)


def _check_cache_part(cache, shape, layer, batch):
  if batch is not None and shape[0] is not None and shape[0] != batch:
    raise ValueError(f"`cache` must have the batch size of `query` ({batch}). "
                     f"Received: cache with shape {shape}")
  if cache.dtype != layer._compute_dtype_object:
    raise ValueError(f"`cache` must have the layer's compute dtype "
                     f"{layer._compute_dtype_object.name}. Received: cache of "
                     f"dtype {cache.dtype.name}")


def _check_index(index, new, slots):
  """The write index as an int32 scalar; a ValueError when it is known not
  to fit (`index + new > slots`), an assertion or NaN output otherwise."""
  static = tf.get_static_value(index)
  if static is not None:
    if isinstance(static, bool) or not float(static).is_integer() or (
        tf.as_dtype(getattr(index, "dtype", tf.int32)).is_floating):
      raise ValueError("`cache_update_index` must be an integer. Received: "
                       f"cache_update_index={index!r}")
    if new is not None and slots is not None and not 0 <= int(static) <= slots - new:
      raise ValueError(
          f"`cache_update_index`={int(static)} does not fit: {new} new tokens "
          f"from there pass the cache's {slots} slots.")
  return tf.cast(index, tf.int32)


def _fits(index, new, slots):
  return tf.logical_and(index >= 0, index + new <= slots)


def _asserted_to_fit(index, new, slots):
  """Graph mode without XLA: `index`, behind an assertion
  (InvalidArgumentError) that the write fits the cache. The write and the
  attention read this index, so the assertion runs before either (the
  write's own error for an index that does not fit would otherwise race
  it)."""
  check = tf.debugging.Assert(_fits(index, new, slots), [
      "cache_update_index does not fit the cache: index", index,
      "new tokens", new, "slots", slots])
  with tf.control_dependencies([check]):
    return tf.identity(index)


class CachedCall:
  """`_cached_call`: the layers' call with a cache (a mixin)."""

  def _cached_call(self, query, value, key, cache, index, *, attention_mask,
                   query_mask, value_mask, key_mask, training,
                   return_attention_scores, use_causal_mask, segment_ids=None,
                   positions=None):
    """See the layer's `cache` and `cache_update_index` arguments.

    Masks are over the cache: `attention_mask` `[B, L, S]`, `query_mask`
    `[B, L]`, `key_mask`/`value_mask` `[B, S]`.
    """
    if key is None or key is value:  # as without a cache (Keras 3's rule)
      key, key_mask = value, None
    query, cache, variable = self._checked_cache_call(query, value, key, cache,
                                                      index)
    pair = isinstance(cache, tuple)
    slots = cache[0].shape[1] if pair else cache.shape[2]
    dtype = self._compute_dtype_object
    q = _projections.apply(self._query_dense, query, 1, dtype)  # [B, L, N, H]
    start = 0
    if index is not None:
      index = _check_index(index, query.shape[1], slots)
      if not tf.executing_eagerly() and not compiler.in_xla_context():
        index = _asserted_to_fit(index, query.shape[1] or tf.shape(query)[1],
                                 slots)
      cache = self._write(cache, variable, key, value, index, positions)
      start = index
    elif variable is not None:
      cache = variable.read_value()
    q = _rotary.rotate(self, q, positions, start)
    mask = self._cache_mask(attention_mask, query_mask, value_mask, key_mask)
    flash = self._flash_attention
    if flash is None:
      flash = index is not None and not return_attention_scores

    kv_heads = cache[0].shape[2] if pair else cache.shape[3]
    kv = dict(key=cache[0], value=cache[1]) if pair else dict(kv_cache=cache)

    def attend(rate):
      return ops.dot_product_attention(
          q, **kv, mask=mask,
          is_causal=index is not None or use_causal_mask,
          sliding_window=self._sliding_window,
          scale=1.0 / math.sqrt(float(self._key_dim)), dropout_rate=rate,
          dropout_seed=self._dropout_seeds.next() if rate else None,
          return_scores=return_attention_scores, flash_attention=flash,
          block_sizes=((q.shape[1] or 1) * (q.shape[2] // kv_heads),
                       min(_CACHE_KEY_BLOCK, slots or _CACHE_KEY_BLOCK))
          if flash and q.shape[1] is not None else None,
          query_start=start,
          segment_ids=None if segment_ids is None else segment_ids[0],
          key_segment_ids=None if segment_ids is None else segment_ids[1])

    result = _dropout.attend_with_rate(self._dropout, training, attend)
    out, scores = result if return_attention_scores else (result, None)
    if index is not None and compiler.in_xla_context():
      out = _nan_unless_fits(out, index, query.shape[1] or tf.shape(query)[1],
                             slots)
    if self._use_gate:
      out = out * self._gate_dense(query)
    out = _projections.apply(self._output_dense, out, 2, dtype)
    if variable is not None:  # the variable itself, written in place
      cache = variable
    if return_attention_scores:
      return out, scores, cache
    return out, cache

  def _checked_cache_call(self, query, value, key, cache, index):
    """Checks a cached call's inputs (building the layer if needed):
    `(query, cache, variable)`, `variable` the cache when it is one."""
    if cache is None:
      raise ValueError("`cache_update_index` needs a `cache`. Received: "
                       f"cache=None, cache_update_index={index!r}")
    query = checks.tensor("query", query)
    if query.shape.rank != 3:
      raise ValueError(
          "A cache needs `[batch, length, features]` inputs (one attention "
          f"axis). Received: query with shape {query.shape}")
    if not self._built_from_signature:
      self._build_from_signature(query, value, key)
    if len(self._attention_axes) != 1 or self._query_shape.rank != 3:
      raise ValueError("A cache needs a layer with one attention axis over "
                       "`[batch, length, features]` inputs. Received: "
                       f"attention_axes={self._attention_axes}")
    variable = cache if isinstance(cache, tf.Variable) else None
    if isinstance(cache, (tuple, list)):
      if len(cache) != 2:
        raise ValueError("A `cache` pair holds two tensors (keys, values). "
                         f"Received: a {type(cache).__name__} of {len(cache)}")
      cache = tuple(checks.tensor("cache", part) for part in cache)
    elif variable is None:
      cache = checks.tensor("cache", cache)
    check_cache(cache, self, query.shape[0])
    return query, cache, variable

  def _write(self, cache, variable, key, value, index, positions):
    """The new tokens' projected keys (rotated by `positions` with rotary
    embeddings) and values written at `index`: the cache after the write (a
    variable is written in place, then read)."""
    dtype = self._compute_dtype_object
    value = checks.tensor("value", value)
    key = checks.tensor("key", key)
    k_new = _projections.apply(self._key_dense, key, 1, dtype)  # [B, L, K, H]
    k_new = _rotary.rotate(self, k_new, positions, index)
    v_new = _projections.apply(self._value_dense, value, 1, dtype)
    if variable is None:
      return write(cache, k_new, v_new, index)
    written = tf.cast(tf.stack([k_new, v_new], axis=1), cache.dtype)
    with tf.control_dependencies([_assign(variable, written, index)]):  # see the module doc
      return variable.read_value()

  def _cache_mask(self, attention_mask, query_mask, value_mask, key_mask):
    """The masks over the cache combined, `[B, L, S]`-broadcastable, then
    with the head axis `[B, 1, L, S]`; or None."""
    for name, mask in (("attention_mask", attention_mask),
                       ("query_mask", query_mask), ("value_mask", value_mask),
                       ("key_mask", key_mask)):
      checks.mask_dtype(name, mask)
    parts = [attention_mask]
    if query_mask is not None:
      parts.append(tf.expand_dims(masks_lib.to_bool_mask(query_mask), -1))
    for mask in (value_mask, key_mask):
      if mask is not None:
        parts.append(tf.expand_dims(masks_lib.to_bool_mask(mask), 1))
    mask = masks_lib.combine_masks(*parts)
    if mask is None:
      return None
    while mask.shape.rank < 3:
      mask = tf.expand_dims(mask, 0)
    return tf.expand_dims(mask, 1)


def _nan_unless_fits(out, index, new, slots):
  """Under XLA (no assertions): `out`, or NaN where the write did not fit
  the cache, never a silent answer."""
  return tf.where(_fits(index, new, slots), out,
                  tf.constant(float("nan"), out.dtype))


def _assign(variable, update, index):
  """Writes `update` `[B, 2, L, K, H]` into the cache variable at slot
  `index`: a `dynamic_update_slice` of the variable assigned back, which
  XLA does in place (0.18 ms at 256, 4096 and 32768 slots here, where a
  tensor in and out took 0.28, 1.3 and 13.7 ms). A slice assign
  (`variable[:, :, i:i + L].assign`) needs a compile-time `i` under XLA."""
  return variable.assign(_update(variable, update, [0, 0, index, 0, 0]))


def write(cache, keys, values, index):
  """A tensor cache with `keys` and `values` `[B, L, K, H]` written at slots
  `[index, index + L)`: a `[B, 2, S, K, H]` tensor, or a pair of
  `[B, S, K, H]` (each in its own buffer, as LiteRT-LM binds them)."""
  if isinstance(cache, (tuple, list)):
    return tuple(_update(part, new, [0, index, 0, 0])
                 for part, new in zip(cache, (keys, values)))
  return _update(cache, tf.stack([keys, values], axis=1), [0, 0, index, 0, 0])


def _update(cache, update, at):
  """`cache` with `update` written at `at`: XLA's `dynamic_update_slice`
  (KerasHub's `slice_update`), which TFLite converts to its builtin
  DYNAMIC_UPDATE_SLICE."""
  return xla.dynamic_update_slice(cache, tf.cast(update, cache.dtype),
                                  tf.stack(at))
