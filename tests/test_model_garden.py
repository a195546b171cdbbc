"""TensorFlow Model Garden (tf-models-official) on tf_mha.

Model Garden's attention layers subclass `tf_keras.layers.MultiHeadAttention`,
and its blocks build it. Here: its own test files run with our class as the
base (`tf_mha.patch_tf_keras`), and each subclass, block and encoder, built
on tf_mha and on tf_keras with the same weights, gives the same outputs.
"""

import importlib
import json
import importlib.util
import os
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf
import tf_keras
from absl.testing import parameterized

import tf_mha
from tf_mha.layers import keras_patch
from tests import bounds
from tests import model_garden_parity

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HAVE_MODEL_GARDEN = importlib.util.find_spec("official") is not None
# Fails on tf_keras' own layer too (tf-models-official 2.20.0 with TF 2.21:
# its `.keras` round trip of BertEncoderV2 does not reload).
_FAILS_ON_TF_KERAS = [
    "networks/bert_encoder_test.py::BertEncoderTest::test_serialize_deserialize",
]
_SKIP = "tf-models-official is not installed (README: the test command)"
# Model Garden's test files for the layers and encoders on MultiHeadAttention,
# run in one process (each process of its own paid Model Garden's import).
_FILES = ("layers/relative_attention_test.py", "layers/transformer_xl_test.py",
          "networks/xlnet_base_test.py", "layers/attention_test.py",
          "layers/kernel_attention_test.py", "layers/talking_heads_attention_test.py",
          "layers/multi_channel_attention_test.py",
          "layers/multi_query_attention_test.py",
          "layers/per_dim_scale_attention_test.py", "layers/bigbird_attention_test.py",
          "layers/block_sparse_attention_test.py",
          "layers/transformer_encoder_block_test.py", "layers/transformer_test.py",
          "layers/transformer_scaffold_test.py", "layers/mobile_bert_layers_test.py",
          "networks/bert_encoder_test.py", "networks/albert_encoder_test.py",
          "networks/mobile_bert_encoder_test.py", "networks/encoder_scaffold_test.py",
          "networks/funnel_transformer_test.py")


class PatchTest(tf.test.TestCase):

  def test_patch_restore_and_idempotence(self):
    original = tf_keras.layers.MultiHeadAttention
    self.assertIsNot(original, tf_mha.MultiHeadAttention)
    with tf_mha.patch_tf_keras():
      self.assertIs(tf_keras.layers.MultiHeadAttention, tf_mha.MultiHeadAttention)
      again = tf_mha.patch_tf_keras()  # patched already: changes nothing
      again.restore()
      self.assertIs(tf_keras.layers.MultiHeadAttention, tf_mha.MultiHeadAttention)

      class Sub(tf_keras.layers.MultiHeadAttention):
        pass

      self.assertTrue(issubclass(Sub, tf_mha.MultiHeadAttention))
    self.assertIs(tf_keras.layers.MultiHeadAttention, original)

  def test_refuses_when_a_module_already_bound_the_class(self):
    module = type(sys)("early_user_module")
    module.MultiHeadAttention = tf_keras.layers.MultiHeadAttention
    sys.modules[module.__name__] = module
    try:
      with self.assertRaisesRegex(RuntimeError, "early_user_module"):
        tf_mha.patch_tf_keras()
      self.assertIsNot(tf_keras.layers.MultiHeadAttention, tf_mha.MultiHeadAttention)
    finally:
      del sys.modules[module.__name__]

  def test_refuses_when_a_subclass_exists(self):
    module = type(sys)("early_subclass_module")
    exec("import tf_keras\nclass Early(tf_keras.layers.MultiHeadAttention):\n"
         "  pass\n", module.__dict__)  # pylint: disable=exec-used
    module.Early.__module__ = module.__name__
    sys.modules[module.__name__] = module
    try:
      self.assertEqual(keras_patch.bound_elsewhere(), ["early_subclass_module"])
      with self.assertRaisesRegex(RuntimeError, "before importing them"):
        tf_mha.patch_tf_keras()
    finally:
      del sys.modules[module.__name__]


