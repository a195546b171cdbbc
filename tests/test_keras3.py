"""tf_mha.keras3: Keras 3's attention layers on tf_mha's op, against Keras'
own layers on shared weights, Keras' own test files, and export."""

import os
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

import tf_mha.keras3 as k3
from tests import bounds
from tests import doc_pages
from tests import reference

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _normal(*shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _mask(shape, seed=2):
  mask = np.random.default_rng(seed).random(shape) < 0.7
  mask[..., 0] = True  # every query sees a key (Keras' scores differ there)
  return mask


_MHA_CASES = {
    "self": (dict(num_heads=4, key_dim=8), (2, 7, 16), None, {}),
    "cross": (dict(num_heads=4, key_dim=8, value_dim=6), (2, 7, 16), (2, 9, 12), {}),
    "causal": (dict(num_heads=4, key_dim=8), (2, 7, 16), None,
               dict(use_causal_mask=True)),
    "window": (dict(num_heads=4, key_dim=8, sliding_window=3), (2, 7, 16), None,
               dict(use_causal_mask=True)),
    "gate": (dict(num_heads=4, key_dim=8, use_gate=True), (2, 7, 16), None, {}),
    "masks": (dict(num_heads=4, key_dim=8), (2, 7, 16), None,
              dict(attention_mask=_mask((2, 7, 7)), use_causal_mask=True)),
    "nd_axes": (dict(num_heads=2, key_dim=4, attention_axes=(1, 2)),
                (2, 3, 4, 8), None, dict(attention_mask=_mask((2, 3, 4, 3, 4)))),
}


class ParityTest(tf.test.TestCase, parameterized.TestCase):

  def _compare(self, theirs, ours, args, call):
    want, want_scores = theirs(*args, return_attention_scores=True, **call)
    ours(*args)
    relative = lambda layer: [w.path.split("/", 1)[1] for w in layer.weights]
    self.assertEqual(relative(ours), relative(theirs))
    ours.set_weights(theirs.get_weights())
    got, scores = ours(*args, return_attention_scores=True, **call)
    bounds.assert_close(got, want, bounds.LAYER_ULPS)
    bounds.assert_close(scores, want_scores, bounds.LAYER_ULPS)
    bounds.assert_close(ours(*args, **call), theirs(*args, **call), bounds.LAYER_ULPS)
    compiled = tf.function(lambda *a: ours(*a, **call), jit_compile=True)
    bounds.assert_close(compiled(*args), theirs(*args, **call), bounds.LAYER_ULPS)
    with tf.GradientTape(persistent=True) as tape:
      loss_theirs = tf.reduce_sum(theirs(*args, **call) ** 2)
      loss_ours = tf.reduce_sum(ours(*args, **call) ** 2)
    want = tape.gradient(loss_theirs, theirs.trainable_variables)
    for a, b in zip(want, tape.gradient(loss_ours, ours.trainable_variables)):
      bounds.assert_close(b, a, bounds.LAYER_ULPS, scale_of=bounds.joint_scale(want))

  @parameterized.named_parameters(*((n, n) for n in _MHA_CASES))
  def test_multi_head_attention(self, case):
    config, query_shape, value_shape, call = _MHA_CASES[case]
    args = [_normal(*query_shape)]
    args.append(_normal(*(value_shape or query_shape), seed=1))
    self._compare(keras.layers.MultiHeadAttention(**config),
                  k3.MultiHeadAttention(**config), args, call)

  @parameterized.named_parameters(
      *[(f"k{k}_{case}", k, case) for k in (4, 2, 1)
        for case in ("self", "causal", "window", "gate", "masks")])
  def test_grouped_query_attention(self, kv_heads, case):
    config = dict(head_dim=8, num_query_heads=4, num_key_value_heads=kv_heads,
                  use_gate=case == "gate",
                  sliding_window=3 if case == "window" else None)
    call = dict(use_causal_mask=case in ("causal", "window", "masks"))
    if case == "masks":
      call.update(attention_mask=_mask((2, 7, 7)),
                  value_mask=np.array([[1] * 7, [1] * 5 + [0] * 2], bool))
    args = [_normal(2, 7, 16), _normal(2, 7, 16, seed=1)]
    self._compare(keras.layers.GroupQueryAttention(**config),
                  k3.GroupedQueryAttention(**config), args, call)

  def test_flash_attention_at_length_matches_float64_reference(self):
    layer = k3.MultiHeadAttention(num_heads=2, key_dim=8, flash_attention=True)
    x = _normal(1, 1500, 16)
    out = layer(x, x, use_causal_mask=True)
    want, _ = reference.multi_head_attention(layer.get_weights(), x, x,
                                             num_heads=2, causal=True)
    bounds.assert_close(out, want, bounds.LAYER_ULPS)
    with self.assertRaisesRegex(ValueError, "flash attention"):
      layer(x[:, :4], x[:, :4], return_attention_scores=True)

  def test_dropout_runs_only_in_training(self):
    layer = k3.MultiHeadAttention(num_heads=2, key_dim=4, dropout=0.5, seed=3)
    x = _normal(2, 5, 8)
    self.assertAllClose(layer(x, x), layer(x, x))
    self.assertNotAllClose(layer(x, x, training=True), layer(x, x))


class SavingTest(tf.test.TestCase):

  def _model(self, attention_cls):
    inp = keras.Input((6, 8))
    out = attention_cls(num_heads=2, key_dim=4)(inp, inp, use_causal_mask=True)
    return keras.Model(inp, out)

  def test_weights_and_keras_files_move_both_ways(self):
    x = _normal(2, 6, 8)
    keras.utils.set_random_seed(0)
    theirs = self._model(keras.layers.MultiHeadAttention)
    ours = self._model(k3.MultiHeadAttention)
    path = os.path.join(self.get_temp_dir(), "m.weights.h5")
    theirs.save_weights(path)
    ours.load_weights(path)
    bounds.assert_close(ours(x), theirs(x), bounds.LAYER_ULPS)
    ours.save_weights(path)
    theirs.load_weights(path)
    bounds.assert_close(ours(x), theirs(x), bounds.LAYER_ULPS)
    # `.keras` files: Keras' model's into ours, and ours reloaded as ours.
    keras.utils.set_random_seed(1)
    fresh = self._model(k3.MultiHeadAttention)
    keras_file = os.path.join(self.get_temp_dir(), "theirs.keras")
    theirs.save(keras_file)
    fresh.load_weights(keras_file)
    bounds.assert_close(fresh(x), theirs(x), bounds.LAYER_ULPS)
    ours_file = os.path.join(self.get_temp_dir(), "ours.keras")
    ours.save(ours_file)
    again = keras.models.load_model(ours_file)
    self.assertIsInstance(again.layers[1], k3.MultiHeadAttention)
    bounds.assert_close(again(x), ours(x), bounds.LAYER_ULPS)
    back = self._model(keras.layers.MultiHeadAttention)
    back.load_weights(ours_file)
    bounds.assert_close(back(x), ours(x), bounds.LAYER_ULPS)

  def test_export_serves_in_a_clean_process_and_converts_to_builtins(self):
    model = self._model(k3.MultiHeadAttention)
    x = _normal(2, 6, 8)
    path = os.path.join(self.get_temp_dir(), "export")
    model.export(path, verbose=False)
    np.save(os.path.join(self.get_temp_dir(), "x.npy"), x)
    code = ("import sys, numpy as np, tensorflow as tf\n"
            "assert not any(m.startswith('tf_mha') for m in sys.modules)\n"
            f"m = tf.saved_model.load({path!r})\n"
            f"x = np.load({os.path.join(self.get_temp_dir(), 'x.npy')!r})\n"
            "print(np.asarray(m.serve(x)).tolist())\n")
    result = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True,
                            text=True, timeout=300,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    served = np.array(eval(result.stdout.strip().splitlines()[-1]))  # pylint: disable=eval-used
    bounds.assert_close(served, model(x), bounds.MODEL_ULPS)
    converter = tf.lite.TFLiteConverter.from_saved_model(path)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    flatbuffer = converter.convert()
    from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top
    runner = litert.Interpreter(model_content=flatbuffer).get_signature_runner()
    name = list(runner.get_input_details())[0]
    lite = list(runner(**{name: x}).values())[0]
    bounds.assert_close(lite, model(x), bounds.MODEL_ULPS)


class KerasOwnTestsTest(tf.test.TestCase):

  def test_keras_attention_test_files_pass_on_tf_mha(self):
    root = os.path.join(os.path.dirname(keras.__file__), "src", "layers", "attention")
    files = [os.path.join(root, f) for f in ("multi_head_attention_test.py",
                                             "grouped_query_attention_test.py")]
    if not all(os.path.exists(f) for f in files):
      self.skipTest(f"Keras' test files are not installed under {root}")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=_REPO,
               PYTEST_ADDOPTS="-q -rs -p tests.keras3_plugin -p no:cacheprovider -W ignore")
    result = subprocess.run([sys.executable, "-m", "pytest", *files],
                            capture_output=True, text=True, cwd=self.get_temp_dir(),
                            env=env, timeout=900)
    tail = result.stdout[-3000:] + result.stderr[-2000:]
    self.assertIn("tf_mha.keras3's", result.stderr, tail)
    self.assertEqual(result.returncode, 0, tail)
    self.assertRegex(result.stdout, r"\d+ passed", tail)
    # Keras skips its flash tests on TensorFlow, assuming the backend
    # refuses flash attention; no other test is skipped.
    skips = [l for l in result.stdout.splitlines() if l.startswith("SKIPPED")]
    self.assertTrue(all("lash attention" in l for l in skips), skips)


