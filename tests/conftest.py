"""Runs before any test module touches TensorFlow: two logical CPU devices,
so MirroredStrategy has two replicas on a machine without GPUs. Every test
starts from the same seeds, whatever ran before it in the same process.

The float32 numeric-parity tests (against tf_keras, Keras 3, Model Garden,
KerasHub and the float64 NumPy references) carry the marker `parity`:
`.ci/run` runs them once more with oneDNN and XLA:CPU held to AVX2, so a
bound that holds only on the CPU it was set on fails before it lands.
"""

import pytest
import tf_keras

from tf_mha import training

training.logical_cpus(2)

# Node ids (prefixes) of the numeric-parity tests.
PARITY = (
    "tests/test_attention.py::AttentionTest",
    "tests/test_generator.py::DecoderTest",
    "tests/test_grouped_query_attention.py::KerasParityTest",
    "tests/test_grouped_query_attention.py::CacheTest",
    "tests/test_keras3.py::ParityTest",
    "tests/test_keras_hub.py::FamilyTest",
    "tests/test_model_garden.py::ParityTest",
    "tests/test_multi_head_attention.py::ParityTest",
    "tests/test_multi_head_attention.py::HighDimMaskTest",
    "tests/test_multi_head_attention.py::MaskTest",
    "tests/test_multi_head_attention.py::SubclassTest",
    "tests/test_ops.py::DotProductAttentionTest",
    "tests/test_ops.py::CausalChunksTest",
    "tests/test_ops.py::SlidingWindowTest",
    "tests/test_ops.py::GroupedQueryTest",
    "tests/test_rotary.py",
    "tests/test_segments.py::OpTest",
)


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "parity: a float32 numeric-parity test (run again under "
      "ONEDNN_MAX_CPU_ISA=AVX2 and XLA_FLAGS=--xla_cpu_max_isa=AVX2 by .ci/run)")


# Classes and modules that take minutes (their own processes, trained demos,
# exports shared by their tests), in the order they are handed out: first,
# so that the other worker never waits alone at the end.
SLOW_FIRST = (
    "tests/test_model_garden.py::ModelGardenSuiteTest",
    "tests/test_generator.py::GeneratorExportTest",
    "tests/test_cli.py::QuietOutputTest",
    "tests/test_keras_hub.py",
    "tests/test_training.py::ToolTest",
    "tests/test_export.py::DemoPipelineTest",
)
# Modules whose classes share what they build (KerasHub's presets, models
# and compiled `generate`): one worker runs the whole module.
WHOLE_MODULES = ("tests/test_keras_hub.py",)


def _rank(item):
  for rank, prefix in enumerate(SLOW_FIRST):
    if item.nodeid.startswith(prefix):
      return rank
  return len(SLOW_FIRST)


def pytest_xdist_make_scheduler(config, log):
  """Under `-n`, a test class (or a module's functions, or one of
  `WHOLE_MODULES`) goes to one worker whole: a class's `setUpClass` (a
  trained demo, an export) runs once."""
  from xdist import scheduler  # pylint: disable=g-import-not-at-top

  class Scheduling(scheduler.LoadScopeScheduling):

    def _split_scope(self, nodeid):
      module = nodeid.split("::")[0]
      return module if module in WHOLE_MODULES else super()._split_scope(nodeid)

  config.option.loadscopereorder = False  # SLOW_FIRST's order, not by size
  return Scheduling(config, log)


def pytest_collection_modifyitems(items):
  items.sort(key=_rank)  # stable: the rest keep their order
  for item in items:
    # 16-bit tests stay out: with oneDNN held to AVX2 on an AVX-512 CPU,
    # TensorFlow still picks oneDNN's 16-bit kernels from its own CPU check
    # and crashes; on a real AVX2 CPU it never picks them.
    if item.nodeid.startswith(PARITY) and "float16" not in item.nodeid:
      item.add_marker(pytest.mark.parity)


@pytest.fixture(autouse=True)
def _seeded():
  """Seeds Python, NumPy, TensorFlow and tf_keras' initializer seed stream.

  `tf.test.TestCase.setUp` seeds the first three but not tf_keras' stream,
  from which unseeded initializers draw: without this, a test's weights
  depended on the tests that ran before it in the same worker.
  """
  tf_keras.utils.set_random_seed(0)
