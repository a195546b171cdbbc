"""The projections of `MultiHeadAttention`: `EinsumDense` sublayers.

Shapes: `B` batch, `T` length, `D` model size, `N` heads, `H` head size.

The sublayers are the same as tf.keras' (names, equations, variable shapes),
so weights and checkpoints load both ways. At call time the layer's own
linear ones run on their kernels (`apply`): under XLA as one plain matmul on
the reshaped kernel, because the einsum's gradients there write transposed
copies of the output gradient and of the kernel; without XLA as the einsum
op, which is one graph op where the matmul needs five reshapes around it
(T=64 forward+backward: 11.6 ms against 12.3).
"""

import sys

import tensorflow as tf
import tf_keras
from tensorflow.compiler.tf2xla.python import xla

from tf_mha.ops import compiler
from tf_mha.ops import equations


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

  Computed on the kernel (see the module docstring) when `dense` is a
  linear `EinsumDense` with the equation and bias these builders give it;
  any other layer (a subclass's replacement) is called as it is.

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
  kernel = tf.cast(dense.kernel, dtype)
  bias = None if dense.bias is None else tf.cast(dense.bias, dtype)
  if not compiler.in_xla_context():
    y = tf.einsum(dense.equation, x, kernel)
    return y if bias is None else y + bias
  width = equations.product(x.shape[-contract:])
  y = tf.matmul(tf.reshape(x, [-1, width]),
                _unfused(tf.reshape(kernel, [width, -1])))
  if bias is not None:
    y += tf.reshape(bias, [-1])
  return tf.reshape(y, equations.dims(x)[:-contract] +
                    kernel.shape[contract:].as_list())


@tf.custom_gradient
def _unfused(kernel):
  """`kernel`, which XLA may not fuse into the matmul that reads it (an
  optimization barrier; the gradient passes through). XLA:CPU otherwise
  fuses the reshape of a 3-D kernel into a matrix-vector product and emits
  both as one naive loop that reads the kernel column by column: a
  one-token decode step's [1, 512] x [512, 512] took 207 us that way and
  11.8 us with the barrier, as fast as a 2-D kernel (issue 26)."""
  return xla.optimization_barrier(kernel)[0], lambda gradient: gradient


def _is_plain(dense, input_rank, contract):
  """Whether `dense` is a linear projection as these builders (or Keras 3's
  attention layers) make it, so that a matmul on its kernel computes exactly
  `dense(x)`: a tf_keras or Keras 3 `EinsumDense` (not LoRA, not quantized)
  whose equation contracts the last `contract` axes of its input, in order,
  with the leading axes of its kernel. (Its activity regularizer adds no
  loss when skipped: in tf.keras, only the attention layer's own applies.)"""
  if type(dense) not in _einsum_dense_types() or getattr(
      dense, "lora_enabled", False) or getattr(dense, "quantization_mode", None):
    return False
  if getattr(dense.activation, "__name__", None) != "linear" or getattr(
      dense, "kernel", None) is None:
    return False
  return _contracts_leading_axes(dense.equation, input_rank, contract) and (
      dense.bias is None or
      tuple(dense.bias.shape) == tuple(dense.kernel.shape[contract:]))


def _contracts_leading_axes(equation, input_rank, contract):
  """Whether `equation` is `<free><bound>,<bound><out>-><free><out>` for an
  input of rank `input_rank` with `contract` bound axes (any letters)."""
  try:
    inputs, output = equation.split("->")
    x, kernel = inputs.split(",")
  except ValueError:
    return False
  if len(x) != input_rank or len(set(x + kernel)) != len(x) + len(kernel) - contract:
    return False
  free, bound = x[:input_rank - contract], x[input_rank - contract:]
  return kernel.startswith(bound) and output == free + kernel[contract:]


def _einsum_dense_types():
  """tf_keras' `EinsumDense`, and Keras 3's when Keras is loaded."""
  types = (tf_keras.layers.EinsumDense,)
  keras = sys.modules.get("keras")
  layers = getattr(keras, "layers", None)
  if layers is not None and hasattr(layers, "EinsumDense"):
    types += (layers.EinsumDense,)
  return types
