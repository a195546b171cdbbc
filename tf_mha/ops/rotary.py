"""Rotary position embeddings (RoFormer, Su et al. 2021; Llama, Gemma,
Mistral): each pair of features of a query or key is rotated by an angle
proportional to the token's position, so a query-key product depends on
their positions only through the distance between them.

Shapes: `B` batch, `T` tokens, `H` head size (even); any axes (heads)
between `T` and `H`.

The pairs are the two halves of the features (`x[..., i]` with
`x[..., i + H / 2]`), KerasHub's `RotaryEmbedding` and Hugging Face's
Llama convention, with frequencies `max_wavelength ** (-2i / H)`
(Llama 3.1 rescales the low ones: `llama3_scaling`).
"""

import math

import tensorflow as tf

from tf_mha.ops import checks


def rotary_embedding(x, positions, max_wavelength=10000.0, scaling_factor=1.0,
                     llama3_scaling=None):
  """`x` `[B, T, ..., H]` with each token rotated by its position.

  Args:
    x: queries or keys, `[B, T, ..., H]`, `H` even.
    positions: each token's position, `[B, T]` or `[T]` (int or float):
      per token, so left-padded rows (positions counted from each row's
      first token) and packed rows (`segment_positions`) work.
    max_wavelength: the longest wavelength (10000 in RoFormer and Llama).
    scaling_factor: positions are divided by it (linear RoPE scaling).
    llama3_scaling: None, or Llama 3.1's frequency scaling `(factor,
      low_freq_factor, high_freq_factor, pretraining_length)`: wavelengths
      longer than `pretraining_length / low_freq_factor` are stretched by
      `factor`, those shorter than `pretraining_length / high_freq_factor`
      kept, and those between interpolated (KerasHub's
      `LlamaRotaryEmbedding`, Hugging Face's "llama3" rope type).

  Returns:
    `x`'s shape and dtype; computed in float32 (float64 for float64 `x`).

  Raises:
    ValueError: `H` is odd or unknown, `x` has rank below 3, or
      `max_wavelength` / `scaling_factor` / `llama3_scaling` is not valid.
  """
  x = checks.tensor("x", x)
  size = x.shape[-1]
  if x.shape.rank is None or x.shape.rank < 3 or size is None or size % 2:
    raise ValueError("`x` must be [batch, length, ..., head_size] with a known, "
                     f"even head size. Received: x with shape {x.shape}")
  max_wavelength = checks.positive_number("max_wavelength", max_wavelength)
  scaling_factor = checks.positive_number("scaling_factor", scaling_factor)
  dtype = tf.float64 if x.dtype == tf.float64 else tf.float32
  # Positions are shaped as they come (ints), then cast and multiplied by
  # the constant frequencies at once: an int8 TFLite model then keeps them
  # exact (a position quantized to int8 at 48 slots is off by up to 0.1).
  positions = tf.reshape(
      tf.broadcast_to(tf.convert_to_tensor(positions), tf.shape(x)[:2]),
      tf.concat([tf.shape(x)[:2], tf.ones([x.shape.rank - 2], tf.int32)], 0))
  frequencies = tf.constant(
      [f / scaling_factor
       for f in _frequencies(size, max_wavelength, llama3_scaling)],
      dtype)  # [H / 2]
  angles = tf.cast(positions, dtype) * frequencies  # [B, T, 1, ..., H / 2]
  cos, sin = tf.cos(angles), tf.sin(angles)
  first, second = tf.split(tf.cast(x, dtype), 2, axis=-1)
  rotated = tf.concat([first * cos - second * sin, second * cos + first * sin], -1)
  return tf.cast(rotated, x.dtype)


def check_llama3_scaling(value, name="llama3_scaling"):
  """`value` as a tuple of four positive floats `(factor, low_freq_factor,
  high_freq_factor, pretraining_length)` with `high_freq_factor >
  low_freq_factor`, or a ValueError naming `name`."""
  if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 4:
    raise ValueError(f"`{name}` must be (factor, low_freq_factor, "
                     "high_freq_factor, pretraining_length). Received: "
                     f"{name}={value!r}")
  checked = tuple(checks.positive_number(f"{name}[{i}]", v)
                  for i, v in enumerate(value))
  if checked[2] <= checked[1]:
    raise ValueError(f"`{name}` needs high_freq_factor > low_freq_factor. "
                     f"Received: {name}={tuple(value)}")
  return checked


def _frequencies(size, max_wavelength, llama3_scaling):
  """The `H / 2` rotation frequencies, as Python floats (float64)."""
  out = [max_wavelength ** (-i / size) for i in range(0, size, 2)]
  if llama3_scaling is None:
    return out
  factor, low, high, length = check_llama3_scaling(llama3_scaling)
  scaled = []
  for frequency in out:
    wavelength = 2 * math.pi / frequency
    if wavelength < length / high:  # short wavelengths: unchanged
      scaled.append(frequency)
    elif wavelength > length / low:  # long ones: stretched
      scaled.append(frequency / factor)
    else:  # between: interpolated
      smooth = (length / wavelength - low) / (high - low)
      scaled.append((1 - smooth) * frequency / factor + smooth * frequency)
  return scaled
