"""Packing for `tf.data`: several examples per fixed-length row.

An example is a dict of 1-D features of one length (token ids, per-token
labels) and scalar features (a class label). A packed row holds, for each
1-D feature, the examples' values one after another, padded with 0 to
`length`; for each scalar feature, one value per segment (`[max_segments]`,
0 after the last); and `segment_ids` (1, 2, ... per example, 0 on padding)
and `positions` (each token's position in its own example), seqio's
convention. Static shapes throughout, for TPUs.

Rows are filled first-fit, longest example first, over a bounded buffer of
`buffer_size` examples: every example comes out whole, exactly once.
"""

import numpy as np
import tensorflow as tf

SEGMENT_IDS = "segment_ids"
POSITIONS = "positions"


def pack(dataset, length, *, buffer_size=256, max_segments=32, truncate=False):
  """Packs `dataset` (unbatched dicts of 1-D and scalar features) into rows.

  Args:
    dataset: a `tf.data.Dataset` of dicts; 1-D features of each example
      share one length (at least one 1-D feature).
    length: the row length `L`.
    buffer_size: examples packed together (more packs tighter, holds more).
    max_segments: the most examples in one row; scalar features come out
      `[max_segments]`.
    truncate: cut examples longer than `length` to it; by default such an
      example is an error naming it.

  Returns:
    A dataset of dicts: each 1-D feature `[L]`, each scalar feature
    `[max_segments]`, `segment_ids` and `positions` `[L]` int32.

  Raises:
    ValueError: a bad argument, or a dataset whose elements are not such
      dicts (at once); an example longer than `length` without `truncate`
      (an `InvalidArgumentError` when the row is made).
  """
  for name, value in (("length", length), ("buffer_size", buffer_size),
                      ("max_segments", max_segments)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"`{name}` must be a positive integer. Received: "
                       f"{name}={value!r}")
  tokens, scalars = _feature_kinds(dataset.element_spec)
  names = tokens + scalars
  dtypes = [dataset.element_spec[n].dtype for n in names]

  def pack_buffer(batch):
    flat = []
    for name in tokens:
      flat += [batch[name].flat_values, batch[name].row_splits]
    flat += [batch[name] for name in scalars]
    out_types = dtypes + [tf.int32, tf.int32]
    packed = tf.numpy_function(
        lambda *arrays: _first_fit(arrays, len(tokens), length, max_segments,
                                   truncate, dtypes),
        flat, out_types, stateful=False)
    rows = {}
    for name, value in zip(names + [SEGMENT_IDS, POSITIONS], packed):
      width = max_segments if name in scalars else length
      rows[name] = tf.ensure_shape(value, [None, width])
    return tf.data.Dataset.from_tensor_slices(rows)

  return dataset.ragged_batch(buffer_size).flat_map(pack_buffer)


def _feature_kinds(spec):
  if not isinstance(spec, dict):
    raise ValueError("`dataset` must yield dicts of features. Received: "
                     f"element_spec={spec}")
  tokens = sorted(n for n, s in spec.items() if s.shape.rank == 1)
  scalars = sorted(n for n, s in spec.items() if s.shape.rank == 0)
  others = sorted(set(spec) - set(tokens) - set(scalars))
  if others or not tokens:
    raise ValueError("`dataset` must yield dicts of 1-D (per token) and scalar "
                     f"features, at least one 1-D. Received: element_spec={spec}")
  for reserved in (SEGMENT_IDS, POSITIONS):
    if reserved in spec:
      raise ValueError(f"`dataset` already has a feature {reserved!r}, which "
                       "packing writes.")
  return tokens, scalars


def _first_fit(arrays, num_tokens, length, max_segments, truncate, dtypes):
  """NumPy: one buffer of examples -> packed rows (see `pack`)."""
  token_values = [arrays[2 * i] for i in range(num_tokens)]
  splits = arrays[1]
  scalars = arrays[2 * num_tokens:]
  count = len(splits) - 1
  sizes = np.diff(splits)
  for i in range(num_tokens):
    if not np.array_equal(np.diff(arrays[2 * i + 1]), sizes):
      raise ValueError("The 1-D features of an example must have one length.")
  too_long = np.nonzero(sizes > length)[0]
  if len(too_long) and not truncate:
    raise ValueError(f"An example of length {sizes[too_long[0]]} does not fit "
                     f"a row of `length`={length}; pass truncate=True to cut it.")
  rows = []  # [used tokens, [example indices]]
  for example in sorted(range(count), key=lambda e: -sizes[e]):
    size = min(sizes[example], length)
    for row in rows:
      if row[0] + size <= length and len(row[1]) < max_segments:
        row[0] += size
        row[1].append(example)
        break
    else:
      rows.append([size, [example]])
  out = [np.zeros([len(rows), length], d.as_numpy_dtype) for d in dtypes[:num_tokens]]
  out += [np.zeros([len(rows), max_segments], d.as_numpy_dtype)
          for d in dtypes[num_tokens:]]
  segment_ids = np.zeros([len(rows), length], np.int32)
  positions = np.zeros([len(rows), length], np.int32)
  for r, (_, examples) in enumerate(rows):
    at = 0
    for s, example in enumerate(sorted(examples)):
      size = min(sizes[example], length)
      start = splits[example]
      for i in range(num_tokens):
        out[i][r, at:at + size] = token_values[i][start:start + size]
      for i, values in enumerate(scalars):
        out[num_tokens + i][r, s] = values[example]
      segment_ids[r, at:at + size] = s + 1
      positions[r, at:at + size] = np.arange(size)
      at += size
  return out + [segment_ids, positions]


def padding_fraction(rows):
  """The fraction of padding tokens in packed `rows` (a dataset or an
  iterable of packed dicts, or of batches of them)."""
  real = total = 0
  for row in rows:
    ids = np.asarray(row[SEGMENT_IDS])
    real += int(np.count_nonzero(ids))
    total += ids.size
  if not total:
    raise ValueError("`rows` holds no packed row.")
  return 1.0 - real / total
