"""What `tools/train.py` trains: the demo, or a user's saved model and data."""

import dataclasses
import os
from typing import Callable, Optional

import numpy as np
import tf_keras

import tf_mha  # noqa: F401  (registers the layers as Keras serializables)
from tf_mha import training


@dataclasses.dataclass
class Task:
  build_model: Callable  # () -> Keras model, called under the strategy scope
  loss: Callable  # (y_true, y_pred) -> per-example loss [B]
  train: training.Examples
  test: Optional[training.Examples]


def demo_task(seed=0):
  """The demo classifier on the generated corpus (token ids of static length)."""
  from tf_mha.demo import model as model_lib
  from tf_mha.demo import pipeline
  corpus = pipeline.demo_data(seed)

  def build_model():
    tf_keras.utils.set_random_seed(seed)
    return model_lib.build_classifier(len(corpus.vocab))

  return Task(build_model, tf_keras.losses.sparse_categorical_crossentropy,
              training.Examples(corpus.ids, corpus.labels),
              training.Examples(corpus.test_ids, corpus.test_labels))


def keras_task(model_path, data_path, loss="sparse_categorical_crossentropy",
               seed=0):
  """A saved Keras model trained on `x`, `y` from an `.npz` file."""
  if not os.path.exists(model_path):
    raise ValueError(f"`model` does not exist. Received: model={model_path!r}")
  try:
    with np.load(data_path) as arrays:
      examples = training.Examples(arrays["x"], arrays["y"])
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


def load_task(model_path=None, data_path=None, loss=None, seed=0):
  """`keras_task` when a model is given, else `demo_task`."""
  if model_path:
    return keras_task(model_path, data_path, loss or
                      "sparse_categorical_crossentropy", seed)
  return demo_task(seed)
