"""A training task: a model builder, its loss and its examples; `keras_task`
reads a user's saved Keras model and `.npz` data."""

import dataclasses
import os
from typing import Callable, Optional

import numpy as np
import tf_keras

from tf_mha import layers  # noqa: F401  (registers the layers as Keras serializables)
from tf_mha.training import trainer


@dataclasses.dataclass
class Task:
  build_model: Callable  # () -> Keras model, called under the strategy scope
  loss: Callable  # (y_true, y_pred) -> per-example loss [B]
  train: trainer.Examples
  test: Optional[trainer.Examples]


def keras_task(model_path, data_path, loss="sparse_categorical_crossentropy",
               seed=0):
  """A saved Keras model trained on `x`, `y` from an `.npz` file."""
  if not os.path.exists(model_path):
    raise ValueError(f"`model` does not exist. Received: model={model_path!r}")
  try:
    with np.load(data_path) as arrays:
      examples = trainer.Examples(arrays["x"], arrays["y"])
  except (OSError, KeyError, ValueError) as e:
    raise ValueError(f"`data` must be an .npz file with arrays 'x' and 'y'. "
                     f"Received: data={data_path!r} ({e})") from e
  if len(examples.x) != len(examples.y):
    raise ValueError(f"`data` arrays x and y differ in length: "
                     f"{len(examples.x)} != {len(examples.y)} (data={data_path!r})")
  try:
    loss_fn = tf_keras.losses.get(loss)
  except ValueError as e:
    raise ValueError(f"`loss` is not a Keras loss. Received: loss={loss!r}") from e

  def build_model():
    tf_keras.utils.set_random_seed(seed)
    try:
      return tf_keras.models.load_model(model_path, compile=False)
    except (OSError, ValueError, TypeError, ImportError) as e:
      raise ValueError(
          "`model` is not a saved Keras model (.keras, .h5 or SavedModel "
          f"directory). Received: model={model_path!r} ({type(e).__name__}: "
          f"{str(e)[:300]})") from e

  return Task(build_model, loss_fn, examples, None)


