"""The causal-chunk path: causal attention one chunk of query rows at a time,
each chunk reading only the keys it can see (no blocks above the diagonal).

Shapes as in `tf_mha.ops.core`.
"""

import tensorflow as tf

from tf_mha.ops import compiler
from tf_mha.ops import masks as masks_lib
from tf_mha.ops import plain


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
    used = plain.dropout(e, dropout_rate, dropout_seed) if dropout_rate else e
    out = tf.einsum("BNTS,BNSV->BNTV", used, tf.cast(v, acc)) / total

    def grad(d_out):
      d_out = tf.cast(d_out, acc) / total  # dO / l
      d_used = tf.einsum("BNTV,BNSV->BNTS", d_out, tf.cast(v, acc))  # dP / l
      dv = tf.einsum("BNTS,BNTV->BNSV", used, d_out)
      if dropout_rate:
        d_used = plain.dropout(d_used, dropout_rate, dropout_seed)
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
  if compiler.in_xla_context():
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


def chunked_causal_attention(query, key, value, mask, chunks, window,
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
