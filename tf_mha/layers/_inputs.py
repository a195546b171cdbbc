"""Call inputs of `MultiHeadAttention`: tensors, ragged inputs, Keras masks.

Shapes: `B` batch, `T` query length, `S` key/value length; N-D inputs put
several attention axes in place of `T` and `S`.
"""

import tensorflow as tf

from tf_mha.ops import checks
from tf_mha.ops import masks


def keras_mask(tensor, explicit):
  """`explicit` if given, else the Keras mask `tensor` carries (or None)."""
  if explicit is not None:
    return explicit
  return getattr(tensor, "_keras_mask", None)


def dense_inputs(query, value, key):
  """Tensors from array-likes; ragged inputs become dense, as in tf.keras.

  Raises:
    ValueError, TypeError: naming an input that is missing or not an array
      of numbers.

  Returns:
    `(query, value, key, lengths)`: `lengths` are the ragged query's nested
    row lengths, to make the output ragged again, or None.
  """
  converted = {}

  def tensor(name, x):
    if id(x) not in converted:  # `key` is often `value` itself
      converted[id(x)] = checks.tensor(name, x)
    return converted[id(x)]

  query, value, key = tensor("query", query), tensor("value", value), tensor(
      "key", key)
  lengths = None
  if isinstance(query, tf.RaggedTensor):
    lengths = query.nested_row_lengths()
    query = query.to_tensor()
  key_ragged = isinstance(key, tf.RaggedTensor)
  value_ragged = isinstance(value, tf.RaggedTensor)
  same = key is value
  if key_ragged and value_ragged:
    bound = tf.maximum(key.bounding_shape(), value.bounding_shape())
    value = value.to_tensor(shape=bound)
    key = value if same else key.to_tensor(shape=bound)
  elif key_ragged:
    key = key.to_tensor(shape=tf.shape(value))
  elif value_ragged:
    value = value.to_tensor(shape=tf.shape(key))
  return query, value, key, lengths


def padding_masks(query_mask, value_mask, key_mask, axes):
  """The given Keras masks, shaped to broadcast against `[B, T, S]`.

  Args:
    query_mask: `[B, T]` or None; becomes `[B, T, 1]`.
    value_mask: `[B, S]` or None; becomes `[B, 1, S]`.
    key_mask: `[B, S]` or None; becomes `[B, 1, S]`.
    axes: how many attention axes `T` (and `S`) span.

  Returns:
    A list of boolean masks, one per given mask.
  """
  parts = []
  if query_mask is not None:
    mask = masks.to_bool_mask(query_mask)
    for _ in range(axes):
      mask = tf.expand_dims(mask, -1)
    parts.append(mask)
  for mask in (value_mask, key_mask):
    if mask is not None:
      mask = masks.to_bool_mask(mask)
      for _ in range(axes):
        mask = tf.expand_dims(mask, -1 - axes)
      parts.append(mask)
  return parts
