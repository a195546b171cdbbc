"""Argument and shape checks: the layers, `dot_product_attention`, and the
library functions the tools call.

Each raises a `ValueError` (or `TypeError`) that names the argument and
echoes what was received, before any variable exists or an op could fail
with a bare `InvalidArgumentError`.
"""

import collections.abc
import numbers

import numpy as np
import tensorflow as tf


def positive_int(name, value):
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
    raise ValueError(f"Received an invalid value for argument `{name}`: it "
                     f"must be a positive integer. Received: {name}={value!r}")
  return int(value)


def rate(name, value):
  if not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
    raise ValueError(f"`{name}` must be a float in [0, 1). "
                     f"Received: {name}={value!r}")
  return value


def block_sizes(value):
  """`None` or two positive ints `(query_block, key_block)`."""
  if value is None:
    return None
  if not (isinstance(value, (tuple, list)) and len(value) == 2 and
          all(isinstance(b, numbers.Integral) and not isinstance(b, bool) and
              b >= 1 for b in value)):
    raise ValueError("`block_sizes` must be two positive integers, "
                     f"(query_block, key_block). Received: block_sizes={value!r}")
  return tuple(int(b) for b in value)


def scalar(name, value):
  """`None`, a real number, or a scalar real tensor."""
  if value is None or (isinstance(value, numbers.Real) and
                       not isinstance(value, bool)):
    return value
  if (tf.is_tensor(value) and value.shape.rank == 0 and
      (value.dtype.is_floating or value.dtype.is_integer)):
    return value
  raise ValueError(f"`{name}` must be a number or a scalar tensor. "
                   f"Received: {name}={_brief(value)}")


def tensor(name, value, floating=False, dtype_hint=None):
  """`value` as a tensor (a ragged one stays ragged) of numbers: floating
  point if `floating`, else floating point or integer."""
  if value is None:
    raise ValueError(f"`{name}` is required. Received: {name}=None")
  if not (tf.is_tensor(value) or isinstance(value, tf.RaggedTensor)):
    try:
      value = tf.convert_to_tensor(value, dtype_hint=dtype_hint)
    except (TypeError, ValueError) as e:
      raise TypeError(f"`{name}` must be a tensor or an array of numbers. "
                      f"Received: {name}={_brief(value)}") from e
  dtype = tf.as_dtype(value.dtype)
  if not (dtype.is_floating or (dtype.is_integer and not floating)):
    kind = "floating-point" if floating else "numeric (floating-point or integer)"
    raise TypeError(f"`{name}` must be a {kind} tensor. "
                    f"Received: {name} with dtype {dtype.name}")
  return value


def _brief(value, limit=80):
  text = repr(value)
  return text if len(text) <= limit else text[:limit] + "..."


def tri_state(name, value):
  """`True`, `False` or `None`."""
  if value not in (None, True, False):
    raise ValueError(f"`{name}` must be True, False or None. "
                     f"Received: {name}={value!r}")
  return value


def seed(value):
  """`None` or an int seed."""
  if value is not None and (isinstance(value, bool) or
                            not isinstance(value, numbers.Integral)):
    raise TypeError(f"`seed` must be an integer or None. Received: seed={value!r}")
  return value


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


def mask_dtype(name, mask):
  """Raises a TypeError naming `name` unless `mask` (if given) is boolean
  or numeric: a string mask would fail deep inside, casting to bool."""
  if mask is None:
    return
  dtype = getattr(mask, "dtype", None)
  if dtype is None:
    dtype = np.asarray(mask).dtype
  dtype = tf.as_dtype(dtype) if not isinstance(dtype, tf.DType) else dtype
  if not (dtype.is_bool or dtype.is_integer or dtype.is_floating):
    raise TypeError(f"`{name}` must be boolean or numeric (True or 1 "
                    f"attends). Received: {name} of dtype {dtype.name}")


def check_masks(attention_axes, query, value, key, attention_mask, **masks):
  """Static mask shapes against the inputs, so a mismatch is a clear
  `ValueError` rather than an `InvalidArgumentError` from a broadcast."""
  mask_dtype("attention_mask", attention_mask)
  for name, mask, x in (("query_mask", masks["query_mask"], query),
                        ("value_mask", masks["value_mask"], value),
                        ("key_mask", masks["key_mask"], key)):
    mask_dtype(name, mask)
    shape = static_shape(mask)
    if shape is not None and not shape.is_compatible_with(x.shape[:-1]):
      raise ValueError(
          f"`{name}` must have the shape of its input without the last axis, "
          f"{x.shape[:-1]}. Received: {name} with shape {shape}")
  shape = static_shape(attention_mask)
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
          _broadcasts(dims[-len(lengths):], lengths))
  if fits and shape.rank >= len(full):
    fits = _broadcasts(dims[:len(batch)], batch)
  if not fits:
    raise ValueError(
        "`attention_mask` must broadcast to [batch dims, query (T) dims, key "
        f"(S) dims] = {full}. Received: attention_mask with shape {shape}")


def check_op_mask(mask, full):
  """A static mask shape against `full` = `[B, N, T, S]`, aligned at the
  end as broadcasting aligns them."""
  mask_dtype("mask", mask)
  shape = static_shape(mask)
  if shape is None or shape.rank is None:
    return
  dims = shape.as_list()
  if len(dims) > len(full) or not _broadcasts(dims, full[len(full) - len(dims):]):
    raise ValueError(f"`mask` must broadcast to [B, N, T, S] = {full}. "
                     f"Received: mask with shape {shape}")


def _broadcasts(mask_dims, dims):
  """Whether each mask size is 1, unknown, or the size it lines up with."""
  return all(m in (None, 1) or d is None or m == d
             for m, d in zip(mask_dims, dims))


def static_shape(mask):
  if mask is None:
    return None
  shape = getattr(mask, "shape", None)
  if shape is None:
    shape = np.shape(mask)
  return tf.TensorShape(shape)

