"""Scaled dot-product attention as a pure function: no variables, no Keras.

Glossary of shapes:
  B: batch size.          T: query length.       S: key/value length.
  N: number of heads.     H: key/query head size. V: value head size.

`dot_product_attention` is the single entry point. It chooses between the
plain path (which materialises the `[B, N, T, S]` scores) and the blockwise
exact path in `tf_mha.flash` (linear memory, online softmax).
"""

import math

import tensorflow as tf

from tf_mha import _checks
from tf_mha import _compiler
from tf_mha import equations
from tf_mha import flash
from tf_mha import masks as masks_lib


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
                          kv_cache=None):
  """Multi-head scaled dot-product attention, with grouped keys and values.

  A query row whose every key is masked attends uniformly to all keys (its
  output is the mean of `value` over `S`, as tf.keras gives); outputs and
  gradients stay finite.

  >>> q = tf.ones([2, 3, 4, 8])
  >>> kv = tf.ones([2, 5, 4, 8])
  >>> dot_product_attention(q, kv, kv, is_causal=True).shape
  TensorShape([2, 3, 4, 8])

  Grouped-query attention: `key` and `value` may have `K` heads, where `K`
  divides `N` (`K = 1` is multi-query attention); query head `n` uses key
  head `n // (N / K)`. Keys and values are never repeated: the `N / K`
  query heads of a group are laid out as consecutive query rows against
  their key head.

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

  Returns:
    `[B, T, N, V]` in the dtype of `query`, and the probabilities if
    `return_scores`.

  Raises:
    ValueError: on inconsistent shapes (of the inputs or a static `mask`),
      a missing input, a bad `dropout_rate`, `scale`, `sliding_window`,
      `flash_attention` or `block_sizes`, or `flash_attention=True` with
      `return_scores=True`.
    TypeError: on inputs that are not floating-point tensors.
  """
  query = _checks.tensor("query", query, floating=True)
  if kv_cache is not None:
    if key is not None or value is not None:
      raise ValueError("Give `key` and `value`, or `kv_cache`, not both. "
                       f"Received: kv_cache with shape {kv_cache.shape} and "
                       f"key={type(key).__name__}, value={type(value).__name__}")
    kv_cache = _checks.tensor("kv_cache", kv_cache, floating=True,
                              dtype_hint=query.dtype)
    if kv_cache.shape.rank != 5 or kv_cache.shape[1] not in (None, 2):
      raise ValueError("`kv_cache` must have shape [batch, 2, length, heads, "
                       f"head_size]. Received: kv_cache.shape={kv_cache.shape}")
    # Unstacked, not sliced: TFLite runs a 5-D strided slice element by
    # element (0.23 ms for one 384-slot cache, against 0.009 ms unstacked).
    key, value = tf.unstack(kv_cache, num=2, axis=1)
  key = _checks.tensor("key", key, floating=True, dtype_hint=query.dtype)
  value = _checks.tensor("value", value, floating=True, dtype_hint=query.dtype)
  _check_shapes(query, key, value)
  dropout_rate = _checks.rate("dropout_rate", dropout_rate)
  flash_attention = _checks.tri_state("flash_attention", flash_attention)
  scale = _checks.scalar("scale", scale)
  block_sizes = _checks.block_sizes(block_sizes)
  if sliding_window is not None:
    sliding_window = _checks.positive_int("sliding_window", sliding_window)
  _checks.check_op_mask(mask, [query.shape[0], query.shape[2], query.shape[1],
                               key.shape[1]])
  if flash_attention and return_scores:
    raise ValueError(
        "Returning attention scores is not supported when flash attention "
        "is enabled. Please disable flash attention to access attention "
        "scores. Received: flash_attention=True and return_scores=True; the "
        "blockwise path never forms the scores.")
  if scale is None:
    scale = 1.0 / math.sqrt(query.shape[-1])
  # Scale the query: it is the smaller tensor ([B, T, N, H] vs [B, N, T, S]).
  query = query * _as(scale, query.dtype)
  if mask is not None:
    mask = masks_lib.to_bool_mask(mask)
  if dropout_rate > 0.0 and dropout_seed is None:
    dropout_seed = random_seed()
  heads = query.shape[2]
  group = heads // key.shape[2]
  if group > 1:  # [B, T, N, H] -> [B, T * G, K, H], rows (t, g)
    query = _rows_of_groups(query, group)
    if mask is not None:
      mask = _mask_rows_of_groups(mask, group, tf.shape(query)[1] // group)

  use_flash = flash_attention
  if key.shape[1] == 0:  # no key: blocks of zero rows; the plain path copes
    use_flash = False
  if use_flash is None:
    use_flash = not return_scores and flash.is_preferred(query, key, is_causal)
  if use_flash:
    out = flash.blockwise_attention(
        query, key, value, mask=mask, is_causal=is_causal,
        sliding_window=sliding_window, dropout_rate=dropout_rate,
        dropout_seed=dropout_seed, block_sizes=block_sizes,
        query_group=group, query_start=query_start, kv_cache=kv_cache)
    out = _groups_of_rows(out, group)
    return (out, None) if return_scores else out
  chunks = None
  if is_causal and not return_scores and _is_zero(query_start):
    chunks = causal_chunks(query, key, mask, sliding_window, group)
  if chunks:
    out = _chunked_causal_attention(query, key, value, mask, chunks,
                                    sliding_window, dropout_rate, dropout_seed,
                                    group)
    return _groups_of_rows(out, group)
  mask = masks_lib.combine_masks(mask, masks_lib.position_mask(
      tf.shape(query)[1], tf.shape(key)[1], causal=is_causal,
      window=sliding_window, query_group=group, query_start=query_start))
  out, probs = _plain_attention(query, key, value, mask, dropout_rate,
                                dropout_seed)
  out = _groups_of_rows(out, group)
  if not return_scores:
    return out
  return out, _scores_of_rows(probs, group)


def _is_zero(value):
  return isinstance(value, int) and value == 0


def _rows_of_groups(query, group):
  """`[B, T, N, H]` -> `[B, T * G, K, H]`: query head `n = k * G + g` at
  time `t` becomes row `t * G + g` of key head `k`."""
  b, t, n, h = equations.dims(query)
  x = tf.reshape(query, [b, t, n // group, group, h])  # [B, T, K, G, H]
  x = tf.transpose(x, [0, 1, 3, 2, 4])  # [B, T, G, K, H]
  return tf.reshape(x, [b, t * group, n // group, h])


def _groups_of_rows(out, group):
  """The inverse of `_rows_of_groups`: `[B, T * G, K, V]` -> `[B, T, N, V]`."""
  if group == 1:
    return out
  b, rows, k, v = equations.dims(out)
  x = tf.reshape(out, [b, rows // group, group, k, v])  # [B, T, G, K, V]
  x = tf.transpose(x, [0, 1, 3, 2, 4])  # [B, T, K, G, V]
  return tf.reshape(x, [b, rows // group, k * group, v])


def _scores_of_rows(probs, group):
  """`[B, K, T * G, S]` -> `[B, N, T, S]`."""
  if group == 1:
    return probs
  b, k, rows, s = equations.dims(probs)
  x = tf.reshape(probs, [b, k, rows // group, group, s])  # [B, K, T, G, S]
  x = tf.transpose(x, [0, 1, 3, 2, 4])  # [B, K, G, T, S]
  return tf.reshape(x, [b, k * group, rows // group, s])


def _mask_rows_of_groups(mask, group, length):
  """A mask broadcastable to `[B, N, T, S]` -> to `[B, K, T * G, S]`."""
  while mask.shape.rank < 4:
    mask = tf.expand_dims(mask, 0)
  m = equations.dims(mask)
  if mask.shape[2] != 1:  # per query position: every head of a group
    mask = tf.broadcast_to(mask, [m[0], m[1], length, m[3]])
  if mask.shape[1] == 1:
    return tf.repeat(mask, group, axis=2) if mask.shape[2] != 1 else mask
  mask = tf.broadcast_to(mask, [m[0], m[1], length, m[3]])
  x = tf.reshape(mask, [m[0], m[1] // group, group, length, m[3]])
  x = tf.transpose(x, [0, 1, 3, 2, 4])  # [B, K, T, G, S]
  return tf.reshape(x, [m[0], m[1] // group, length * group, m[3]])


def _plain_attention(query, key, value, mask, dropout_rate, dropout_seed):
  """Materialises the scores; the query is already scaled."""
  dtype = masks_lib.logits_dtype(query.dtype)
  scores = tf.einsum("BTNH,BSNH->BNTS", tf.cast(query, dtype),
                     tf.cast(key, dtype))  # [B, N, T, S]
  probs = masks_lib.masked_softmax(scores, mask)
  dropped = probs
  if dropout_rate > 0.0:
    dropped = dropout(probs, dropout_rate, dropout_seed)
  out = tf.einsum("BNTS,BSNV->BTNV", tf.cast(dropped, value.dtype), value)
  return out, probs


def _chunk_attention(query, key, value, keep, dropout_rate, dropout_seed,
                     may_mask_rows):
  """One causal chunk, heads-major: `[B, N, T, H]` inputs, `[B, N, T, V]` out.

  The forward pass normalises after the `PV` product (dividing `[T, V]`
  outputs by the row sums, not `[T, S]` probabilities); the backward pass is
  the closed form `dS = P * (dP - rowsum(dO * O))`, one fused pass over the
  saved exponentials. Masked entries get no gradient, as with a `where` fill
  (their exponentials are 0, unless `may_mask_rows`: a row with no visible
  key has them all 1, and is zeroed explicitly).
  """
  acc = masks_lib.softmax_dtype(query.dtype)
  logits_dtype = masks_lib.logits_dtype(query.dtype)

  @tf.custom_gradient
  def attend(q, k, v):
    s = tf.einsum("BNTH,BNSH->BNTS", tf.cast(q, logits_dtype),
                  tf.cast(k, logits_dtype))
    s = masks_lib.mask_logits(tf.cast(s, acc), keep)
    e = tf.exp(s - tf.reduce_max(s, -1, keepdims=True))  # [B, N, T, S]
    total = tf.reduce_sum(e, -1, keepdims=True)  # [B, N, T, 1]
    used = dropout(e, dropout_rate, dropout_seed) if dropout_rate else e
    out = tf.einsum("BNTS,BNSV->BNTV", used, tf.cast(v, acc)) / total

    def grad(d_out):
      d_out = tf.cast(d_out, acc) / total  # dO / l
      d_used = tf.einsum("BNTV,BNSV->BNTS", d_out, tf.cast(v, acc))  # dP / l
      dv = tf.einsum("BNTS,BNTV->BNSV", used, d_out)
      if dropout_rate:
        d_used = dropout(d_used, dropout_rate, dropout_seed)
      delta = tf.reduce_sum(d_out * out, -1, keepdims=True)  # [B, N, T, 1]
      ds = e * (d_used - delta)  # (e / l) (dP - D) = P (dP - D)
      if may_mask_rows:
        ds = tf.where(keep, ds, tf.zeros_like(ds))
      dq = tf.einsum("BNTS,BNSH->BNTH", ds, tf.cast(k, acc))
      dk = tf.einsum("BNTS,BNTH->BNSH", ds, tf.cast(q, acc))
      return tf.cast(dq, q.dtype), tf.cast(dk, k.dtype), tf.cast(dv, v.dtype)

    return tf.cast(out, v.dtype), grad

  return attend(query, key, value)


def _chunk_rows(length):
  """Query rows per chunk of causal attention on the plain path.

  Measured in MultiHeadAttention at B=4, N=8, H=64. Compiled by XLA,
  128-row chunks are fastest (T=512 attention forward: 13.6 ms, against 14.2
  with 64 rows and 16.2 with 256). TensorFlow's own kernels favour fewer,
  larger chunks: forward+backward at T=512, 1024 and 2048 took 101, 286 and
  836 ms with 256, 256 and 512 rows, against 112, 334 and 1092 ms with 128;
  so without XLA, at least 256 rows and at most four chunks.
  """
  if _compiler.in_xla_context():
    return 128
  return max(256, length // 4)


def causal_chunks(query, key, mask, window=None, group=1):
  """Static `[(t0, t1, s0, s1)]`: query rows `[t0, t1)` see only keys in
  `[s0, s1)` (`s0 > 0` under a sliding window `W`: `t0 - W + 1`). Row `r`
  is at position `r // group` (grouped heads as rows, `_rows_of_groups`).

  `None` (no chunking) for short or dynamic lengths, or a mask whose `T`
  and `S` sizes are not static.
  """
  t, s = query.shape[1], key.shape[1]
  if t is None or s is None:
    return None
  rows = _chunk_rows(t)
  if t < 2 * rows:
    return None
  if mask is not None and (mask.shape.rank is None or
                           None in mask.shape[-2:].as_list()):
    return None
  count = t // rows
  bounds = [i * t // count for i in range(count + 1)]
  first = lambda p: 0 if window is None else min(s, max(0, p - window + 1))
  return [(a, b, first(a // group), min(s, (b - 1) // group + 1))
          for a, b in zip(bounds, bounds[1:])]


def _chunked_causal_attention(query, key, value, mask, chunks, window,
                              dropout_rate, dropout_seed, group=1):
  """Causal attention chunk by chunk of queries, each reading only the keys
  it can see (at or before its last row, and within the sliding window):
  the blocks above the diagonal (about half the work at long lengths) are
  never computed, and there is no loop to run."""
  s = key.shape[1]
  if mask is not None:
    for _ in range(4 - mask.shape.rank):  # leading axes; its batch may be dynamic
      mask = tf.expand_dims(mask, 0)
  # Heads-major once, so that every product below is a plain batched matmul.
  q, k, v = (tf.transpose(x, [0, 2, 1, 3]) for x in (query, key, value))
  may_mask_rows = mask is not None or window is not None
  # What a row with no visible key gets: it attends to all `S` keys
  # uniformly, as the unchunked path does (the mean of every value, not of
  # its chunk's).
  value_mean = None
  if may_mask_rows:
    value_mean = tf.reduce_mean(v, axis=2, keepdims=True)  # [B, N, 1, V]
  outs = []
  for i, (t0, t1, s0, s1) in enumerate(chunks):
    if s0 >= s1:  # rows past the last key's window: no key to see
      outs.append(tf.repeat(value_mean, t1 - t0, axis=2))
      continue
    keep = masks_lib.position_mask(t1 - t0, s1 - s0, causal=True, window=window,
                                   query_offset=t0, key_offset=s0,
                                   query_group=group)
    if mask is not None:
      rows = slice(t0, t1) if mask.shape[2] != 1 else slice(None)
      cols = slice(s0, s1) if mask.shape[3] != 1 else slice(None)
      keep = tf.logical_and(keep, mask[:, :, rows, cols])  # [B, N, rows, s1 - s0]
    seed = None
    if dropout_rate > 0.0:
      seed = tf.random.experimental.stateless_fold_in(dropout_seed, i)
    out = _chunk_attention(q[:, :, t0:t1], k[:, :, s0:s1], v[:, :, s0:s1], keep,
                           dropout_rate, seed, may_mask_rows)  # [B, N, rows, V]
    if may_mask_rows and (s0 > 0 or s1 < s):
      seen = tf.reduce_any(keep, -1, keepdims=True)  # [B, N, rows, 1]
      out = tf.where(seen, out, value_mean)
    outs.append(out)
  return tf.transpose(tf.concat(outs, axis=2), [0, 2, 1, 3])  # [B, T, N, V]


def dropout(x, rate, seed):
  """Stateless inverted dropout: zeroes `rate` of `x`, rescales the rest."""
  keep = tf.random.stateless_uniform(tf.shape(x), seed) >= rate
  return tf.where(keep, x / _as(1.0 - rate, x.dtype), tf.zeros_like(x))


def _as(number, dtype):
  """`number` (Python or tensor) in `dtype`. (`tf.cast` of a Python float
  goes through float32 first, which costs float64 eight digits.)"""
  if isinstance(number, (int, float)):
    return tf.constant(number, dtype)
  return tf.cast(number, dtype)


def random_seed(op_seed=None):
  """A fresh shape-[2] int32 seed for stateless ops.

  A stateful draw: a new value on every execution, also inside a
  tf.function, reproducible from `op_seed` in a fresh process.
  """
  return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32,
                           seed=op_seed)


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
