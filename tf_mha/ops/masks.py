"""Attention masks: causal, padding, combination, and the dtype-aware fill.

Glossary of shapes: `B` batch, `T` query length, `S` key/value length,
`N` heads. A mask is boolean and `True` where attention is allowed; it is
broadcast against scores of shape `[B, N, T, S]`.

Nothing here imports Keras.
"""

import tensorflow as tf


def large_negative(dtype):
  """The fill for masked logits: finite, far below any real logit in `dtype`.

  Half of the most negative value leaves room to subtract two of them
  without overflowing to -inf (which would turn `-inf - -inf` into NaN).

  Examples:
    >>> large_negative(tf.float16)
    -32752.0

  Args:
    dtype: a floating `tf.DType` (or anything `tf.as_dtype` accepts).

  Returns:
    A Python float representable in `dtype`.
  """
  return float(tf.as_dtype(dtype).min) / 2


def softmax_dtype(dtype):
  """The dtype softmax runs in: float32 for 16-bit inputs, else `dtype`."""
  dtype = tf.as_dtype(dtype)
  return tf.float32 if dtype.size < 4 else dtype


def mask_logits(logits, keep):
  """`logits` where `keep` (boolean, broadcastable) is True, elsewhere
  `large_negative` of their dtype."""
  fill = tf.constant(large_negative(logits.dtype), logits.dtype)
  return tf.where(keep, logits, fill)


def logits_dtype(dtype):
  """The dtype the `Q K^T` logits are computed in: float32 for float16 inputs.

  float16 overflows at 65504, which the logits of large activations exceed
  long before the projections do; bfloat16 has float32's range and keeps its
  fast matmul.
  """
  dtype = tf.as_dtype(dtype)
  return tf.float32 if dtype == tf.float16 else dtype


def _positions(query_length, key_length, query_offset=0, key_offset=0,
               query_group=1, query_start=0):
  """Query and key positions as `[T, 1]` and `[1, S]` int32 tensors.

  Query row `r` (counted from `query_offset`) is at position
  `query_start + r // query_group`: grouped-query attention lays the
  `query_group` heads that share a key head out as consecutive rows, and a
  cached decode step's queries start at `query_start`.
  """
  # `tf.expand_dims` rather than `[:, tf.newaxis]`: the latter fails TFLite
  # conversion with dynamic shapes.
  rows = query_offset + tf.range(query_length)
  if not (isinstance(query_group, int) and query_group == 1):
    rows = rows // query_group
  if not (isinstance(query_start, int) and query_start == 0):
    rows = rows + tf.cast(query_start, tf.int32)
  rows = tf.expand_dims(rows, 1)  # [T, 1]
  cols = tf.expand_dims(key_offset + tf.range(key_length), 0)  # [1, S]
  return rows, cols


def causal_mask(query_length, key_length, query_offset=0, key_offset=0,
                query_group=1, query_start=0):
  """Lower-triangular mask on `[T, S]`: query `t` sees keys `s <= t`.

  This is tf.keras' convention (top-left aligned) also when `T != S`. The
  offsets place the mask in a larger one: rows `query_offset + t`, columns
  `key_offset + s` (a block of the blockwise path, a chunk of queries).

  Examples:
    >>> causal_mask(2, 3).numpy().tolist()
    [[True, False, False], [True, True, False]]

  Args:
    query_length: `T`, a Python int or scalar int tensor.
    key_length: `S`, a Python int or scalar int tensor.
    query_offset: position of the first query row (int or scalar tensor).
    key_offset: position of the first key column (int or scalar tensor).

    query_group, query_start: see `position_mask`.

  Returns:
    A boolean tensor of shape `[T, S]`.
  """
  rows, cols = _positions(query_length, key_length, query_offset, key_offset,
                          query_group, query_start)
  return rows >= cols


def prefix_mask(key_length, valid_length, key_offset=0):
  """`[1, S]` mask of the keys before `valid_length`: key `key_offset + s`
  is kept when it is `< valid_length` (the real keys of a padded block).

  Examples:
    >>> prefix_mask(4, 6, key_offset=4).numpy().tolist()
    [[True, True, False, False]]
  """
  _, cols = _positions(1, key_length, key_offset=key_offset)
  return cols < valid_length


