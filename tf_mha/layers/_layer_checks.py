"""The layers' own checks: constructor arguments that only a layer has
(`output_shape`, `attention_axes`) and the shapes of a call's inputs and
masks, before any variable is made or a broadcast fails deep inside.

The op's checks (tensors, rates, masks of the op) are `tf_mha.ops.checks`.
"""

import collections.abc
import numbers

import tensorflow as tf

from tf_mha.ops import checks
from tf_mha.ops import segments


def output_shape(value):
  """`None`, a positive int, or a tuple of positive ints."""
  if value is None:
    return None
  if isinstance(value, numbers.Integral) and not isinstance(value, bool):
    dims, result = [value], int(value)
  elif isinstance(value, (tuple, list, tf.TensorShape)):
    dims = list(value)
    result = tuple(int(d) for d in dims if isinstance(d, numbers.Integral))
  else:
    raise ValueError(f"Invalid `output_shape`: {value!r}. It must be a "
                     "positive int, or a tuple or list of them. Received: "
                     f"output_shape={value!r}")
  if not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and
             d > 0 for d in dims):
    raise ValueError(f"Invalid `output_shape`: {value!r}. It must hold "
                     f"positive integers. Received: output_shape={value!r}")
  return result or None


def attention_axes(value):
  if value is None:
    return None
  axes = value if isinstance(value, collections.abc.Sized) else (value,)
  if not all(isinstance(a, numbers.Integral) and not isinstance(a, bool)
             for a in axes):
    raise TypeError("`attention_axes` must be an int or a tuple of ints. "
                    f"Received: attention_axes={value!r}")
  if not axes:
    raise ValueError("`attention_axes` must name at least one axis. "
                     f"Received: attention_axes={value!r}")
  if 0 in axes:
    raise ValueError("`attention_axes` cannot include the batch axis 0. "
                     f"Received: attention_axes={value!r}")
  return tuple(int(a) for a in axes)


def as_shape(x):
  return tf.TensorShape(x.shape if hasattr(x, "shape") else x)


def shape_list(shape):
  return None if shape is None else shape.as_list()


def check_signature(query_shape, value_shape, key_shape):
  """Rank and length checks on shapes, before any variable is made."""
  if (value_shape.rank is not None and key_shape.rank is not None and
      not value_shape[:-1].is_compatible_with(key_shape[:-1])):
    raise ValueError(
        "All dimensions of `key` and `value` except the last must be equal "
        f"(the same length). Received: value shape {value_shape}, key shape "
        f"{key_shape}")
  for name, shape in (("query", query_shape), ("value", value_shape),
                      ("key", key_shape)):
    if shape.rank is None or shape.rank < 3:
      raise ValueError(
          f"`{name}` must have rank >= 3, [batch, ..., features]. "
          f"Received: {name} with shape {shape}")
  if not (query_shape.rank == value_shape.rank == key_shape.rank):
    raise ValueError(
        "`query`, `value` and `key` must have the same rank. Received: "
        f"query shape {query_shape}, value shape {value_shape}, key shape "
        f"{key_shape}")
  if not query_shape[:1].is_compatible_with(value_shape[:1]):
    raise ValueError(
        "`query` and `value` must have the same batch size. Received: query "
        f"shape {query_shape}, value shape {value_shape}")


def check_call(layer, query, value, key):
  """Shapes of this call against the built projections."""
  for name, t, built in (("query", query, layer._query_shape),
                         ("value", value, layer._value_shape),
                         ("key", key, layer._key_shape)):
    if t.shape.rank != built.rank or t.shape[-1] != built[-1]:
      raise ValueError(
          f"`{name}` has shape {t.shape}, but the layer was built for "
          f"{name} shape {built} (same rank and last dimension needed).")
  check_signature(query.shape, value.shape, key.shape)


def check_masks(attention_axes, query, value, key, attention_mask, **masks):
  """Static mask shapes against the inputs, so a mismatch is a clear
  `ValueError` rather than an `InvalidArgumentError` from a broadcast."""
  checks.mask_dtype("attention_mask", attention_mask)
  for name, mask, x in (("query_mask", masks["query_mask"], query),
                        ("value_mask", masks["value_mask"], value),
                        ("key_mask", masks["key_mask"], key)):
    checks.mask_dtype(name, mask)
    shape = checks.static_shape(mask)
    if shape is not None and not shape.is_compatible_with(x.shape[:-1]):
      raise ValueError(
          f"`{name}` must have the shape of its input without the last axis, "
          f"{x.shape[:-1]}. Received: {name} with shape {shape}")
  shape = checks.static_shape(attention_mask)
  if shape is None:
    return
  rank = query.shape.rank
  batch = [query.shape[a] for a in range(rank - 1) if a not in attention_axes]
  lengths = ([query.shape[a] for a in attention_axes] +
             [key.shape[a] for a in attention_axes])  # T dims, then S dims
  full = batch + lengths
  # tf.keras inserts missing axes before the T axes, and full-rank masks may
  # carry a head axis there: the trailing T and S axes are always aligned.
  dims = shape.as_list()
  fits = (len(lengths) <= shape.rank <= len(full) + 1 and
          checks.broadcasts(dims[-len(lengths):], lengths))
  if fits and shape.rank >= len(full):
    fits = checks.broadcasts(dims[:len(batch)], batch)
  if not fits:
    raise ValueError(
        "`attention_mask` must broadcast to [batch dims, query (T) dims, key "
        f"(S) dims] = {full}. Received: attention_mask with shape {shape}")


def segment_ids(layer, query, ids, key_ids):
  """`(query ids, key ids)` as int32 tensors (key ids default to the
  queries'), or None; a ValueError naming them where the layer cannot take
  them (several attention axes)."""
  if ids is None and key_ids is None:
    return None
  if ids is None:
    raise ValueError("`key_segment_ids` needs `segment_ids`. Received: "
                     "segment_ids=None")
  rank = as_shape(query).rank
  axes = layer._attention_axes  # pylint: disable=protected-access
  if rank != 3 or (axes is not None and tuple(axes) not in ((1,), (-2,))):
    raise ValueError(
        "`segment_ids` need `[batch, length, features]` inputs with one "
        f"attention axis. Received: query rank {rank}, attention_axes={axes}")
  ids = tf.cast(checks.tensor("segment_ids", ids), tf.int32)
  key_ids = ids if key_ids is None else tf.cast(
      checks.tensor("key_segment_ids", key_ids), tf.int32)
  return ids, key_ids


def segment_mask(ids):
  """The dense `[B, T, S]` mask of `(query ids, key ids)`, for subclasses
  that compute attention their own way."""
  return segments.mask(*ids)[:, 0]


def output_shape_of_call(output_shape, query_shape, value_shape, key_shape):
  """`compute_output_shape` of tf.keras' layer, with its checks."""
  query_shape = tf.TensorShape(query_shape)
  value_shape = tf.TensorShape(value_shape)
  key_shape = value_shape if key_shape is None else tf.TensorShape(key_shape)
  if query_shape[-1] != value_shape[-1]:
    # tf.keras' contract for this method (calls accept different sizes).
    raise ValueError(
        "The last dimension of `query_shape` and `value_shape` must be "
        f"equal. Received: query_shape={query_shape}, value_shape={value_shape}")
  check_signature(query_shape, value_shape, key_shape)
  if output_shape:
    return query_shape[:-1].concatenate(output_shape)
  return query_shape
