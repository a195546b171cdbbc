"""Which compiler will run the ops being built: some choices differ by it."""

import tensorflow as tf
from tensorflow.python.ops import control_flow_util


def in_xla_context():
  """Whether the op being built will be compiled by XLA: traced inside
  `tf.function(jit_compile=True)`, a Keras model compiled with
  `jit_compile=True`, or a TPU replica step (tf.keras asks the same way)."""
  if tf.executing_eagerly():
    return False
  return control_flow_util.GraphOrParentsInXlaContext(
      tf.compat.v1.get_default_graph())
