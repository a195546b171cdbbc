"""Which compiler will run the ops being built: some choices differ by it.

Also: autograph leaves tf_mha's graph-building packages as they are, as it
leaves tf_keras' own layers (its rules name `tf_keras`). They branch in
Python on static shapes and flags only and use `tf.cond`/`tf.while_loop`
where a tensor decides, so converting them changes nothing but time: it was
half the time of building a Model Garden encoder on our layer. Code of
users, subclasses' own methods included, is converted as before.
"""

import tensorflow as tf
from tensorflow.python.autograph.core import config as autograph_config
from tensorflow.python.autograph.core import config_lib
from tensorflow.python.ops import control_flow_util

GRAPH_READY_PACKAGES = ("tf_mha.ops", "tf_mha.layers", "tf_mha.models")


def in_xla_context():
  """Whether the op being built will be compiled by XLA: traced inside
  `tf.function(jit_compile=True)`, a Keras model compiled with
  `jit_compile=True`, or a TPU replica step (tf.keras asks the same way)."""
  if tf.executing_eagerly():
    return False
  return control_flow_util.GraphOrParentsInXlaContext(
      tf.compat.v1.get_default_graph())


def _leave_to_graph_mode(packages):
  """Puts a do-not-convert rule for each package first in autograph's
  rules (once: the first rule that matches a module decides)."""
  rules = tuple(autograph_config.CONVERSION_RULES)
  named = {str(rule) for rule in rules}
  new = tuple(rule for rule in map(config_lib.DoNotConvert, packages)
              if str(rule) not in named)
  autograph_config.CONVERSION_RULES = new + rules


_leave_to_graph_mode(GRAPH_READY_PACKAGES)