class ReadmeTest(tf.test.TestCase):

  def test_readme_keras3_example_runs(self):
    example = doc_pages.block("tf_mha.keras3.MultiHeadAttention(num_heads=4")
    target = os.path.join(self.get_temp_dir(), "k3_demo")
    example = example.replace('"saved_models/k3_demo"', repr(target))
    namespace = {}
    exec(compile(example, "docs/guides/keras3.md", "exec"), namespace)  # pylint: disable=exec-used
    self.assertTrue(os.path.isfile(os.path.join(target, "saved_model.pb")))
    x = _normal(2, 7, 64)
    loaded = tf.saved_model.load(target)  # kept: its functions use its variables
    served = loaded.serve(x)
    bounds.assert_close(served, namespace["model"](x), bounds.MODEL_ULPS)


class ImportTest(tf.test.TestCase):

  def test_tf_mha_does_not_load_keras3_module_and_versions_are_checked(self):
    code = "import sys, tf_mha; print('tf_mha.keras3' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, cwd=_REPO, timeout=300,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    self.assertEqual(result.stdout.strip().splitlines()[-1], "False")
    with self.assertRaisesRegex(ImportError, "supports Keras >= 3.10.*Keras 2.15.0"):
      k3._check_keras_version("2.15.0")  # pylint: disable=protected-access
    k3._check_keras_version(keras.version())  # pylint: disable=protected-access


if __name__ == "__main__":
  tf.test.main()
