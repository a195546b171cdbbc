"""Blockwise exact attention in linear memory (online softmax).

Rabe & Staats (2021), "Self-attention Does Not Need O(n^2) Memory", and the
FlashAttention recurrence: queries are processed in blocks of `bq` rows; for
each, key/value blocks of `bk` rows are visited in a `tf.while_loop` while a
running max `m`, normaliser `l` and accumulator are kept in float32 (float64
for float64 inputs). Causal attention visits only the key blocks at or below
the diagonal, a sliding window only those that meet its band. The gradient
recomputes block scores from the saved row max and row sum instead of
storing them.

Shapes (see `tf_mha.ops`): inputs `[B, T, N, H]`, `[B, S, N, H]`,
`[B, S, N, V]`; blocks are indexed on a leading axis, `[nq, B, N, bq, H]`.
Block sizes are static Python ints, so everything compiles under XLA.
"""

import tensorflow as tf

from tf_mha.ops import banded
from tf_mha.ops import blocks
from tf_mha.ops import checks
from tf_mha.ops import masks as masks_lib

DEFAULT_BLOCK_SIZES = (1024, 1024)
# Blocks of about this many scores across batch and heads (B * N * bq * bk)
# ran fastest on a 2-core CPU: 1024 x 1024 for B * N = 8, 512 x 512 for 32.
_BLOCK_SCORES = 8 * 1024 * 1024
# `flash_attention=None` goes blockwise from this many scores per batch and
# head (T * S), twice that when causal (the plain causal path skips half the
# work too); tools/benchmark.py measures the crossover.
_PREFERRED_MIN_SCORES = 2048 * 2048

# Blocks for packed rows (segment ids): the granularity at which the blocks
# between examples are skipped.
SEGMENT_BLOCK_SIZES = (128, 128)
# `flash_attention=None` takes the blockwise path for packed self-attention
# from this many query rows (shorter rows gain little from skipping).
_SEGMENT_MIN_ROWS = 256

# Key blocks of a single query block unrolled as branches (a decode step
# over a cache of up to 512 blocks; 65536 slots of 128).
_MAX_UNROLLED_BLOCKS = 512
# Query rows up to which a cached call reads its key blocks straight from
# the cache (`kv_cache`): a decode step. A 2048-token prefill ran slower
# that way (148 ms against 101 at 4096 slots) than on the sliced halves.
_DECODE_ROWS = 64


def is_preferred(query, key, is_causal=False):
  """Whether the blockwise path should run for these (scaled) inputs."""
  t, s = query.shape[1], key.shape[1]
  threshold = _PREFERRED_MIN_SCORES * (2 if is_causal else 1)
  return t is not None and s is not None and t * s >= threshold


def is_preferred_for_segments(query):
  """Whether packed self-attention (segment ids) should run blockwise."""
  return query.shape[1] is not None and query.shape[1] >= _SEGMENT_MIN_ROWS


def choose_block_sizes(query_length, key_length, batch_heads=None):
  """Static `(bq, bk)` from the shapes: square blocks of about
  `_BLOCK_SCORES / batch_heads` scores (a power of two from 128 to 1024),
  shrunk to short static lengths. `batch_heads`: `B * N`, if known."""
  side = DEFAULT_BLOCK_SIZES[0]
  if batch_heads:
    side = 128
    while side < DEFAULT_BLOCK_SIZES[0] and 4 * side * side * batch_heads <= _BLOCK_SCORES:
      side *= 2
  bq = bk = side
  if query_length is not None:
    bq = min(bq, query_length)
  if key_length is not None:
    bk = min(bk, key_length)
  return bq, bk


