"""Segment ids: several examples packed into one row.

`segment_ids` `[B, T]` (queries) and `[B, S]` (keys) are ints; query `t`
sees key `s` only when their ids are equal and not 0 (0 marks padding, as
in seqio's packer). Segments are contiguous runs in a packed row, so a
query block needs only the keys from the start of its first segment to the
end of its last: `block_ranges` finds those bounds at run time (static
shapes, no host transfer), and the blockwise path skips the rest.

Shapes as in `tf_mha.ops.core`; `G` query rows per position (grouped heads).
"""

import tensorflow as tf

from tf_mha.ops import checks

_NO_POSITION = 2**30  # a bound that no real position reaches


def check_ids(name, ids, batch, length):
  """`ids` as an int32 `[B, L]` tensor, or a named error."""
  ids = checks.tensor(name, ids)
  if not (ids.dtype.is_integer or ids.dtype.is_bool):
    raise TypeError(f"`{name}` must hold integers (0 for padding). "
                    f"Received: {name} of dtype {ids.dtype.name}")
  expected = tf.TensorShape([batch, length])
  if ids.shape.rank != 2 or not ids.shape.is_compatible_with(expected):
    raise ValueError(f"`{name}` must have shape [batch, length] = "
                     f"{expected.as_list()}. Received: {name}.shape={ids.shape}")
  return tf.cast(ids, tf.int32)


def mask(query_ids, key_ids):
  """Boolean `[B, 1, T, S]`: same id, and not padding."""
  same = tf.equal(query_ids[:, :, None], key_ids[:, None, :])  # [B, T, S]
  return tf.expand_dims(tf.logical_and(same, query_ids[:, :, None] != 0), 1)


def positions(segment_ids):
  """Each token's position inside its own segment, `[B, T]` int32: 0 at the
  start of every segment (and on padding, id 0), counting up within it.

  Examples:
    >>> positions(tf.constant([[1, 1, 1, 2, 2, 0]])).numpy()
    array([[0, 1, 2, 0, 1, 0]], dtype=int32)
  """
  ids = checks.tensor("segment_ids", segment_ids)
  if ids.shape.rank != 2:
    raise ValueError("`segment_ids` must have shape [batch, length]. "
                     f"Received: segment_ids.shape={ids.shape}")
  ids = tf.cast(ids, tf.int32)
  index = _index(ids)
  return tf.where(ids != 0, index - _run_first(ids, index), 0)


def _index(ids):
  """Each position's index, `[B, L]`."""
  return tf.broadcast_to(tf.range(tf.shape(ids)[1]), tf.shape(ids))


def _run_first(ids, index):
  """The first position of the run of equal ids each position is in."""
  return _cummax(tf.where(_starts(ids), index, 0))


def _starts(ids):
  """Whether a run of equal ids starts at each position."""
  previous = tf.pad(ids[:, :-1], [[0, 0], [1, 0]], constant_values=-1)
  return tf.not_equal(ids, previous)


def _cummax(x):
  """Running maximum along the last axis of an int `[B, L]` tensor, by
  doubling (log2(L) steps of O(L), static shapes): unrolled for a static
  `L`, a loop otherwise."""
  static = x.shape[-1]
  if static is not None:
    shift = 1
    while shift < static:
      shifted = tf.pad(x[:, :static - shift], [[0, 0], [shift, 0]],
                       constant_values=x.dtype.min)
      x = tf.maximum(x, shifted)
      shift *= 2
    return x
  length = tf.shape(x)[-1]
  index = tf.range(length)

  def step(shift, x):
    # x shifted right by `shift` (a gather: XLA wants static pad sizes).
    source = index - shift
    shifted = tf.gather(x, tf.maximum(source, 0), axis=1)
    shifted = tf.where(source >= 0, shifted, x.dtype.min)
    return shift * 2, tf.maximum(x, shifted)

  _, x = tf.while_loop(lambda shift, _: shift < length, step,
                       (tf.constant(1), x))
  return x


