"""`patch_tf_keras()`: `tf_keras.layers.MultiHeadAttention` becomes tf_mha's.

For libraries that subclass or build tf.keras' layer (TensorFlow Model
Garden's attention layers and encoders, say): patch before importing them,
and their classes are built on `tf_mha.MultiHeadAttention`.

Examples:
  >>> patch = patch_tf_keras()
  >>> tf_keras.layers.MultiHeadAttention is tf_mha.MultiHeadAttention
  True
  >>> patch.restore()
  >>> tf_keras.layers.MultiHeadAttention is tf_mha.MultiHeadAttention
  False

A class statement binds its base when it runs, so a module that subclassed
or imported the old class before the patch keeps it: `patch_tf_keras`
refuses, naming those modules, instead of leaving a mix of both classes.
"""

import sys

import tf_keras

from tf_mha.layers import multi_head_attention


def _original():
  """tf_keras' own class, whether or not the patch is in place."""
  from tf_keras.src.layers.attention import multi_head_attention as keras_mha  # pylint: disable=g-import-not-at-top
  return keras_mha.MultiHeadAttention


def _public_modules():
  """tf_keras' public `layers` modules (`tf_keras.layers` and the versioned
  API copies that `tf.keras` may be) that are loaded."""
  return [module for name, module in list(sys.modules.items())
          if module is not None and name.startswith("tf_keras")
          and name.endswith(".layers") and ".src." not in name
          and hasattr(module, "MultiHeadAttention")]


def bound_elsewhere(original=None):
  """Modules outside tf_keras that already hold tf_keras' class: as a name
  (`from tf_keras.layers import MultiHeadAttention`) or as the base of a
  class they define. Sorted names."""
  original = original or _original()
  names = set()
  stack = list(original.__subclasses__())
  while stack:
    cls = stack.pop()
    stack.extend(cls.__subclasses__())
    module = sys.modules.get(cls.__module__)
    # Only classes still reachable by name from a loaded module count.
    if (not cls.__module__.startswith(("tf_keras.", "tf_mha.")) and
        getattr(module, cls.__name__, None) is cls):
      names.add(cls.__module__)
  for name, module in list(sys.modules.items()):
    if module is None or name.startswith(("tf_keras", "tf_mha", "keras")):
      continue
    try:
      values = list(vars(module).values())
    except TypeError:
      continue
    if any(value is original for value in values):
      names.add(name)
  return sorted(names)


class Patch:
  """An applied patch; `restore()` (or leaving a `with` block) undoes it."""

  def __init__(self, modules, original):
    self._modules = modules
    self._original = original

  def restore(self):
    """Puts tf_keras' own class back where the patch replaced it."""
    for module in self._modules:
      module.MultiHeadAttention = self._original
    self._modules = []

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.restore()


def patch_tf_keras():
  """Makes `tf_keras.layers.MultiHeadAttention` resolve to tf_mha's layer.

  Opt-in and reversible. Everything that looks the class up after the patch
  (a subclass defined, a model built) gets `tf_mha.MultiHeadAttention`,
  whose protected methods and attributes behave as tf.keras' do for
  subclasses. Models saved with tf_keras' layer still load as tf_keras'
  layer; their weights load into either.

  Returns:
    A `Patch`: call `restore()`, or use it as a context manager. Patching
      again while patched changes nothing.

  Raises:
    RuntimeError: a module outside tf_keras already subclassed or imported
      tf_keras' class (it was imported before the patch); the message names
      the modules. Patch before importing them.
  """
  original = _original()
  modules = [m for m in _public_modules() if m.MultiHeadAttention is original]
  bound = bound_elsewhere(original)
  if bound:
    raise RuntimeError(
        "patch_tf_keras() must run before anything subclasses or imports "
        "tf_keras.layers.MultiHeadAttention; these modules already hold "
        f"tf_keras' class and would keep it: {', '.join(bound)}. Call "
        "tf_mha.patch_tf_keras() before importing them.")
  for module in modules:
    module.MultiHeadAttention = multi_head_attention.MultiHeadAttention
  return Patch(modules, original)
