"""Inputs for a model's signature: `.npz` files checked against its input
specs and cut into examples, or examples drawn from the specs.

An `.npz` holds one array per input, named after it. An array of the
input's rank is a batch: each of its rows is one example (a batch of one,
as `model.predict` reads `x`). An array of one more axis than the input
holds whole inputs, one per entry (for inputs with no batch axis, such as a
decode step's scalar `cache_index`). Every array holds the same number of
examples.
"""

import numpy as np
import tensorflow as tf

# What drawn integer inputs hold: small ids, valid for any embedding table
# and position range of a few entries.
_DRAWN_INT_RANGE = 8
# Lengths given to dynamic non-batch axes of drawn inputs: two, so that a
# dynamic length is exercised at more than one size.
_DRAWN_LENGTHS = (5, 11)
_DRAWN_BATCH = 2


def signature_inputs(function):
  """`{input name: tf.TensorSpec}` of a SavedModel signature function."""
  return dict(sorted(function.structured_input_signature[1].items()))


def load_npz(path, flag):
  """The arrays of the `.npz` file `path`; a ValueError naming `flag`."""
  try:
    with np.load(path, allow_pickle=False) as archive:
      if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError("not an .npz archive (a single .npy array)")
      return {name: archive[name] for name in archive.files}
  except (OSError, ValueError, EOFError) as e:
    raise ValueError(f"`{flag}` must be an .npz file of arrays named after "
                     f"the model's inputs. Received: {flag}={path!r} ({e})") from e


def check_arrays(arrays, specs, *, flag, signature, allow_unexpected=False):
  """`arrays` checked against a signature's input `specs` and cast to their
  dtypes; raises a ValueError naming `flag`, the signature and the arrays
  that do not fit (missing, unexpected, dtype, rank, sizes)."""
  missing = sorted(set(specs) - set(arrays))
  unexpected = [] if allow_unexpected else sorted(set(arrays) - set(specs))
  if missing or unexpected:
    raise ValueError(
        f"`{flag}` does not match the inputs of signature {signature!r}: "
        f"missing arrays {missing}, unexpected arrays {unexpected}; the "
        f"expected names are {sorted(specs)}.")
  checked = {name: _check_array(arrays[name], spec, name, flag, signature)
             for name, spec in specs.items()}
  counts = {name: len(a) for name, a in checked.items()}
  if len(set(counts.values())) > 1:
    raise ValueError(f"`{flag}` arrays hold different numbers of examples "
                     f"for signature {signature!r}: {counts}")
  return checked


def _check_array(array, spec, name, flag, signature):
  where = f"`{flag}` array {name!r} (signature {signature!r})"
  dtype = tf.as_dtype(spec.dtype)
  kind = array.dtype.kind
  fits = ((dtype.is_floating and kind in "fiub") or
          ((dtype.is_integer or dtype.is_bool) and kind in "iub") or
          (dtype == tf.string and kind in "SUO"))
  if not fits:
    raise ValueError(f"{where} must hold {dtype.name} values. Received: "
                     f"dtype {array.dtype}")
  rank = spec.shape.rank
  if rank is None:  # any shape: the array is a batch
    return array.astype(dtype.as_numpy_dtype) if dtype != tf.string else array
  if array.ndim not in (rank, rank + 1) or (rank == 0 and array.ndim == 0):
    raise ValueError(
        f"{where} must have rank {rank} (a batch of inputs of shape "
        f"{spec.shape}) or {rank + 1} (one input per entry). Received: "
        f"shape {array.shape}")
  per_example = array.shape[1:] if array.ndim == rank + 1 else array.shape
  for axis, (want, got) in enumerate(zip(spec.shape.as_list(), per_example)):
    if want is not None and got != want and not (array.ndim == rank and
                                                 axis == 0 and want == 1):
      raise ValueError(f"{where} must have size {want} on axis {axis} of each "
                       f"input (shape {spec.shape}). Received: shape "
                       f"{array.shape}")
  return array.astype(dtype.as_numpy_dtype) if dtype != tf.string else array