def blockwise_attention(query, key, value, *, mask=None, is_causal=False,
                        sliding_window=None, dropout_rate=0.0,
                        dropout_seed=None, block_sizes=None, query_group=1,
                        query_start=0, kv_cache=None, segment_ids=None):
  """Exact attention without the `[T, S]` scores; the query is pre-scaled.

  Same contract as `tf_mha.dot_product_attention` (no `return_scores`).

  Args:
    query: `[B, T, N, H]`, already multiplied by the scale.
    key: `[B, S, N, H]`.
    value: `[B, S, N, V]`.
    mask: boolean, broadcastable to `[B, N, T, S]`, or `None`.
    is_causal: query `t` sees keys `s <= t`; blocks above the diagonal are
      skipped.
    sliding_window: `None`, or an int `W`: query `t` sees keys with
      `|t - s| < W`; blocks wholly outside that band are skipped.
    dropout_rate: fraction of probabilities dropped (stateless, per block).
    dropout_seed: shape-`[2]` int seed; required when `dropout_rate > 0`.
    block_sizes: `(bq, bk)` static ints, or `None` to choose from shapes.
    query_group: query row `r` is at position `query_start + r //
      query_group` (grouped heads laid out as rows, see `tf_mha.ops`).
    query_start: the first query's position, an int or scalar int tensor;
      with `is_causal`, the key blocks past the last query's position are
      skipped at run time.
    kv_cache: `[B, 2, S, N, H]`, keys then values, of which `key` and `value`
      are the two halves: a decode step reads its key blocks straight from
      it (under XLA, slicing the halves out first copies the whole cache).
    segment_ids: None, or `(query ids [B, T], key ids [B, S], self)`: query
      `t` sees key `s` only where their ids are equal and not 0; with
      `self` (the keys' ids are the queries'), each query block visits only
      the key blocks of its segments (`segments.block_ranges`).

  Returns:
    `[B, T, N, V]` in the dtype of `query`.
  """
  band = banded.applies(segment_ids, mask, query_start)
  plan = _plan(query, key, block_sizes, is_causal, sliding_window,
               dropout_rate, query_group, query_start, segment_ids, band)
  if mask is not None:
    mask = blocks.prepare_mask(mask, plan)
  if dropout_rate > 0.0:
    dropout_seed = tf.cast(dropout_seed, tf.int32)

  # One query block (a decode step's few rows) over static key blocks:
  # each key block is sliced only if it is in range, so the keys past the
  # last position (an empty cache's tail) cost nothing; otherwise all are
  # laid out once and visited in a loop.
  lazy = (isinstance(plan.nq, int) and plan.nq == 1 and
          isinstance(plan.pad_s, int) and plan.pad_s == 0 and
          isinstance(plan.nk, int) and plan.nk <= _MAX_UNROLLED_BLOCKS)

  if kv_cache is not None and lazy and plan.bq <= _DECODE_ROWS:
    # A decode step (no gradient): blocks sliced from the cache itself.
    kb, vb = (blocks.Blocks(kv_cache, plan.bk, 0, True, part=i) for i in (0, 1))
    return _forward_one_query_block(
        plan, blocks.to_blocks(query, plan.bq, plan.pad_t), kb, vb, mask,
        dropout_seed, value=lambda: kv_cache[:, 1], length=plan.t)

  @tf.custom_gradient
  def attend(q, k, v):
    if band:  # packed rows: every query block at once (`banded`)
      out_blocks, row_max, row_sum, fully_masked = banded.forward(
          plan, q, k, v, dropout_seed)
    else:
      qb = blocks.to_blocks(q, plan.bq, plan.pad_t)
      kb, vb = (blocks.Blocks(x, plan.bk, plan.pad_s, lazy) for x in (k, v))
      forward = _forward_one_query_block if lazy else _forward
      out_blocks, row_max, row_sum, fully_masked = forward(
          plan, qb, kb, vb, mask, dropout_seed)
    out_blocks = _uniform_where_unseen(out_blocks, fully_masked, lambda: v,
                                       plan.acc)
    out = blocks.from_blocks(out_blocks, plan.t)

    def grad(d_out):
      d_out = tf.cast(d_out, plan.acc)
      dob = blocks.to_blocks(d_out, plan.bq, plan.pad_t)
      # delta_t = sum_v dO * O, the softmax-Jacobian row term.
      delta = tf.reduce_sum(dob * out_blocks, axis=-1)  # [nq, B, N, bq]
      stats = (row_max, row_sum)
      if band:
        dqb, dkb, dvb = banded.backward(plan, q, k, v, d_out, stats, delta,
                                        dropout_seed)
      else:
        dqb, dkb, dvb = _backward(plan, qb, kb.all(), vb.all(), dob, stats,
                                  delta, mask=mask, seed=dropout_seed)
      dq = blocks.from_blocks(dqb, plan.t)
      dk = blocks.from_blocks(dkb, plan.s)
      dv = blocks.from_blocks(dvb, plan.s)
      dv += _unseen_value_grad(plan, dob, fully_masked)
      return (tf.cast(dq, q.dtype), tf.cast(dk, k.dtype), tf.cast(dv, v.dtype))

    return tf.cast(out, q.dtype), grad

  return attend(query, key, value)


