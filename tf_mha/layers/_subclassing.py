"""How `MultiHeadAttention` tells that a subclass written for tf.keras took
over part of the computation (then it gets tf.keras' contract and leniency),
and the Keras 3 property aliases that such a subclass may shadow.
"""


class Alias:
  """A read-only alias of an attribute that an assignment can shadow: a
  non-data descriptor, unlike `property`."""

  def __init__(self, attribute):
    self._attribute = attribute

  def __get__(self, layer, owner=None):
    return self if layer is None else getattr(layer, self._attribute)


# Methods whose override means a subclass sets up attention its own way:
# `_compute_attention` then runs tf.keras' recipe on the subclass's state.
STATE_HOOKS = ("_build_attention", "_masked_softmax")


# ... or computes it its own way: the layer's stricter checks step aside.
COMPUTING_HOOKS = ("call", "_build_from_signature", "_compute_attention",
                    *STATE_HOOKS)


# Methods whose override means a subclass makes the masks its own way.
MASK_HOOKS = ("_compute_attention_mask", "_compute_causal_mask",
               "_compute_sliding_window_mask")


def overrides(layer, name):
  """Whether `layer` replaces `MultiHeadAttention.<name>`: in a class from
  outside tf_mha (its own subclasses keep the contract), or on the instance
  (Model Garden assigns `self._masked_softmax` a layer)."""
  if name in vars(layer):
    return True
  owner = next(c for c in type(layer).__mro__ if name in vars(c))
  return not owner.__module__.startswith("tf_mha.")


def overrides_any(layer, names):
  return any(overrides(layer, name) for name in names)


def takes_over(layer):
  """Whether a subclass computes attention its own way (then `call` passes
  it the masks as tf.keras does)."""
  return overrides(layer, "_compute_attention") or state_changed(layer)


def state_changed(layer):
  """Whether a subclass set up attention its own way: it overrides a
  `STATE_HOOKS` method, or changed the equations `_build_attention` set."""
  return (overrides_any(layer, STATE_HOOKS) or
          getattr(layer, "_op_equations", None) !=
          (layer._dot_product_equation, layer._combine_equation))  # pylint: disable=protected-access
