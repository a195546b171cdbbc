"""The blockwise path's plan: how queries and keys are cut into blocks,
which blocks meet (causal triangle, sliding-window band, cache position),
and each block's masked scores.

Shapes as in `tf_mha.ops.flash`: blocks `[n, B, N, block, H]`.
"""

import collections

import tensorflow as tf

from tf_mha.ops import masks as masks_lib
from tf_mha.ops import segments as segments_lib


# `segments`: None, or `Segments` (see `with_segments`).
Plan = collections.namedtuple(
    "Plan", "t s bq bk nq nk pad_t pad_s is_causal window rate acc group start "
    "segments")
# Segment ids per block, `[nq, B, bq]` (query rows) and `[nk, B, bk]`, and
# the `[n, 2]` block ranges that `segments.block_ranges` found (None: every
# block, for ids that are not the queries' own; or not computed: the packed
# path, `banded`, finds them itself when it needs them).
Segments = collections.namedtuple(
    "Segments", "query_ids key_ids key_ranges query_ranges")


def make_plan(query, key, bq, bk, is_causal, window, rate):
  t = length(query)
  s = length(key)
  nq = ceil_div(t, bq)
  nk = ceil_div(s, bk)
  return Plan(t=t, s=s, bq=bq, bk=bk, nq=nq, nk=nk,
               pad_t=nq * bq - t, pad_s=nk * bk - s,
               is_causal=is_causal, window=window, rate=float(rate),
               acc=masks_lib.softmax_dtype(query.dtype), group=1, start=0,
               segments=None)


def with_segments(plan, query_ids, key_ids, self_attention, find_ranges=True):
  """`plan` with segment ids `[B, T]`, `[B, S]` laid out per block; for
  self-attention (and `find_ranges`), with the key and query block ranges
  they allow."""
  ranges = (None, None)
  if self_attention and find_ranges:
    ranges = segments_lib.block_ranges(query_ids, plan.group, plan.bq,
                                       plan.bk, plan.nq, plan.nk)
  rows = tf.repeat(query_ids, plan.group, axis=1)  # [B, T * G]
  return plan._replace(segments=Segments(
      _id_blocks(rows, plan.bq, plan.nq), _id_blocks(key_ids, plan.bk, plan.nk),
      *ranges))


def _id_blocks(ids, block, count):
  """ids `[B, L]` -> `[count, B, block]`, padded with 0 (padding)."""
  ids = tf.pad(ids, [[0, 0], [0, count * block - tf.shape(ids)[1]]])
  return tf.transpose(tf.reshape(ids, [tf.shape(ids)[0], count, block]), [1, 0, 2])


def length(x):
  return x.shape[1] if x.shape[1] is not None else tf.shape(x)[1]


