"""What `tools/train.py` trains: the demo classifier, or a user's model."""

import tf_keras

from tf_mha.demo import model as model_lib
from tf_mha.demo import pipeline
from tf_mha.training import tasks
from tf_mha.training import trainer


def demo_task(seed=0):
  """The demo classifier on the generated corpus (token ids of static length)."""
  corpus = pipeline.demo_data(seed)

  def build_model():
    tf_keras.utils.set_random_seed(seed)
    return model_lib.build_classifier(len(corpus.vocab))

  return tasks.Task(build_model,
                    tf_keras.losses.sparse_categorical_crossentropy,
                    trainer.Examples(corpus.ids, corpus.labels),
                    trainer.Examples(corpus.test_ids, corpus.test_labels))


def load_task(model_path=None, data_path=None, loss=None, seed=0):
  """`keras_task` when a model is given, else `demo_task`."""
  if model_path:
    return tasks.keras_task(model_path, data_path, loss or
                            "sparse_categorical_crossentropy", seed)
  return demo_task(seed)
