"""The projections of `MultiHeadAttention`: `EinsumDense` sublayers.

Shapes: `B` batch, `T` length, `D` model size, `N` heads, `H` head size.

The sublayers are the same as tf.keras' (names, equations, variable shapes),
so weights and checkpoints load both ways. At call time the layer's own
linear ones run as one plain matmul on the reshaped kernel (`apply`): under
XLA, the einsum's gradients otherwise write transposed copies of the
output gradient and of the kernel.
"""

import tensorflow as tf
import tf_keras

from tf_mha import equations


def input_projection(input_rank, num_heads, head_size, *, name, use_bias,
                     activation=None, **kwargs):
  """The `EinsumDense` from `[B, T, D]` (any rank) to `[B, T, N, H]`."""
  equation, bias_axes, output_rank = equations.projection_equation(
      input_rank - 1, bound_dims=1, output_dims=2)
  return tf_keras.layers.EinsumDense(
      equation,
      output_shape=[None] * (output_rank - 3) + [num_heads, head_size],
      bias_axes=bias_axes if use_bias else None,
      activation=activation,
      name=name,
      **kwargs)


def output_projection(free_dims, output_shape, *, name, use_bias, **kwargs):
  """The `EinsumDense` from `[B, T, N, V]` to `[B, T, *output_shape]`."""
  output_shape = ([output_shape] if isinstance(output_shape, int) else
                  list(output_shape))
  equation, bias_axes, output_rank = equations.projection_equation(
      free_dims, bound_dims=2, output_dims=len(output_shape))
  return tf_keras.layers.EinsumDense(
      equation,
      output_shape=[None] * (output_rank - 1 - len(output_shape)) +
      output_shape,
      bias_axes=bias_axes if use_bias else None,
      name=name,
      **kwargs)


def apply(dense, x, contract, dtype):
  """`dense(x)`, where `dense` contracts the last `contract` axes of `x`.

  A matmul on the kernel when `dense` is a linear `EinsumDense` with the
  equation and bias these builders give it; any other layer (a subclass's
  replacement) is called as it is.

  Args:
    dense: the projection sublayer, built.
    x: its input, `[B, T, D]` (`contract=1`) or `[B, T, N, V]` (`contract=2`).
    contract: how many trailing axes of `x` the projection contracts.
    dtype: the compute dtype the matmul runs in.

  Returns:
    The projection of `x`, as `dense(x)` gives it.
  """
  if not _is_plain(dense, x.shape.rank, contract):
    return dense(x)
  x = tf.cast(x, dtype)
  width = equations.product(x.shape[-contract:])
  kernel = tf.cast(dense.kernel, dtype)
  y = tf.matmul(tf.reshape(x, [-1, width]), tf.reshape(kernel, [width, -1]))
  if dense.bias is not None:
    y += tf.reshape(tf.cast(dense.bias, dtype), [-1])
  return tf.reshape(y, equations.dims(x)[:-contract] +
                    dense.kernel.shape[contract:].as_list())


def _is_plain(dense, input_rank, contract):
  """Whether `dense` is a linear projection as built here, so that a matmul
  on its kernel computes exactly `dense(x)`. (Its activity regularizer adds
  no loss when skipped: in tf.keras, only the attention layer's own applies.)"""
  if (type(dense) is not tf_keras.layers.EinsumDense or
      dense.activation is not tf_keras.activations.linear or
      getattr(dense, "kernel", None) is None):
    return False
  output_dims = dense.kernel.shape.rank - contract
  equation, _, _ = equations.projection_equation(
      input_rank - contract, bound_dims=contract, output_dims=output_dims)
  return (dense.equation == equation and
          (dense.bias is None or dense.bias.shape == dense.kernel.shape[contract:]))
