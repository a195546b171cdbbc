"""Scaled dot-product attention as a pure function: no variables, no Keras.

Glossary of shapes:
  B: batch size.          T: query length.       S: key/value length.
  N: number of heads.     H: key/query head size. V: value head size.

`dot_product_attention` is the single entry point: it checks its arguments,
lays grouped query heads out as rows (`groups`), and hands the call to one
path: `plain` (materialises the `[B, N, T, S]` scores), `chunked` (causal,
chunk by chunk of queries) or `flash` (blockwise, linear memory).
"""

import functools
import math

import tensorflow as tf

from tf_mha.ops import checks
from tf_mha.ops import chunked
from tf_mha.ops import flash
from tf_mha.ops import groups
from tf_mha.ops import masks as masks_lib
from tf_mha.ops import plain
from tf_mha.ops import segments


def dot_product_attention(query,
                          key=None,
                          value=None,
                          *,
                          mask=None,
                          is_causal=False,
                          sliding_window=None,
                          scale=None,
                          dropout_rate=0.0,
                          dropout_seed=None,
                          return_scores=False,
                          flash_attention=None,
                          block_sizes=None,
                          query_start=0,
                          kv_cache=None,
                          segment_ids=None,
                          key_segment_ids=None,
                          logit_soft_cap=None):
  """Multi-head scaled dot-product attention, with grouped keys and values.

  A query row whose every key is masked attends uniformly to all keys (its
  output is the mean of `value` over `S`, as tf.keras gives); outputs and
  gradients stay finite.

  Examples:
    >>> q = tf.ones([2, 3, 4, 8])
    >>> kv = tf.ones([2, 5, 4, 8])
    >>> dot_product_attention(q, kv, kv, is_causal=True).shape
    TensorShape([2, 3, 4, 8])

  Grouped-query attention: `key` and `value` may have `K` heads, where `K`
  divides `N` (`K = 1` is multi-query attention); query head `n` uses key
  head `n // (N / K)`. Keys and values are never repeated: the `N / K`
  query heads of a group are laid out as consecutive query rows against
  their key head.

  Examples:
    >>> q = tf.ones([2, 3, 4, 8])
    >>> kv = tf.ones([2, 5, 1, 8])
    >>> dot_product_attention(q, kv, kv, is_causal=True).shape
    TensorShape([2, 3, 4, 8])

  Args:
    query: `[B, T, N, H]`.
    key: `[B, S, K, H]`, `K` dividing `N`.
    value: `[B, S, K, V]`.
    mask: boolean, broadcastable to `[B, N, T, S]`, `True` where attention is
      allowed; or `None`.
    is_causal: also apply `masks.causal_mask(T, S)` (query `t` sees `s <= t`).
    sliding_window: `None`, or a positive int `W`: also apply
      `masks.band_mask(T, S, W)` (query `t` sees keys with `|t - s| < W`;
      with `is_causal`, the `W` keys up to its own). The chunked and
      blockwise paths skip the keys outside the band.
    scale: multiplies the query; defaults to `1 / sqrt(H)`.
    dropout_rate: fraction of attention probabilities dropped, in `[0, 1)`.
    dropout_seed: shape-`[2]` int seed for the stateless dropout; drawn at
      random when `None`.
    return_scores: also return the probabilities `[B, N, T, S]` (before
      dropout). Needs the plain path.
    flash_attention: `True` forces the blockwise path (error where it cannot
      apply), `False` forbids it, `None` picks it when it applies and is
      faster.
    block_sizes: `(query_block, key_block)` for the blockwise path; chosen
      from the shapes when `None`.
    query_start: the position of the first query among the keys (a Python
      int or a scalar int tensor): query `t` is at position
      `query_start + t` for the causal and sliding-window masks, as in a
      cached decode step whose keys fill a cache from position 0. The
      blockwise path skips the key blocks past the last query's position at
      run time.
    kv_cache: in place of `key` and `value`, a cache `[B, 2, S, K, H]`
      holding them (keys, then values), as `MultiHeadAttention`'s `cache`.
      A decode step's blockwise path then reads only the key blocks it
      visits from it (under XLA, slicing the two halves out first would
      copy the whole cache on every step).
    segment_ids: int `[B, T]`, several examples packed in a row: query `t`
      sees key `s` only when their ids are equal and not 0 (0 is padding).
      Combines with every other mask. Segments are contiguous runs, so the
      blockwise path visits, for each query block, only the key blocks from
      the start of its first segment to the end of its last (work about
      `sum(L_i^2)`, not `T^2`); it is chosen for packed rows of 256 or more.
    key_segment_ids: int `[B, S]`, the keys' ids for cross-attention;
      defaults to `segment_ids` (self-attention, `S == T`).
    logit_soft_cap: `None`, or a positive number `c`: the scaled scores
      become `c * tanh(scores / c)` before the mask and softmax (Gemma 2's,
      and Gemma 3's where its config sets it). Needs the plain path.

  Returns:
    `[B, T, N, V]` in the dtype of `query`, and the probabilities if
    `return_scores`.

  Raises:
    ValueError: on inconsistent shapes (of the inputs or a static `mask`),
      a missing input, a bad `dropout_rate`, `scale`, `sliding_window`,
      `flash_attention`, `block_sizes` or `logit_soft_cap`, or
      `flash_attention=True` with `return_scores=True` or `logit_soft_cap`.
    TypeError: on inputs that are not floating-point tensors.
  """
  query, key, value, kv_cache = _inputs(query, key, value, kv_cache)
  ids = _segment_ids(segment_ids, key_segment_ids, query, key)
  dropout_rate = checks.rate("dropout_rate", dropout_rate)
  flash_attention = checks.tri_state("flash_attention", flash_attention)
  scale = checks.scalar("scale", scale)
  block_sizes = checks.block_sizes(block_sizes)
  if sliding_window is not None:
    sliding_window = checks.positive_int("sliding_window", sliding_window)
  checks.check_op_mask(mask, [query.shape[0], query.shape[2], query.shape[1],
                              key.shape[1]])
  if logit_soft_cap is not None:
    logit_soft_cap = checks.positive_number("logit_soft_cap", logit_soft_cap)
    if flash_attention:
      raise ValueError("`logit_soft_cap` needs the plain path. Received: "
                       "flash_attention=True")
    flash_attention = False
  if flash_attention and return_scores:
    raise ValueError(
        "Returning attention scores is not supported when flash attention "
        "is enabled. Please disable flash attention to access attention "
        "scores. Received: flash_attention=True and return_scores=True; the "
        "blockwise path never forms the scores.")
  if scale is None:
    scale = 1.0 / math.sqrt(query.shape[-1])
  # Scale the query: it is the smaller tensor ([B, T, N, H] vs [B, N, T, S]).
  query = query * plain.as_dtype(scale, query.dtype)
  if mask is not None:
    mask = masks_lib.to_bool_mask(mask)
  if dropout_rate > 0.0 and dropout_seed is None:
    dropout_seed = plain.random_seed()
  group = query.shape[2] // key.shape[2]
  if group > 1:  # [B, T, N, H] -> [B, T * G, K, H], rows (t, g)
    query = groups.rows_of_groups(query, group)
  path = _choose_path(query, key, mask, flash_attention, is_causal,
                      sliding_window, return_scores or logit_soft_cap,
                      query_start, group, ids)
  if ids is not None and path is not _blockwise_path:
    mask = masks_lib.combine_masks(mask, segments.mask(*ids[:2]))
  if group > 1 and mask is not None:
    mask = groups.mask_rows_of_groups(mask, group, tf.shape(query)[1] // group)
  out, probs = path(query, key, value, mask=mask, is_causal=is_causal,
                    sliding_window=sliding_window, dropout_rate=dropout_rate,
                    dropout_seed=dropout_seed, block_sizes=block_sizes,
                    group=group, query_start=query_start, kv_cache=kv_cache,
                    segment_ids=ids, soft_cap=logit_soft_cap)
  out = groups.groups_of_rows(out, group)
  if not return_scores:
    return out
  return out, None if probs is None else groups.scores_of_rows(probs, group)


def _segment_ids(segment_ids, key_segment_ids, query, key):
  """`(query ids [B, T], key ids [B, S], self-attention?)`, or None."""
  if segment_ids is None:
    if key_segment_ids is not None:
      raise ValueError("`key_segment_ids` needs `segment_ids` (the queries' "
                       "ids). Received: segment_ids=None")
    return None
  q = segments.check_ids("segment_ids", segment_ids, query.shape[0],
                         query.shape[1])
  if key_segment_ids is None:
    t, s = query.shape[1], key.shape[1]
    if t is not None and s is not None and t != s:
      raise ValueError(
          "`key_segment_ids` is required when the keys are not the queries' "
          f"sequence. Received: query length {t}, key length {s}")
    return q, q, True
  k = segments.check_ids("key_segment_ids", key_segment_ids, key.shape[0],
                         key.shape[1])
  return q, k, False


def _inputs(query, key, value, kv_cache):
  """`query`, `key`, `value` as tensors (the last two from `kv_cache` when
  given), checked for dtype and shape consistency."""
  query = checks.tensor("query", query, floating=True)
  if kv_cache is not None:
    if key is not None or value is not None:
      raise ValueError("Give `key` and `value`, or `kv_cache`, not both. "
                       f"Received: kv_cache with shape {kv_cache.shape} and "
                       f"key={type(key).__name__}, value={type(value).__name__}")
    kv_cache = checks.tensor("kv_cache", kv_cache, floating=True,
                             dtype_hint=query.dtype)
    if kv_cache.shape.rank != 5 or kv_cache.shape[1] not in (None, 2):
      raise ValueError("`kv_cache` must have shape [batch, 2, length, heads, "
                       f"head_size]. Received: kv_cache.shape={kv_cache.shape}")
    # Unstacked, not sliced: TFLite runs a 5-D strided slice element by
    # element (0.23 ms for one 384-slot cache, against 0.009 ms unstacked).
    key, value = tf.unstack(kv_cache, num=2, axis=1)
  key = checks.tensor("key", key, floating=True, dtype_hint=query.dtype)
  value = checks.tensor("value", value, floating=True, dtype_hint=query.dtype)
  _check_shapes(query, key, value)
  return query, key, value, kv_cache


def _choose_path(query, key, mask, flash_attention, is_causal, window,
                 return_scores, query_start, group, ids=None):
  """The path that computes this call: `_blockwise_path`, `_chunked_path`
  or `_plain_path` (each `(query, key, value, **options) -> (out, probs)`
  with grouped heads as rows)."""
  use_flash = flash_attention
  if key.shape[1] == 0:  # no key: blocks of zero rows; the plain path copes
    use_flash = False
  if use_flash is None:
    use_flash = not return_scores and (
        flash.is_preferred(query, key, is_causal) or
        (ids is not None and ids[2] and flash.is_preferred_for_segments(query)))
  if use_flash:
    return _blockwise_path
  if is_causal and not return_scores and _is_zero(query_start):
    chunks = chunked.causal_chunks(query, key, mask, window, group)
    if chunks:
      return functools.partial(_chunked_path, chunks=chunks)
  return _plain_path


def _blockwise_path(query, key, value, *, mask, is_causal, sliding_window,
                    dropout_rate, dropout_seed, block_sizes, group,
                    query_start, kv_cache, segment_ids, soft_cap=None):
  del soft_cap  # never chosen with one
  options = dict(is_causal=is_causal, sliding_window=sliding_window,
                 dropout_rate=dropout_rate, dropout_seed=dropout_seed,
                 query_group=group, query_start=query_start)
  if segment_ids is None:
    return flash.blockwise_attention(
        query, key, value, mask=mask, block_sizes=block_sizes,
        kv_cache=kv_cache, **options), None
  q_ids, k_ids, self_attention = segment_ids
  block_sizes = block_sizes or flash.SEGMENT_BLOCK_SIZES
  if not (self_attention and mask is None and kv_cache is None and
          _is_zero(query_start)):
    return flash.blockwise_attention(
        query, key, value, mask=mask, block_sizes=block_sizes,
        kv_cache=kv_cache, segment_ids=(q_ids, k_ids, self_attention),
        **options), None
  # Packed self-attention: the batch's rows become one sequence (ids offset
  # per row), so the blocks skipped are those of every row, not of the
  # union over rows. Padding rows (id 0) see no key: as any such row, they
  # attend uniformly to their own row's values.
  one_row = lambda x: tf.reshape(x, [1, -1] + x.shape[2:].as_list())
  ids = segments.one_row(q_ids)
  out = flash.blockwise_attention(
      one_row(query), one_row(key), one_row(value), block_sizes=block_sizes,
      segment_ids=(ids, ids, True), **options)
  out = tf.reshape(out, [-1, query.shape[1] or tf.shape(query)[1]] +
                   out.shape[2:].as_list())
  real = tf.repeat(q_ids != 0, group, axis=1)[:, :, None, None]
  mean = tf.reduce_mean(value, axis=1, keepdims=True)  # [B, 1, K, V]
  return tf.where(real, out, tf.cast(mean, out.dtype)), None


def _chunked_path(query, key, value, *, chunks, mask, sliding_window,
                  dropout_rate, dropout_seed, group, **unused):  # pylint: disable=unused-argument
  out = chunked.chunked_causal_attention(query, key, value, mask, chunks,
                                         sliding_window, dropout_rate,
                                         dropout_seed, group)
  return out, None


def _plain_path(query, key, value, *, mask, is_causal, sliding_window,
                dropout_rate, dropout_seed, group, query_start, soft_cap=None,
                **unused):
  mask = masks_lib.combine_masks(mask, masks_lib.position_mask(
      tf.shape(query)[1], tf.shape(key)[1], causal=is_causal,
      window=sliding_window, query_group=group, query_start=query_start))
  return plain.plain_attention(query, key, value, mask, dropout_rate,
                               dropout_seed, soft_cap)


def _is_zero(value):
  return isinstance(value, int) and value == 0


def _check_shapes(query, key, value):
  for name, t in (("query", query), ("key", key), ("value", value)):
    if t.shape.rank is not None and t.shape.rank != 4:
      raise ValueError(f"`{name}` must have rank 4, [batch, length, heads, "
                       f"head_size]. Received: {name}.shape={t.shape}")
  heads, kv_heads = query.shape[2], key.shape[2]
  if heads is None or kv_heads is None:
    raise ValueError("`query` and `key` need a static number of heads. "
                     f"Received: query.shape={query.shape}, key.shape={key.shape}")
  if heads % kv_heads:
    raise ValueError(
        "`key`'s number of heads must divide `query`'s number of heads "
        f"(grouped-query attention). Received: {heads} query heads "
        f"(query.shape={query.shape}) and {kv_heads} key heads "
        f"(key.shape={key.shape})")
  pairs = (("key", key, 1, "value", value, 1, "length"),
           ("key", key, 2, "value", value, 2, "number of heads"),
           ("query", query, 3, "key", key, 3, "head size"))
  for a_name, a, i, b_name, b, j, what in pairs:
    da, db = a.shape[i], b.shape[j]
    if da is not None and db is not None and da != db:
      raise ValueError(f"`{a_name}` and `{b_name}` must have the same {what}. "
                       f"Received: {a_name}.shape={a.shape}, "
                       f"{b_name}.shape={b.shape}")