def _plan(query, key, block_sizes, is_causal, window, rate, group, start,
          segment_ids, band):
  """The `blocks.Plan` of a call (block sizes chosen when not given)."""
  batch_heads = None
  if query.shape[0] is not None and query.shape[2] is not None:
    batch_heads = query.shape[0] * query.shape[2]
  bq, bk = checks.block_sizes(block_sizes) or choose_block_sizes(
      query.shape[1], key.shape[1], batch_heads)
  plan = blocks.make_plan(query, key, bq, bk, is_causal, window,
                          rate)._replace(group=group, start=start)
  if segment_ids is not None:
    plan = blocks.with_segments(plan, *segment_ids, find_ranges=not band)
  return plan


def _accumulate(plan, q_i, kb, vb, mask, seed, i, j, state):
  """Query block `i` meets key block `j`: the online-softmax update of its
  running `(max m, sum l, accumulator)`."""
  m, l, acc = state
  s = blocks.block_scores(plan, q_i, kb[j], mask, i, j)
  m_new = tf.maximum(m, tf.reduce_max(s, axis=-1))
  p = tf.exp(s - tf.expand_dims(m_new, -1))
  correction = tf.exp(m - m_new)
  l = l * correction + tf.reduce_sum(p, axis=-1)
  if plan.rate > 0.0:
    keep = blocks.keep_mask(plan, seed, i, j, tf.shape(p))
    p = tf.where(keep, p / (1.0 - plan.rate), tf.zeros_like(p))
  v_j = vb[j]
  pv = tf.einsum("BNTS,BNSV->BNTV", tf.cast(p, v_j.dtype), v_j)
  acc = acc * tf.expand_dims(correction, -1) + tf.cast(pv, plan.acc)
  return m_new, l, acc


def _forward_one_query_block(plan, qb, kb, vb, mask, seed, value=None,
                             length=None):
  """`_forward` for a single query block (a decode step), unrolled over
  the key blocks: each is a branch that runs only when the block is in
  range, and reads its keys by a static slice. (XLA copies the operands of
  a `while` loop: a loop over a cache's blocks read the whole cache.)"""
  results = tuple(tf.expand_dims(x, 0) for x in _query_block_unrolled(
      plan, qb, kb, vb, mask, seed, 0))
  if value is None:
    return results
  # The whole output, `[B, T, N, V]` (`value()`: the values, read only for
  # rows with no visible key).
  out_blocks = _uniform_where_unseen(results[0], results[3], value, plan.acc)
  return tf.cast(blocks.from_blocks(out_blocks, length), qb.dtype)