class ModelGardenSuiteTest(tf.test.TestCase):
  """Model Garden's own test files, with our class as their base."""

  def test_files_pass_on_tf_mha(self):
    if not _HAVE_MODEL_GARDEN:
      self.skipTest(_SKIP)
    root = os.path.join(os.path.dirname(
        importlib.util.find_spec("official").origin), "nlp", "modeling")
    # Options through PYTEST_ADDOPTS: tf.test parses sys.argv with absl's
    # flags (for its temporary directory) and refuses pytest's own.
    options = ["-q", "-p", "tests.model_garden_plugin", "-p", "no:cacheprovider",
               "-W", "ignore", f"--rootdir={root}",
               *(f"--deselect={t}" for t in _FAILS_ON_TF_KERAS)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=_REPO,
               PYTEST_ADDOPTS=" ".join(options))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *(os.path.join(root, f) for f in _FILES)],
        capture_output=True, text=True, cwd=self.get_temp_dir(), env=env,
        timeout=1500)
    tail = result.stdout[-3000:] + result.stderr[-3000:]
    self.assertIn("built on tf_mha.MultiHeadAttention", result.stderr, tail)
    self.assertEqual(result.returncode, 0, tail)
    self.assertRegex(result.stdout, r"\d+ passed", tail)
    self.assertNotRegex(result.stdout, r"\d+ (failed|error)", tail)


class BertBenchmarkTest(tf.test.TestCase):

  def test_bert_steps_share_weights_and_outputs(self):
    if not _HAVE_MODEL_GARDEN:
      self.skipTest(_SKIP)
    code = ("import json\nfrom tf_mha.benchmarks import attention as lib\n"
            "times, diff = lib.bert_training_steps(batch=2, length=16, layers=1,"
            " hidden=32, heads=2, repeats=2, log=lambda s: None)\n"
            "print(json.dumps({'times': times, 'difference': diff}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, cwd=_REPO, timeout=600,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    report = json.loads(result.stdout.strip().splitlines()[-1])
    self.assertEqual(sorted(report["times"]), ["tf_keras", "tf_mha"])
    self.assertTrue(all(t > 0 for t in report["times"].values()))
    self.assertLess(report["difference"], 1e-5)


class ParityTest(tf.test.TestCase, parameterized.TestCase):
  """Each subclass, block and encoder on tf_mha and on tf_keras, with the
  same weights: the same outputs, eager and under XLA (1e-5, float32)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.results = None
    if not _HAVE_MODEL_GARDEN:
      return
    tmp = tempfile.mkdtemp()
    paths = {mode: os.path.join(tmp, f"{mode}.npz") for mode in ("keras", "tf_mha")}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=_REPO)
    for mode, extra in (("keras", []), ("tf_mha", [paths["keras"]])):
      result = subprocess.run(
          [sys.executable, "-m", "tests.model_garden_parity", mode, paths[mode],
           *extra], capture_output=True, text=True, cwd=_REPO, env=env,
          timeout=900)
      if result.returncode:
        raise AssertionError(f"{mode} side failed:\n{result.stderr[-4000:]}")
    cls.results = {mode: dict(np.load(path)) for mode, path in paths.items()}

  def setUp(self):
    super().setUp()
    if not _HAVE_MODEL_GARDEN:
      self.skipTest(_SKIP)

  @parameterized.named_parameters(*((n, n) for n in model_garden_parity.CASES))
  def test_same_outputs(self, case):
    keras, ours = self.results["keras"], self.results["tf_mha"]
    self.assertFalse(keras[f"{case}/on_tf_mha"])
    self.assertTrue(ours[f"{case}/on_tf_mha"])
    eager = sorted(k for k in keras if k.startswith(f"{case}/eager"))
    self.assertNotEmpty(eager)
    for key in eager:
      bounds.assert_close(keras[key], ours[key], bounds.LAYER_ULPS, msg=key)
      if model_garden_parity.CASES[case][1]:
        bounds.assert_close(keras[key], ours[key.replace("eager", "jit")],
                            bounds.LAYER_ULPS, msg=key + " under XLA")


if __name__ == "__main__":
  tf.test.main()
