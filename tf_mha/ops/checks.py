"""Argument checks shared by `dot_product_attention`, the layers, and the
library functions the tools call.

Each raises a `ValueError` (or `TypeError`) that names the argument and
echoes what was received, before any variable exists or an op could fail
with a bare `InvalidArgumentError`.
"""

import numbers

import numpy as np
import tensorflow as tf


def positive_int(name, value):
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
    raise ValueError(f"Received an invalid value for argument `{name}`: it "
                     f"must be a positive integer. Received: {name}={value!r}")
  return int(value)


def positive_number(name, value):
  """`value` as a float, if it is a positive Python int or float."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
    raise ValueError(f"`{name}` must be a positive number. Received: "
                     f"{name}={value!r}")
  return float(value)


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


def check_op_mask(mask, full):
  """A static mask shape against `full` = `[B, N, T, S]`, aligned at the
  end as broadcasting aligns them."""
  mask_dtype("mask", mask)
  shape = static_shape(mask)
  if shape is None or shape.rank is None:
    return
  dims = shape.as_list()
  if len(dims) > len(full) or not broadcasts(dims, full[len(full) - len(dims):]):
    raise ValueError(f"`mask` must broadcast to [B, N, T, S] = {full}. "
                     f"Received: mask with shape {shape}")


def broadcasts(mask_dims, dims):
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

