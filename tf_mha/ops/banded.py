"""The blockwise path for packed rows: every query block at once.

With segment ids (self-attention), query block `i` needs the key blocks
`[first_i, end_i)`: a band around the diagonal, a block or two wide for
short examples. Instead of a loop over query blocks and, inside it, over
their key blocks (many small products, and nested loops that cost more than
the products on a CPU under XLA), the loop runs over the band's offset `w`:
step `w` takes every query block with its key block `first_i + w`, as one
batched product `[nq, B, N, bq, bk]`. Query blocks whose band is narrower
than `w` keep their state. The work is `nq * max_i(end_i - first_i)`
blocks, which for packed rows of short examples is about `sum(L_i^2)`.

Step 0 visits each query block's diagonal (block `i` itself, read in place)
outside the loop. The rest of the band, its bounds and the block layouts
only it reads sit in a branch taken only when two blocks hold the same ids:
packed examples that fit their blocks cost about what they cost as rows.

Shapes as in `tf_mha.ops.flash`: blocks `[n, B, N, block, H]`; `I` indexes
query blocks in the einsums.
"""

import tensorflow as tf

from tf_mha.ops import blocks
from tf_mha.ops import masks as masks_lib
from tf_mha.ops import segments as segments_lib


def applies(segment_ids, mask, start):
  """Whether a call can take this path: segment ids `(query ids, key ids,
  self-attention)` of self-attention, no dense mask, queries from position
  0."""
  return (segment_ids is not None and segment_ids[2] and mask is None and
          isinstance(start, int) and start == 0)


