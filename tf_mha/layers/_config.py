"""`MultiHeadAttention`'s config: what `get_config` writes and
`from_config` reads, as tf.keras and Keras 3 name it."""

import tf_keras

from tf_mha.layers import _layer_checks
from tf_mha.layers import _rotary


# `get_config` entries: the attributes `_<name>` as they are (`seed` is
# `_dropout_seed`: Model Garden's KernelAttention keeps its own `_seed`,
# and tf.keras has none), and the ones their Keras module serializes.
PLAIN_CONFIG = ("num_heads", "key_dim", "value_dim", "dropout", "use_bias",
                 "output_shape", "attention_axes", "flash_attention",
                 "dropout_seed", "sliding_window", "use_gate",
                 "softmax_robust_masking")


SERIALIZED_CONFIG = (
    (tf_keras.initializers, ("kernel_initializer", "bias_initializer")),
    (tf_keras.regularizers, ("kernel_regularizer", "bias_regularizer",
                             "activity_regularizer")),
    (tf_keras.constraints, ("kernel_constraint", "bias_constraint")),
)


def layer_config(layer):
  """The layer's own `get_config` entries (the base `Layer`'s not included)."""
  config = {name: getattr(layer, "_" + name) for name in PLAIN_CONFIG}
  config["seed"] = config.pop("dropout_seed")
  for module, names in SERIALIZED_CONFIG:
    config.update({name: module.serialize(getattr(layer, "_" + name))
                   for name in names})
  config.update(_rotary.config_entries(layer))
  for name in ("query_shape", "key_shape", "value_shape"):
    config[name] = _layer_checks.shape_list(getattr(layer, "_" + name))
  return config


def from_config(cls, config):
  """A layer of class `cls` from `config`, built when it holds the shapes."""
  config = dict(config)
  shapes = [config.pop(k, None) for k in ("query_shape", "value_shape",
                                          "key_shape")]
  layer = cls(**config)
  if None not in shapes:
    layer._build_from_signature(*shapes)  # pylint: disable=protected-access
  return layer