def examples(arrays, specs, limit=None):
  """Checked `arrays` as a list of `{name: array}` examples (`limit` at
  most): rows as batches of one, or whole entries."""
  count = len(next(iter(arrays.values())))
  count = count if limit is None else min(count, limit)
  out = []
  for i in range(count):
    out.append({name: (a[i] if a.ndim == (specs[name].shape.rank or 0) + 1
                       else a[i:i + 1]) for name, a in arrays.items()})
  return out


def draw(specs, seed=0, int_bounds=None):
  """Examples drawn from `specs`, one per length in `_DRAWN_LENGTHS`:
  dynamic axes get the batch `_DRAWN_BATCH` (axis 0) or that length;
  integer inputs hold ids in `[0, _DRAWN_INT_RANGE)`, or in `[0, n)` for
  an input `int_bounds` maps to a smaller `n`; an input whose name says mask
  holds ones, floating inputs are standard normal.

  Raises:
    ValueError: a string input, which cannot be drawn.
  """
  int_bounds = int_bounds or {}
  rng = np.random.default_rng(seed)
  out = []
  for length in _DRAWN_LENGTHS:
    example = {}
    for name, spec in specs.items():
      dtype = tf.as_dtype(spec.dtype)
      if dtype == tf.string:
        raise ValueError(f"Input {name!r} is a string: it cannot be drawn; "
                         "give examples (an .npz) instead.")
      shape = [d if d is not None else (_DRAWN_BATCH if i == 0 else length)
               for i, d in enumerate(spec.shape.as_list())]
      if "mask" in name.lower() or dtype.is_bool:
        value = np.ones(shape)
      elif dtype.is_integer:
        high = max(1, min(_DRAWN_INT_RANGE, int_bounds.get(name, _DRAWN_INT_RANGE)))
        value = rng.integers(0, high, size=shape)
      else:
        value = rng.standard_normal(shape)
      example[name] = value.astype(dtype.as_numpy_dtype)
    out.append(example)
  return out


def draw_accepted(specs, run, *, signature, int_bounds=None, seed=0):
  """Examples drawn from `specs` (as `draw`) that `run` accepts.

  `run(example)` runs the model (a SavedModel signature, a Keras model) on
  one example. Ids a table is too small for fail there (TensorFlow's gather
  checks its indices on CPU); such draws are retried with ids below 2, then
  with zeros, which any table holds.

  Raises:
    ValueError: naming `signature`, when no draw runs; give inputs it
      accepts (`sample_data`).
  """
  int_bounds = int_bounds or {}
  error = None
  for cap in _RETRY_INT_RANGES:
    bounds = {name: min(cap, int_bounds.get(name, cap)) for name in specs}
    examples = draw(specs, seed, bounds)
    try:
      for example in examples:
        run(example)
      return examples
    except (tf.errors.OpError, ValueError) as e:
      error = e
  raise ValueError(
      f"Signature {signature!r}: the SavedModel runs on no inputs drawn from "
      f"its specs ({describe(specs)}; integer ids in [0, "
      f"{_DRAWN_INT_RANGE}), [0, 2) and zeros): {type(error).__name__}: "
      f"{reason(error)}. Give inputs it accepts with `sample_data` "
      "(--sample_data).") from error


# The integer ranges `draw_accepted` tries, widest first.
_RETRY_INT_RANGES = (_DRAWN_INT_RANGE, 2, 1)


def describe(example_or_specs):
  """`name dtype[shape]` of each input, and the range an example's holds."""
  parts = []
  for name, value in example_or_specs.items():
    if isinstance(value, tf.TensorSpec):
      parts.append(f"{name} {value.dtype.name}{value.shape.as_list()}")
      continue
    value = np.asarray(value)
    span = (f" in [{value.min()}, {value.max()}]"
            if value.size and value.dtype.kind in "iufb" else "")
    parts.append(f"{name} {value.dtype}{list(value.shape)}{span}")
  return ", ".join(parts)


def reason(error, limit=400):
  """What went wrong, from an exception's text: a TensorFlow op error's own
  message, without the "Graph execution error" and traceback lines."""
  skip = ("Graph execution error", "Detected at node", "File ", "[[{{node",
          "<stack traces unavailable>")
  lines = [line.strip() for line in str(error).splitlines()]
  lines = [line for line in lines if line and not line.startswith(skip)]
  return " ".join(lines)[:limit].rstrip(".")