def band_mask(query_length, key_length, width, query_offset=0, key_offset=0,
              query_group=1, query_start=0):
  """`[T, S]` mask of the keys within `width - 1` positions: `|t - s| < width`.

  Examples:
    >>> band_mask(3, 3, 2).numpy().astype(int).tolist()
    [[1, 1, 0], [1, 1, 1], [0, 1, 1]]

  Args:
    query_length: `T`, a Python int or scalar int tensor.
    key_length: `S`, a Python int or scalar int tensor.
    width: a positive Python int.
    query_offset: position of the first query row (as in `causal_mask`).
    key_offset: position of the first key column.
    query_group, query_start: see `position_mask`.

  Returns:
    A boolean tensor of shape `[T, S]`.
  """
  rows, cols = _positions(query_length, key_length, query_offset, key_offset,
                          query_group, query_start)
  return tf.abs(rows - cols) < width


def position_mask(query_length, key_length, *, causal=False, window=None,
                  query_offset=0, key_offset=0, query_group=1, query_start=0):
  """The masks set by positions alone on `[T, S]`: `causal_mask` if
  `causal`, `band_mask` of `window` if it is not `None`, both ANDed, or
  `None` for neither. Offsets as in `causal_mask`.

  Examples:
    >>> position_mask(3, 3, causal=True, window=2).numpy().astype(int).tolist()
    [[1, 0, 0], [1, 1, 0], [0, 1, 1]]

  Query row `r` (from `query_offset`) is at position
  `query_start + r // query_group`: rows of grouped heads that share a key
  head, and the queries of a cached decode step that start at
  `query_start` (a Python int or scalar int tensor).

  Examples:
    >>> position_mask(4, 2, causal=True, query_group=2).numpy().astype(int).tolist()
    [[1, 0], [1, 0], [1, 1], [1, 1]]
  """
  offsets = dict(query_offset=query_offset, key_offset=key_offset,
                 query_group=query_group, query_start=query_start)
  return combine_masks(
      causal_mask(query_length, key_length, **offsets) if causal else None,
      None if window is None else band_mask(query_length, key_length, window,
                                            **offsets))


def combine_masks(*masks):
  """Logical AND of the masks that are not `None` (cast to bool).

  Examples:
    >>> combine_masks(None, tf.constant([True, False]), tf.constant([1, 1]))
    <tf.Tensor: shape=(2,), dtype=bool, numpy=array([ True, False])>

  Args:
    *masks: tensors that broadcast against each other, or `None`.

  Returns:
    The combined boolean mask, or `None` when every mask is `None`.
  """
  combined = None
  for mask in masks:
    if mask is None:
      continue
    mask = to_bool_mask(mask)
    combined = mask if combined is None else tf.logical_and(combined, mask)
  return combined


def to_bool_mask(mask):
  """Casts a 0/1 or boolean mask to bool (non-zero keeps)."""
  mask = tf.convert_to_tensor(mask)
  return mask if mask.dtype == tf.bool else tf.cast(mask, tf.bool)


def masked_softmax(logits, mask=None, axis=-1):
  """Softmax over `axis` in float32 (for 16-bit inputs), masked positions 0.

  A row whose every position is masked gets uniform weights, as tf.keras
  gives, so its output is the mean of the values and stays finite.

  Args:
    logits: scores of any float dtype.
    mask: boolean mask that broadcasts to `logits`, `True` keeps; or `None`.
    axis: an int or a tuple of ints to normalise over.

  Returns:
    Probabilities with the shape and dtype of `logits`.
  """
  compute = softmax_dtype(logits.dtype)
  x = tf.cast(logits, compute)
  if mask is not None:
    x = mask_logits(x, to_bool_mask(mask))
  if isinstance(axis, int):
    probs = tf.nn.softmax(x, axis=axis)
  else:
    # Multi-axis softmax: subtract the max, exponentiate, normalise.
    x = x - tf.stop_gradient(tf.reduce_max(x, axis=axis, keepdims=True))
    e = tf.exp(x)
    probs = e / tf.reduce_sum(e, axis=axis, keepdims=True)
  return tf.cast(probs, logits.dtype)