def run_bounds(ids):
  """`(first, last)` `[B, L]`: the first and last position of the run of
  equal ids that each position is in."""
  index = _index(ids)
  last_from_end = _run_first(tf.reverse(ids, [1]), index)
  return _run_first(ids, index), tf.shape(ids)[1] - 1 - tf.reverse(last_from_end, [1])


def contiguous(ids):
  """`[B]` bool: whether every nonzero id of a row is one run (the nonzero
  ids never decrease along the row), so runs are segments."""
  nonzero = ids != 0
  running_max = _cummax(ids)
  rising = tf.logical_or(~nonzero, tf.equal(ids, running_max))
  # Equal to the running max and starting a run: the previous run of this
  # id, if any, was interrupted by a larger id (impossible) or by padding.
  first_of_id = tf.logical_and(_starts(ids), nonzero)
  repeated = tf.logical_and(first_of_id, tf.equal(
      ids, tf.pad(running_max[:, :-1], [[0, 0], [1, 0]])))
  return tf.reduce_all(rising & ~repeated, axis=1)


def block_ranges(ids, group, bq, bk, nq, nk):
  """Self-attention bounds from `ids` `[B, T]` (queries and keys alike):

  Returns:
    `(key_ranges [nq, 2], query_ranges [nk, 2])`: the `[first, end)` key
    blocks that query block `i` needs, and the query blocks that see key
    block `j`, over every row of the batch (a row whose ids are not
    contiguous runs needs them all). Query row `r` is at position `r // G`.
  """
  first, last = run_bounds(ids)  # [B, T] positions
  real = ids != 0
  ok = contiguous(ids)[:, None]  # [B, 1]
  t = tf.shape(ids)[1]
  first = tf.where(ok, first, 0)
  last = tf.where(ok, last, t - 1)
  # Per query row: the keys it needs, [lo, hi].
  row_lo = tf.repeat(tf.where(real, first, _NO_POSITION), group, axis=1)
  row_hi = tf.repeat(tf.where(real, last, -1), group, axis=1)
  key_lo = _per_block(row_lo, bq, nq, tf.reduce_min, _NO_POSITION)
  key_hi = _per_block(row_hi, bq, nq, tf.reduce_max, -1)
  key_ranges = _as_block_range(key_lo, key_hi + 1, bk, nk)
  # Per key: the query rows that see it, [first * G, (last + 1) * G).
  see_lo = tf.where(real, first * group, _NO_POSITION)
  see_hi = tf.where(real, (last + 1) * group - 1, -1)
  query_lo = _per_block(see_lo, bk, nk, tf.reduce_min, _NO_POSITION)
  query_hi = _per_block(see_hi, bk, nk, tf.reduce_max, -1)
  query_ranges = _as_block_range(query_lo, query_hi + 1, bq, nq)
  return key_ranges, query_ranges


def _per_block(values, block, count, reduce, neutral):
  """`values` `[B, L]` reduced over each block of `block` positions and over
  the batch: `[count]`."""
  pad = count * block - tf.shape(values)[1]
  values = tf.pad(values, [[0, 0], [0, pad]], constant_values=neutral)
  values = tf.reshape(values, [tf.shape(values)[0], count, block])
  return reduce(values, axis=[0, 2])


def _as_block_range(lo, end, block, count):
  """Position bounds `[lo, end)` -> block bounds `[first, last)`, `[n, 2]`;
  empty (`first == last`) where nothing is needed."""
  empty = end <= lo
  first = tf.where(empty, 0, tf.minimum(lo // block, count))
  last = tf.where(empty, 0, tf.minimum((end - 1) // block + 1, count))
  return tf.stack([first, last], axis=1)


def one_row(ids):
  """ids `[B, L]` -> `[1, B * L]`, offset per row so that no two rows share
  an id (0 stays padding): the rows of a batch as one packed sequence."""
  b, length = tf.shape(ids)[0], tf.shape(ids)[1]
  offset = (tf.reduce_max(ids) + 1) * tf.range(b)[:, None]
  return tf.reshape(tf.where(ids != 0, ids + offset, 0), [1, b * length])