def _key_ranges(plan):
  """`(first, end)` `[nq]`: the key blocks each query block needs (its
  segments', within the causal triangle and the sliding-window band)."""
  i = tf.range(plan.nq)
  first_position = (i * plan.bq) // plan.group
  last_position = ((i + 1) * plan.bq - 1) // plan.group
  first = tf.zeros_like(i)
  last_key = None
  if plan.window is not None:
    first = tf.maximum(first_position - plan.window + 1, 0) // plan.bk
    last_key = last_position + plan.window - 1
  if plan.is_causal:
    last_key = last_position
  end = tf.fill(tf.shape(i), tf.cast(plan.nk, i.dtype))
  if last_key is not None:
    end = tf.minimum(end, last_key // plan.bk + 1)
  key_ids = plan.segments.key_ids  # [nk, B, bk]: the ids, as a row again
  ids = tf.reshape(tf.transpose(key_ids, [1, 0, 2]),
                   [tf.shape(key_ids)[1], -1])[:, :plan.s]
  ranges, _ = segments_lib.block_ranges(ids, plan.group, plan.bq, plan.bk,
                                        plan.nq, plan.nk)
  first = tf.maximum(first, ranges[:, 0])
  return first, tf.maximum(first, tf.minimum(end, ranges[:, 1]))


def _scores(plan, qb, k, j, seed, w):
  """Masked scores of every query block with its key block `j` `[nq]`
  (None: block `i` itself): `[nq, B, N, bq, bk]` in the accumulation dtype
  (masked entries hold `large_negative`, keys past the sequence -inf), and
  the dropout keep-mask of this step (or None)."""
  dtype = masks_lib.logits_dtype(qb.dtype)
  s = tf.cast(tf.einsum("IBNTH,IBNSH->IBNTS", tf.cast(qb, dtype),
                        tf.cast(k, dtype)), plan.acc)
  q_ids = plan.segments.query_ids  # [nq, B, bq]
  k_ids = _take(plan.segments.key_ids, j)  # [nq, B, bk]
  if j is None:
    j = tf.range(plan.nq)
  keep = tf.logical_and(tf.equal(q_ids[..., None], k_ids[:, :, None, :]),
                        (q_ids != 0)[..., None])[:, :, None]  # [nq, B, 1, bq, bk]
  rows = tf.range(plan.nq)[:, None] * plan.bq + tf.range(plan.bq)[None]
  query_position = (rows // plan.group)[:, None, None, :, None]
  key_position = (j[:, None] * plan.bk + tf.range(plan.bk)[None])[:, None, None, None, :]
  if plan.is_causal:
    keep = tf.logical_and(keep, key_position <= query_position)
  if plan.window is not None:
    keep = tf.logical_and(keep, tf.abs(query_position - key_position) < plan.window)
  s = masks_lib.mask_logits(s, keep)
  s = tf.where(key_position < plan.s, s, tf.constant(float("-inf"), plan.acc))
  dropped = None
  if plan.rate > 0.0:
    step_seed = tf.random.experimental.stateless_fold_in(seed, w)
    dropped = tf.random.stateless_uniform(tf.shape(s), step_seed) >= plan.rate
  return s, dropped


def _take(x, j):
  """Blocks `j` of `x` `[n, ...]`; `x` itself for `j` None (block `i` for
  query block `i`)."""
  return x if j is None else tf.gather(x, j)


def _diagonal(plan):
  """The key block of each query block's first position, `[nq]`: step 0's.
  None when it is block `i` itself (one query row per position, square
  blocks), read in place: no gather, and no scatter of its gradients."""
  if plan.group == 1 and plan.bq == plan.bk:
    return None
  i = tf.range(plan.nq)
  return tf.minimum(i * plan.bq // plan.group // plan.bk, plan.nk - 1)


def _later_steps(plan):
  """Steps 1 on visit the rest of each query block's band `[first, end)`,
  in order (step 0 visited the diagonal; a block outside the band only
  adds masked scores).

  Returns:
    `(later, key_block)`: each query block's number of steps after step 0
    `[nq]`, and `key_block(w)`, the blocks `[nq]` of step `w >= 1`.
  """
  first, end = _key_ranges(plan)
  diagonal = _diagonal(plan)
  if diagonal is None:
    diagonal = tf.range(plan.nq)
  inside = tf.logical_and(first <= diagonal, diagonal < end)
  later = end - first - tf.cast(inside, first.dtype)
  skipped = tf.where(inside, diagonal, plan.nk)

  def key_block(w):
    j = first + w - 1
    return tf.minimum(tf.where(j >= skipped, j + 1, j), plan.nk - 1)

  return later, key_block


def _blocks_share_segments(plan):
  """Whether a query block may need a key block other than its diagonal:
  for block `i` itself (`_diagonal` None), whether the ranges of nonzero
  ids of two blocks meet (a cheap test on the ids alone, `[nq, nq, B]`;
  packed examples that fit their blocks never meet); True otherwise."""
  if _diagonal(plan) is not None:
    return True
  ids = plan.segments.key_ids  # [n, B, block]
  real = ids != 0
  lo = tf.reduce_min(tf.where(real, ids, ids.dtype.max), axis=2)  # [n, B]
  hi = tf.reduce_max(tf.where(real, ids, 0), axis=2)
  n = tf.range(tf.shape(ids)[0])
  other = (n[:, None] < n[None, :])[..., None]  # each pair once
  meet = tf.logical_and(hi[:, None] >= lo[None, :], hi[None, :] >= lo[:, None])
  return tf.reduce_any(tf.logical_and(other, meet))


def _layout(plan, queries, keys):
  """Query-side `[B, T, N, .]` and key-side `[B, S, N, .]` tensors as
  blocks `[n, B, N, block, .]`."""
  return ([blocks.to_blocks(x, plan.bq, plan.pad_t) for x in queries] +
          [blocks.to_blocks(x, plan.bk, plan.pad_s) for x in keys])


def _rest_of_band(plan, make_step, state):
  """`state` after steps `1 .. max(later)` of `make_step(later, key_block)`
  (see `_later_steps`).

  Packed examples that fit their blocks need no step after the first, and
  then there is no loop at all: XLA copies a loop's operands into its own
  layout. The test (`_blocks_share_segments`) reads only the ids; the
  bounds, and the blocks the loop reads, are found inside the loop's
  branch."""
  def loop():
    later, key_block = _later_steps(plan)
    widest = tf.reduce_max(later)
    return tf.while_loop(lambda w, *_: w <= widest, make_step(later, key_block),
                         (tf.constant(1),) + tuple(state))[1:]

  needed = _blocks_share_segments(plan)
  if needed is True:
    return loop()
  return tf.cond(needed, loop, lambda: tuple(state))


def forward(plan, q, k, v, seed):
  """As `flash._forward`, from `q` `[B, T, N, H]`, `k`, `v` `[B, S, N, .]`:
  out `[nq, B, N, bq, V]`, row max, row sum and fully-masked flags
  `[nq, B, N, bq]`.

  Step 0 (`_diagonal`) runs outside the loop: a row that sees nothing there
  holds `large_negative` as its max until a later step replaces it (and
  stays fully masked if none does)."""
  diagonal = _diagonal(plan)

  def visit(w, j, qb, kb, vb):
    """Step `w`'s scores `[nq, ...]` with key blocks `j`, and `pv(p)`."""
    s, dropped = _scores(plan, qb, _take(kb, j), j, seed, w)

    def pv(p):
      if dropped is not None:
        p = tf.where(dropped, p / (1.0 - plan.rate), tf.zeros_like(p))
      v = _take(vb, j)
      return tf.cast(tf.einsum("IBNTS,IBNSV->IBNTV", tf.cast(p, v.dtype), v),
                     plan.acc)
    return s, pv

  s, pv = visit(0, diagonal, *_layout(plan, [q], [k, v]))
  m = tf.reduce_max(s, axis=-1)
  p = tf.exp(s - m[..., None])
  state = (m, tf.reduce_sum(p, axis=-1), pv(p))

  def make_step(later, key_block):
    qb, kb, vb = _layout(plan, [q], [k, v])

    def step(w, m, l, acc):
      s, pv = visit(w, key_block(w), qb, kb, vb)
      m_new = tf.maximum(m, tf.reduce_max(s, axis=-1))
      p = tf.exp(s - m_new[..., None])
      correction = tf.exp(m - m_new)
      l_new = l * correction + tf.reduce_sum(p, axis=-1)
      acc_new = acc * correction[..., None] + pv(p)
      active = (w <= later)[:, None, None, None]  # a narrower band keeps its state
      return (w + 1, tf.where(active, m_new, m), tf.where(active, l_new, l),
              tf.where(active[..., None], acc_new, acc))
    return step

  m, l, acc = _rest_of_band(plan, make_step, state)
  return (acc / l[..., None], m, l, m <= masks_lib.large_negative(plan.acc))


def backward(plan, q, k, v, d_out, stats, delta, seed):
  """As `flash._backward`, from `[B, L, N, .]` tensors (`d_out` in the
  accumulation dtype): `(dq [nq, ...], dk [nk, ...], dv [nk, ...])`, each
  step's key-block parts added onto their blocks. Steps as in `forward`."""
  diagonal = _diagonal(plan)
  row_max, inv_sum = stats[0], 1.0 / stats[1]

  def parts(w, j, qb, dob, kb, vb, active=None):
    """Step `w`'s `(dq, dk, dv)` `[nq, ...]` with key blocks `j`; zero
    where `active` `[nq]` (if given) is False."""
    k, v = _take(kb, j), _take(vb, j)
    s, dropped = _scores(plan, qb, k, j, seed, w)
    # Masked and padded entries (and so fully masked rows) get p = 0.
    seen = s > masks_lib.large_negative(plan.acc)
    if active is not None:
      seen = tf.logical_and(seen, active[:, None, None, None, None])
    p = tf.where(seen, tf.exp(s - row_max[..., None]) * inv_sum[..., None],
                 tf.zeros_like(s))
    dp = tf.einsum("IBNTV,IBNSV->IBNTS", dob, tf.cast(v, plan.acc))
    p_used = p
    if dropped is not None:
      scale = 1.0 / (1.0 - plan.rate)
      p_used = tf.where(dropped, p * scale, tf.zeros_like(p))
      dp = tf.where(dropped, dp * scale, tf.zeros_like(dp))
    ds = p * (dp - delta[..., None])  # [nq, B, N, bq, bk]
    return (tf.einsum("IBNTS,IBNSH->IBNTH", ds, tf.cast(k, plan.acc)),
            tf.einsum("IBNTS,IBNTH->IBNSH", ds, tf.cast(qb, plan.acc)),
            tf.einsum("IBNTS,IBNTV->IBNSV", p_used, dob))

  layout = lambda: _layout(plan, [q, d_out], [k, v])
  dq, dk, dv = parts(0, diagonal, *layout())
  if diagonal is not None:
    shape = lambda x: tf.concat([[plan.nk], tf.shape(x)[1:]], 0)
    dk, dv = (tf.scatter_nd(diagonal[:, None], x, shape(x)) for x in (dk, dv))

  def make_step(later, key_block):
    laid_out = layout()

    def step(w, dq, dk, dv):
      j = key_block(w)
      dq_w, dk_j, dv_j = parts(w, j, *laid_out, active=w <= later)
      return (w + 1, dq + dq_w, tf.tensor_scatter_nd_add(dk, j[:, None], dk_j),
              tf.tensor_scatter_nd_add(dv, j[:, None], dv_j))
    return step

  return _rest_of_band(plan, make_step, (dq, dk, dv))
