"""Einsum equations and axis bookkeeping for any `attention_axes`.

Projected tensors have shape `[<batch dims>, <attention dims>, N, H]` in the
input's own axis order: the input's non-feature axes, then heads `N` and head
size `H`. The attention math runs on the flat layout `[B, T, N, H]`, where `B`
is the product of the batch dims and `T` (or `S`) of the attention dims;
`AxesPlan` converts between the two.
"""

import string

import numpy as np
import tensorflow as tf

_LETTERS = string.ascii_lowercase


def projection_equation(free_dims, bound_dims, output_dims):
  """Equation for an `EinsumDense` projection, as tf.keras builds it.

  Examples:
    >>> projection_equation(2, 1, 2)
    ('abc,cde->abde', 'de', 4)

  Args:
    free_dims: leading input axes carried through.
    bound_dims: trailing input axes contracted with the kernel.
    output_dims: trailing output axes produced by the kernel.

  Returns:
    `(equation, bias_axes, output_rank)`.
  """
  free = _LETTERS[:free_dims]
  bound = _LETTERS[free_dims:free_dims + bound_dims]
  out = _LETTERS[free_dims + bound_dims:free_dims + bound_dims + output_dims]
  return f"{free}{bound},{bound}{out}->{free}{out}", out, free_dims + output_dims


def attention_equations(rank, attention_axes):
  """tf.keras' dot-product and combine equations (key first, then query).

  These are what `_compute_attention` overrides written for tf.keras use.

  Examples:
    >>> attention_equations(4, (1,))
    ('aecd,abcd->acbe', 'acbe,aecd->abcd', 4)

  Args:
    rank: rank of the projected tensors, `[..., N, H]`.
    attention_axes: tuple of non-negative attention axes.

  Returns:
    `(dot_product_equation, combine_equation, scores_rank)`.
  """
  target = _LETTERS[:rank]
  batch_dims = [i for i in range(rank - 1) if i not in attention_axes]
  extra = iter(_LETTERS[rank:])
  source = "".join(
      next(extra) if i in attention_axes else target[i] for i in range(rank))
  product = "".join([target[i] for i in batch_dims] +
                    [target[i] for i in attention_axes] +
                    [source[i] for i in attention_axes])
  return (f"{source},{target}->{product}", f"{product},{source}->{target}",
          len(product))


def normalize_attention_axes(attention_axes, input_rank):
  """Resolves `attention_axes` against the input rank.

  Negative axes count from the end of the *input* (so `-2` on `[B, T, D]` is
  the sequence axis). `None` means every axis but batch and features.

  Args:
    attention_axes: `None` or a tuple of ints.
    input_rank: rank of the query input, `>= 3`.

  Returns:
    A sorted tuple of axes in `[1, input_rank - 2]`.

  Raises:
    ValueError: when an axis is the batch or feature axis, out of range, or
      repeated.
  """
  if attention_axes is None:
    return tuple(range(1, input_rank - 1))
  resolved = []
  for axis in attention_axes:
    positive = axis + input_rank if axis < 0 else axis
    if not 1 <= positive <= input_rank - 2:
      raise ValueError(
          "`attention_axes` must name axes between the batch axis and the "
          f"feature axis of the inputs (1 to {input_rank - 2} for inputs of "
          f"rank {input_rank}). Received: attention_axes={tuple(attention_axes)}")
    resolved.append(positive)
  if len(set(resolved)) != len(resolved):
    raise ValueError("`attention_axes` must not repeat an axis. Received: "
                     f"attention_axes={tuple(attention_axes)}")
  return tuple(sorted(resolved))


def dims(x):
  """The shape of `x` as a list: Python ints where static, else scalars."""
  static = x.shape.as_list()
  dynamic = tf.shape(x)
  return [d if d is not None else dynamic[i] for i, d in enumerate(static)]


def product(values):
  """Product of ints and scalar tensors, staying a Python int when it can."""
  result = 1
  for v in values:
    result = result * v
  return result


class AxesPlan:
  """Moves projected tensors between the input layout and `[B, T, N, H]`.

  Args:
    rank: rank of the projected tensors (input rank + 1).
    attention_axes: sorted attention axes, from `normalize_attention_axes`.
  """

  def __init__(self, rank, attention_axes):
    self.attention_axes = tuple(attention_axes)
    self.batch_axes = tuple(
        i for i in range(rank - 2) if i not in self.attention_axes)
    self.perm = list(self.batch_axes + self.attention_axes + (rank - 2, rank - 1))
    self.inverse_perm = list(np.argsort(self.perm))
    self.is_identity = self.perm == list(range(rank))
    self.is_flat = self.is_identity and len(self.batch_axes) == 1 and len(
        self.attention_axes) == 1

  def to_flat(self, x):
    """`[<input layout>, N, H]` -> `[B, T, N, H]`."""
    if self.is_flat:
      return x
    if not self.is_identity:
      x = tf.transpose(x, self.perm)
    d = dims(x)
    nb = len(self.batch_axes)
    na = len(self.attention_axes)
    return tf.reshape(x, [product(d[:nb]), product(d[nb:nb + na])] + d[-2:])

  def from_flat(self, x, like):
    """`[B, T, N, H]` -> the layout of `like` (a projected query)."""
    if self.is_flat:
      return x
    d = dims(tf.transpose(like, self.perm)) if not self.is_identity else dims(like)
    x = tf.reshape(x, d[:-1] + [dims(x)[-1]])
    return x if self.is_identity else tf.transpose(x, self.inverse_perm)

  def scores_from_flat(self, scores, query, key):
    """`[B, N, T, S]` -> `[<batch dims>, N, <T dims>, <S dims>]`."""
    if self.is_flat:
      return scores
    qd, kd = dims(query), dims(key)
    shape = ([qd[i] for i in self.batch_axes] + [qd[-2]] +
             [qd[i] for i in self.attention_axes] +
             [kd[i] for i in self.attention_axes])
    return tf.reshape(scores, shape)

  def mask_to_flat(self, mask, query, key):
    """A mask on the scores' layout -> `[B, 1 or N, T, S]`.

    As in tf.keras, a mask with fewer axes than the scores
    `[<batch dims>, N, <T dims>, <S dims>]` gains axes just before its
    `<T dims>`: `[B, T, S]` becomes `[B, 1, T, S]`, and on N-D inputs the
    leading mask axes line up with the leading batch axes.
    """
    na = len(self.attention_axes)
    rank = len(self.batch_axes) + 1 + 2 * na
    while mask.shape.rank < rank:
      mask = tf.expand_dims(mask, -2 * na - 1)
    if self.is_flat:
      return mask
    qd, kd = dims(query), dims(key)
    batch = [qd[i] for i in self.batch_axes]
    q_attn = [qd[i] for i in self.attention_axes]
    k_attn = [kd[i] for i in self.attention_axes]
    heads = 1 if mask.shape[len(batch)] == 1 else qd[-2]
    mask = tf.broadcast_to(mask, batch + [heads] + q_attn + k_attn)
    return tf.reshape(mask, [product(batch), heads, product(q_attn),
                             product(k_attn)])
