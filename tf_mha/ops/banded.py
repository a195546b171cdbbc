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
Step 0 runs outside the loop, and the loop (with the block layouts only it
reads) sits in a branch taken when some band is wider: packed rows whose
examples fit their blocks then cost what the same examples as rows cost.

Shapes as in `tf_mha.ops.flash`: blocks `[n, B, N, block, H]`; `I` indexes
query blocks in the einsums.
"""

import tensorflow as tf

from tf_mha.ops import blocks
from tf_mha.ops import masks as masks_lib


def applies(plan, mask):
  """Whether a call can take this path: segment ranges (self-attention),
  no dense mask, queries from position 0."""
  return (plan.segments is not None and plan.segments.key_ranges is not None
          and mask is None and isinstance(plan.start, int) and plan.start == 0)


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
  ranges = plan.segments.key_ranges
  first = tf.maximum(first, ranges[:, 0])
  return first, tf.maximum(first, tf.minimum(end, ranges[:, 1]))


def _scores(plan, qb, k, j, seed, w):
  """Masked scores of every query block with its key block `j` `[nq]`:
  `[nq, B, N, bq, bk]` in the accumulation dtype (masked entries hold
  `large_negative`, keys past the sequence -inf), and the dropout
  keep-mask of this step (or None)."""
  dtype = masks_lib.logits_dtype(qb.dtype)
  s = tf.cast(tf.einsum("IBNTH,IBNSH->IBNTS", tf.cast(qb, dtype),
                        tf.cast(k, dtype)), plan.acc)
  q_ids = plan.segments.query_ids  # [nq, B, bq]
  k_ids = tf.gather(plan.segments.key_ids, j)  # [nq, B, bk]
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


def _layout(plan, queries, keys):
  """Query-side `[B, T, N, .]` and key-side `[B, S, N, .]` tensors as
  blocks `[n, B, N, block, .]`."""
  return ([blocks.to_blocks(x, plan.bq, plan.pad_t) for x in queries] +
          [blocks.to_blocks(x, plan.bk, plan.pad_s) for x in keys])


def _rest_of_band(span, make_step, state):
  """`state` after the band's steps from `w = 1` on. Rows of examples that
  fit their blocks need none, and then there is no loop at all: XLA copies
  a loop's operands into its own layout. `make_step()` builds the step
  (and the blocks it reads) inside the loop's branch for the same reason."""
  widest = tf.reduce_max(span)

  def loop():
    return tf.while_loop(lambda w, *_: w < widest, make_step(),
                         (tf.constant(1),) + tuple(state))[1:]

  return tf.cond(widest > 1, loop, lambda: tuple(state))


def forward(plan, q, k, v, seed):
  """As `flash._forward`, from `q` `[B, T, N, H]`, `k`, `v` `[B, S, N, .]`:
  out `[nq, B, N, bq, V]`, row max, row sum and fully-masked flags
  `[nq, B, N, bq]`.

  The band's first step runs outside the loop: every query block takes
  one (a block with no real query row, span 0, comes out fully masked)."""
  first, end = _key_ranges(plan)
  span = end - first

  def visit(w, qb, kb, vb):
    """Step `w`'s scores, dropout keep-mask and pv product `[nq, ...]`."""
    j = tf.minimum(first + w, plan.nk - 1)
    s, dropped = _scores(plan, qb, tf.gather(kb, j), j, seed, w)

    def pv(p):
      if dropped is not None:
        p = tf.where(dropped, p / (1.0 - plan.rate), tf.zeros_like(p))
      v = tf.gather(vb, j)
      return tf.cast(tf.einsum("IBNTS,IBNSV->IBNTV", tf.cast(p, v.dtype), v),
                     plan.acc)
    return s, pv

  s, pv = visit(0, *_layout(plan, [q], [k, v]))
  m = tf.reduce_max(s, axis=-1)
  p = tf.exp(s - m[..., None])
  state = (m, tf.reduce_sum(p, axis=-1), pv(p))

  def make_step():
    qb, kb, vb = _layout(plan, [q], [k, v])

    def step(w, m, l, acc):
      s, pv = visit(w, qb, kb, vb)
      m_new = tf.maximum(m, tf.reduce_max(s, axis=-1))
      p = tf.exp(s - m_new[..., None])
      correction = tf.exp(m - m_new)
      l_new = l * correction + tf.reduce_sum(p, axis=-1)
      acc_new = acc * correction[..., None] + pv(p)
      active = (w < span)[:, None, None, None]  # a narrower band keeps its state
      return (w + 1, tf.where(active, m_new, m), tf.where(active, l_new, l),
              tf.where(active[..., None], acc_new, acc))
    return step

  m, l, acc = _rest_of_band(span, make_step, state)
  return (acc / l[..., None], m, l, m <= masks_lib.large_negative(plan.acc))


def backward(plan, q, k, v, d_out, stats, delta, seed):
  """As `flash._backward`, from `[B, L, N, .]` tensors (`d_out` in the
  accumulation dtype): `(dq [nq, ...], dk [nk, ...], dv [nk, ...])`, each
  step's key-block parts scattered onto their blocks. The first step runs
  outside the loop, as in `forward`."""
  first, end = _key_ranges(plan)
  span = end - first
  row_max, inv_sum = stats[0], 1.0 / stats[1]

  def parts(w, qb, dob, kb, vb):
    """Step `w`'s `(key blocks [nq, 1], dq, dk, dv)` `[nq, ...]`; zero for
    query blocks whose band is narrower than `w`."""
    j = tf.minimum(first + w, plan.nk - 1)
    k, v = tf.gather(kb, j), tf.gather(vb, j)
    s, dropped = _scores(plan, qb, k, j, seed, w)
    # Masked and padded entries (and so fully masked rows) get p = 0.
    seen = tf.logical_and(s > masks_lib.large_negative(plan.acc),
                          (w < span)[:, None, None, None, None])
    p = tf.where(seen, tf.exp(s - row_max[..., None]) * inv_sum[..., None],
                 tf.zeros_like(s))
    dp = tf.einsum("IBNTV,IBNSV->IBNTS", dob, tf.cast(v, plan.acc))
    p_used = p
    if dropped is not None:
      scale = 1.0 / (1.0 - plan.rate)
      p_used = tf.where(dropped, p * scale, tf.zeros_like(p))
      dp = tf.where(dropped, dp * scale, tf.zeros_like(dp))
    ds = p * (dp - delta[..., None])  # [nq, B, N, bq, bk]
    return (j[:, None],
            tf.einsum("IBNTS,IBNSH->IBNTH", ds, tf.cast(k, plan.acc)),
            tf.einsum("IBNTS,IBNTH->IBNSH", ds, tf.cast(qb, plan.acc)),
            tf.einsum("IBNTS,IBNTV->IBNSV", p_used, dob))

  layout = lambda: _layout(plan, [q, d_out], [k, v])
  kb_shape = lambda x: tf.concat([[plan.nk], tf.shape(x)[1:]], 0)
  j, dq, dk, dv = parts(0, *layout())
  state = (dq, tf.scatter_nd(j, dk, kb_shape(dk)),
           tf.scatter_nd(j, dv, kb_shape(dv)))

  def make_step():
    laid_out = layout()

    def step(w, dq, dk, dv):
      j, dq_w, dk_j, dv_j = parts(w, *laid_out)
      return (w + 1, dq + dq_w, tf.tensor_scatter_nd_add(dk, j, dk_j),
              tf.tensor_scatter_nd_add(dv, j, dv_j))
    return step

  return _rest_of_band(span, make_step, state)