def ceil_div(a, b):
  return -(-a // b) if isinstance(a, int) else (a + b - 1) // b


class Blocks:
  """Key or value blocks `[B, N, bk, H]` by index, from `[B, S, N, H]`:
  each sliced when the loop reaches it (`lazy`, `S` a multiple of `bk`), or
  all laid out at once (`to_blocks`) and gathered."""

  def __init__(self, x, block, pad, lazy, part=None):
    """`part`: `x` is a cache `[B, 2, S, N, H]` and these are its keys (0)
    or values (1), sliced from it block by block (`lazy` only)."""
    self.width = x.shape[-1]
    self._x, self._block, self._pad, self._lazy = x, block, pad, lazy
    self._part = part
    self._blocks = None if lazy else to_blocks(x, block, pad)

  def all(self):
    """Every block, `[n, B, N, bk, H]`."""
    return to_blocks(self._x, self._block, self._pad) if self._lazy else self._blocks

  def __getitem__(self, j):
    if not self._lazy:
      return tf.gather(self._blocks, j)
    rows = slice(j * self._block, (j + 1) * self._block)
    part = (self._x[:, rows] if self._part is None else
            self._x[:, self._part, rows])  # [B, bk, N, H]
    return tf.transpose(part, [0, 2, 1, 3])


def to_blocks(x, block, pad):
  """`[B, L, N, H]` -> `[n, B, N, block, H]` in the input dtype."""
  x = tf.transpose(x, [0, 2, 1, 3])  # [B, N, L, H]
  if not (isinstance(pad, int) and pad == 0):
    x = tf.pad(x, [[0, 0], [0, 0], [0, pad], [0, 0]])
  shape = tf.shape(x)
  x = tf.reshape(x, [shape[0], shape[1], -1, block, x.shape[-1]])
  return tf.transpose(x, [2, 0, 1, 3, 4])


def from_blocks(x, length):
  """`[n, B, N, block, H]` -> `[B, length, N, H]`."""
  x = tf.transpose(x, [1, 0, 3, 2, 4])  # [B, n, block, N, H]
  shape = tf.shape(x)
  x = tf.reshape(x, [shape[0], -1, x.shape[3], x.shape[4]])
  return x[:, :length]


def prepare_mask(mask, plan):
  """Rank-4 `[Bm, Nm, Tm, Sm]` mask, padded along T and S where not 1."""
  while mask.shape.rank < 4:
    mask = tf.expand_dims(mask, 0)
  pads = [[0, 0], [0, 0], [0, 0], [0, 0]]
  if mask.shape[2] != 1:
    pads[2][1] = plan.pad_t
  if mask.shape[3] != 1:
    pads[3][1] = plan.pad_s
  return tf.pad(mask, pads)


def mask_block(mask, plan, i, j):
  rows = 1 if mask.shape[2] == 1 else plan.bq
  cols = 1 if mask.shape[3] == 1 else plan.bk
  begin = [0, 0, 0 if rows == 1 else i * plan.bq, 0 if cols == 1 else j * plan.bk]
  return tf.slice(mask, begin, [-1, -1, rows, cols])


def block_scores(plan, q_i, k_j, mask, i, j):
  """Masked scores of one block in the accumulation dtype, `[B, N, bq, bk]`.

  Masked entries hold `large_negative(acc)`; padded keys hold -inf, so a
  fully masked row still weighs only real keys.
  """
  dtype = masks_lib.logits_dtype(q_i.dtype)
  s = tf.einsum("BNTH,BNSH->BNTS", tf.cast(q_i, dtype), tf.cast(k_j, dtype))
  s = tf.cast(s, plan.acc)
  keep = masks_lib.position_mask(
      plan.bq, plan.bk, causal=plan.is_causal, window=plan.window,
      query_offset=i * plan.bq, key_offset=j * plan.bk,
      query_group=plan.group, query_start=plan.start)
  if mask is not None:
    keep = masks_lib.combine_masks(keep, mask_block(mask, plan, i, j))
  if plan.segments is not None:
    q_ids = tf.gather(plan.segments.query_ids, i)  # [B, bq]
    k_ids = tf.gather(plan.segments.key_ids, j)  # [B, bk]
    keep = masks_lib.combine_masks(keep, segments_lib.mask(q_ids, k_ids))
  if keep is not None:
    s = masks_lib.mask_logits(s, keep)
  if not (isinstance(plan.pad_s, int) and plan.pad_s == 0):
    real = masks_lib.prefix_mask(plan.bk, plan.s, key_offset=j * plan.bk)
    s = tf.where(real, s, tf.constant(float("-inf"), plan.acc))
  return s


def keep_mask(plan, seed, i, j, shape):
  """The dropout keep-mask of block (i, j); identical in forward and backward."""
  block_seed = tf.random.experimental.stateless_fold_in(seed, i * plan.nk + j)
  return tf.random.stateless_uniform(shape, block_seed) >= plan.rate


def row_position(plan, row):
  """The position of query row `row` (see `blockwise_attention`)."""
  return plan.start + row // plan.group


def key_block_range(plan, i):
  """`[first, end)` of the key blocks query block `i` visits: all of them, or
  those that meet the causal triangle and the sliding-window band."""
  first_position = row_position(plan, i * plan.bq)
  last_position = row_position(plan, (i + 1) * plan.bq - 1)
  first, last_key = 0, None  # the last key position it sees; None: all
  if plan.window is not None:
    first = tf.maximum(first_position - plan.window + 1, 0) // plan.bk
    last_key = last_position + plan.window - 1
  if plan.is_causal:
    last_key = last_position
  end = plan.nk
  if last_key is not None:
    end = tf.maximum(first, tf.minimum(plan.nk, last_key // plan.bk + 1))
  ranges = plan.segments and plan.segments.key_ranges
  return _intersect(first, end, ranges, i)


def query_block_range(plan, j):
  """`[first, end)` of the query blocks that see key block `j`."""
  # Positions -> rows: position p holds rows [(p - start) * G, ... + G).
  row = lambda position: (position - plan.start) * plan.group
  first_row, last_row = 0, None  # the rows that see it; None: to the last
  if plan.window is not None:
    first_row = tf.maximum(row(j * plan.bk - plan.window + 1), 0)
    last_row = row((j + 1) * plan.bk - 1 + plan.window - 1) + plan.group - 1
  if plan.is_causal:
    first_row = tf.maximum(row(j * plan.bk), 0)
  first = tf.minimum(first_row // plan.bq, plan.nq)
  end = plan.nq
  if last_row is not None:
    end = tf.maximum(first, tf.minimum(plan.nq, last_row // plan.bq + 1))
  ranges = plan.segments and plan.segments.query_ranges
  return _intersect(first, end, ranges, j)


def _intersect(first, end, ranges, index):
  """`[first, end)` within the segment range `ranges[index]`, if any."""
  if ranges is None:
    return first, end
  bounds = tf.gather(ranges, index)
  first = tf.maximum(first, bounds[0])
  return first, tf.maximum(first, tf.minimum(end, bounds[1]))
