"""Export a user's saved Keras model (one that may hold tf_mha layers)."""

import tf_keras

import tf_mha  # noqa: F401  (registers the layers as Keras serializables)
from tf_mha.export import serving


def export_keras_model(model_path, *, output_dir, model_name, version=None,
                       overwrite=False):
  """Loads a saved Keras model and exports it for TF Serving, atomically.

  The `serving_default` signature is the model's call on its input specs.

  Returns:
    The version directory.

  Raises:
    ValueError: when `model_path` cannot be loaded as a Keras model.
  """
  try:
    model = tf_keras.models.load_model(model_path, compile=False)
  except (OSError, IOError, ValueError) as e:
    raise ValueError(f"Could not load a Keras model from `keras_model`="
                     f"{model_path!r}: {e}") from e
  return serving.export(model, output_dir, model_name, version,
                        overwrite=overwrite)
