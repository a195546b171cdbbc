"""Runs before any test module touches TensorFlow: two logical CPU devices,
so MirroredStrategy has two replicas on a machine without GPUs. Every test
starts from the same seeds, whatever ran before it in the same process."""

import pytest
import tf_keras

from tf_mha import training

training.logical_cpus(2)


@pytest.fixture(autouse=True)
def _seeded():
  """Seeds Python, NumPy, TensorFlow and tf_keras' initializer seed stream.

  `tf.test.TestCase.setUp` seeds the first three but not tf_keras' stream,
  from which unseeded initializers draw: without this, a test's weights
  depended on the tests that ran before it in the same worker.
  """
  tf_keras.utils.set_random_seed(0)