def _query_block_unrolled(plan, qb, kb, vb, mask, seed, i):
  """Query block `i` (static) over the key blocks in range, each a branch:
  its `(out, m, l, fully masked)`, each `[B, N, bq(, V)]`."""
  q_i = qb[i]
  lead = tf.shape(qb)[1:3]  # [B, N]
  row_shape = tf.concat([lead, [plan.bq]], 0)
  state = (tf.fill(row_shape, tf.constant(float("-inf"), plan.acc)),
           tf.zeros(row_shape, plan.acc),
           tf.zeros(tf.concat([lead, [plan.bq, vb.width]], 0), plan.acc))
  first, end = blocks.key_block_range(plan, i)
  for j in range(plan.nk):
    state = tf.cond(
        tf.logical_and(j >= first, j < end),
        lambda j=j, state=state: _accumulate(plan, q_i, kb, vb, mask, seed,
                                             i, j, state),
        lambda state=state: state)
  m, l, acc = state
  out = acc / tf.expand_dims(l, -1)
  return out, m, l, m <= masks_lib.large_negative(plan.acc)


def _uniform_where_unseen(out_blocks, fully_masked, value, dtype):
  """Rows with no visible key attend uniformly: the mean of all values,
  computed only when there is such a row (it reads every value)."""
  def mean():
    return _key_mean(value(), dtype)

  def zeros():
    v = value()
    return tf.zeros(tf.concat([tf.shape(v)[:1], tf.shape(v)[2:3], [1],
                               tf.shape(v)[3:]], 0), dtype)

  v_mean = tf.cond(tf.reduce_any(fully_masked), mean, zeros)
  return tf.where(tf.expand_dims(fully_masked, -1),
                  tf.expand_dims(v_mean, 0), out_blocks)


def _unseen_value_grad(plan, dob, fully_masked):
  """The values' gradient from rows with no visible key, which attend
  uniformly: each key gets their dO / S, `[B, 1, N, V]`."""
  dob_masked = tf.where(tf.expand_dims(fully_masked, -1), dob,
                        tf.zeros_like(dob))
  dv = tf.reduce_sum(dob_masked, axis=[0, 3]) / tf.cast(plan.s, plan.acc)
  return tf.expand_dims(dv, 1)  # [B, 1, N, V]


def _forward(plan, qb, kb, vb, mask, seed):
  """Returns out `[nq, B, N, bq, V]`, then the row max `m`, row sum `l` and
  fully-masked flags, each `[nq, B, N, bq]`.

  Written for TFLite as well: new axes come from `tf.expand_dims` (an
  ellipsis slice with a new axis is not a builtin), and the outputs'
  TensorArrays have element shapes of known rank (static with a static
  batch, which TFLite needs to lower them to builtins).
  """
  big_neg = masks_lib.large_negative(plan.acc)
  lead = tf.shape(qb)[1:3]  # [B, N]
  row_shape = tf.concat([lead, [plan.bq]], 0)
  acc_shape = tf.concat([lead, [plan.bq, vb.width]], 0)

  def query_block(i, outs, maxes, sums, masked):
    q_i = tf.gather(qb, i)

    def key_block(j, m, l, acc):
      return (j + 1,) + _accumulate(plan, q_i, kb, vb, mask, seed, i, j,
                                    (m, l, acc))

    first, end = blocks.key_block_range(plan, i)
    init = (tf.convert_to_tensor(first),
            tf.fill(row_shape, tf.constant(float("-inf"), plan.acc)),
            tf.zeros(row_shape, plan.acc), tf.zeros(acc_shape, plan.acc))
    _, m, l, acc = tf.while_loop(lambda j, *_: j < end, key_block, init)
    out = acc / tf.expand_dims(l, -1)
    # m and l apart, not log-sum-exp m + log(l): with logits of 1e4 and more
    # float32 cannot hold m + log(l) closely enough to give the row's top key
    # a probability of exactly 1, and the backward pass's P (dP - D) stops
    # cancelling (gradients of 1e4 where the true ones are 1e-23).
    return (i + 1, outs.write(i, out), maxes.write(i, m), sums.write(i, l),
            masked.write(i, m <= big_neg))

  # Element shapes of known rank let TFLite lower the lists to builtins.
  rows = tf.TensorShape([qb.shape[1], qb.shape[2], plan.bq])
  arrays = [tf.TensorArray(dtype, size=plan.nq, element_shape=shape)
            for dtype, shape in ((plan.acc, rows.concatenate([vb.width])),
                                 (plan.acc, rows), (plan.acc, rows),
                                 (tf.bool, rows))]
  _, outs, maxes, sums, masked = tf.while_loop(
      lambda i, *_: i < plan.nq, query_block, [tf.constant(0)] + arrays)
  return outs.stack(), maxes.stack(), sums.stack(), masked.stack()


