"""Keras 3 layers on tf_mha's op (`import tf_mha.keras3`; `import tf_mha`
loads none of it): Keras' own `MultiHeadAttention` and `GroupQueryAttention`
subclassed, their attention on `tf_mha.ops` on the TensorFlow backend.

May import Keras 3, `tf_mha.ops` and `tf_mha.layers`' projection helper.
"""

import keras

# The Keras versions this module is tested with (setup.py's `keras3` extra).
SUPPORTED_KERAS = ((3, 10), (4, 0))


def _check_keras_version(version):
  parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
  low, high = SUPPORTED_KERAS
  if not low <= parts < high:
    raise ImportError(
        f"tf_mha.keras3 supports Keras >= {low[0]}.{low[1]} and < {high[0]}; "
        f"this is Keras {version}. Install a supported one: "
        "pip install 'tf_mha[keras3]'")


_check_keras_version(keras.version())

# Checked before the layers are defined: they subclass Keras' own.
from tf_mha.keras3.layers import GroupedQueryAttention  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf_mha.keras3.layers import MultiHeadAttention  # pylint: disable=g-import-not-at-top,wrong-import-position

__all__ = ["GroupedQueryAttention", "MultiHeadAttention"]