def _backward(plan, qb, kb, vb, dob, stats, delta, mask, seed):
  """Gradients in block layout, recomputing each block's probabilities from
  the forward pass's row max and row sum (`stats`)."""
  acc = plan.acc
  row_max, inv_sum = stats[0], 1.0 / stats[1]
  dq_buffer = tf.zeros(tf.shape(qb), acc)

  def key_block(j, dq_buf, dks, dvs):
    k_j = tf.gather(kb, j)
    v_j = tf.gather(vb, j)

    def query_block(i, dq_buf, dk, dv):
      dq_i, dk_j, dv_j = _pair_gradients(
          plan, tf.gather(qb, i), k_j, v_j, tf.gather(dob, i),
          tf.gather(row_max, i), tf.gather(inv_sum, i), tf.gather(delta, i),
          mask, seed, i, j)
      dq_buf = tf.tensor_scatter_nd_add(dq_buf, [[i]], dq_i[None])
      return i + 1, dq_buf, dk + dk_j, dv + dv_j

    first, end = blocks.query_block_range(plan, j)
    init = (tf.convert_to_tensor(first), dq_buf,
            tf.zeros(tf.shape(k_j), acc), tf.zeros(tf.shape(v_j), acc))
    _, dq_buf, dk, dv = tf.while_loop(lambda i, *_: i < end, query_block, init)
    return j + 1, dq_buf, dks.write(j, dk), dvs.write(j, dv)

  arrays = [tf.TensorArray(acc, size=plan.nk) for _ in range(2)]
  _, dq_buffer, dks, dvs = tf.while_loop(
      lambda j, *_: j < plan.nk, key_block, [tf.constant(0), dq_buffer] + arrays)
  return dq_buffer, dks.stack(), dvs.stack()


def _pair_gradients(plan, q_i, k_j, v_j, do_i, m_i, inv_l_i, delta_i, mask,
                    seed, i, j):
  """Query block `i` and key block `j`'s parts of `(dq_i, dk_j, dv_j)`."""
  acc = plan.acc
  s = blocks.block_scores(plan, q_i, k_j, mask, i, j)
  # Masked and padded entries (and so fully masked rows) get p = 0.
  p = tf.where(s > masks_lib.large_negative(acc),
               tf.exp(s - tf.expand_dims(m_i, -1)) * tf.expand_dims(inv_l_i, -1),
               tf.zeros_like(s))
  dp = tf.einsum("BNTV,BNSV->BNTS", do_i, tf.cast(v_j, acc))
  p_used = p
  if plan.rate > 0.0:
    keep = blocks.keep_mask(plan, seed, i, j, tf.shape(p))
    scale = 1.0 / (1.0 - plan.rate)
    p_used = tf.where(keep, p * scale, tf.zeros_like(p))
    dp = tf.where(keep, dp * scale, tf.zeros_like(dp))
  dv = tf.einsum("BNTS,BNTV->BNSV", p_used, do_i)
  ds = p * (dp - tf.expand_dims(delta_i, -1))  # [B, N, bq, bk]
  dq = tf.einsum("BNTS,BNSH->BNTH", ds, tf.cast(k_j, acc))
  dk = tf.einsum("BNTS,BNTH->BNSH", ds, tf.cast(q_i, acc))
  return dq, dk, dv


def _key_mean(v, dtype):
  """Mean of the values over the keys, `[B, N, 1, V]`, in `dtype`."""
  mean = tf.reduce_mean(tf.cast(v, dtype), axis=1)  # [B, N, V]
  return tf.expand_dims(mean, 2)
