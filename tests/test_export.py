"""Export library and tools: TF Serving layout, atomicity, TFLite, commands."""

import os
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf
import tf_keras

import tf_mha

from tf_mha.ops import chunked
from tf_mha.demo import pipeline
from tf_mha.export import serving
from tf_mha.export import tflite
from tests import bounds

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Tiny(tf.Module):

  @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
  def __call__(self, x):
    return {"y": x * 2.0}


class ServingExportTest(tf.test.TestCase):

  def test_versions_and_refusal(self):
    base = self.get_temp_dir()
    self.assertEqual(serving.next_version(os.path.join(base, "m")), 1)
    first = serving.export(_Tiny(), base, "m")
    self.assertEqual(os.path.basename(first), "1")
    self.assertEqual(serving.next_version(os.path.join(base, "m")), 2)
    marker = os.path.getmtime(os.path.join(first, "saved_model.pb"))
    with self.assertRaisesRegex(serving.ExportRefused, "--overwrite"):
      serving.export(_Tiny(), base, "m", version=1)
    self.assertEqual(os.path.getmtime(os.path.join(first, "saved_model.pb")), marker)
    again = serving.export(_Tiny(), base, "m", version=1, overwrite=True)
    self.assertEqual(again, first)
    self.assertEqual(sorted(os.listdir(os.path.join(base, "m"))), ["1"])

  def test_interrupted_export_leaves_nothing(self):
    base = self.get_temp_dir()
    original = tf.saved_model.save

    def crash(obj, path, signatures=None):
      original(obj, path, signatures=signatures)
      raise KeyboardInterrupt

    tf.saved_model.save = crash
    try:
      with self.assertRaises(KeyboardInterrupt):
        serving.export(_Tiny(), base, "m", version=3)
    finally:
      tf.saved_model.save = original
    self.assertEqual(os.listdir(os.path.join(base, "m")), [])

  def test_bad_arguments(self):
    for version in (0, "1", 1.0, True):
      with self.assertRaisesRegex(ValueError, f"version={version!r}"):
        serving.export(_Tiny(), self.get_temp_dir(), "m", version=version)
    with self.assertRaisesRegex(ValueError, "model_name"):
      serving.export(_Tiny(), self.get_temp_dir(), "a/b")
    with self.assertRaisesRegex(ValueError, "quantize"):
      tflite.convert(self.get_temp_dir(), signature="s", quantize="int4")


  def test_unwritable_output_dir_is_refused_before_any_work(self):
    blocker = os.path.join(self.get_temp_dir(), "a_file")
    with open(blocker, "w") as f:
      f.write("x")
    with self.assertRaisesRegex(serving.ExportRefused, "`output_dir`="):
      serving.export(_Tiny(), os.path.join(blocker, "models"), "m")
    trained = []
    original = pipeline.train_demo
    pipeline.train_demo = lambda **kwargs: trained.append(kwargs)
    try:
      with self.assertRaisesRegex(serving.ExportRefused, "`output_dir`="):
        pipeline.export_demo(output_dir=os.path.join(blocker, "models"))
      with self.assertRaisesRegex(ValueError, "quantize='int4'"):
        pipeline.export_demo(output_dir=self.get_temp_dir(),
                             quantizations=("none", "int4"))
    finally:
      pipeline.train_demo = original
    self.assertEqual(trained, [])

  def test_whole_destination_is_checked_before_any_work(self):
    base = self.get_temp_dir()
    with open(os.path.join(base, "a_file"), "w") as f:
      f.write("x")
    with self.assertRaisesRegex(serving.ExportRefused, "is a file"):
      serving.check_destination(base, "a_file")
    with self.assertRaisesRegex(ValueError, "`model_name` is longer than"):
      serving.check_destination(base, "m" * 300)
    with self.assertRaisesRegex(serving.ExportRefused, "cannot be written"):
      serving.check_destination("/proc", "tf_mha_demo")  # root may "access" it
    final = serving.check_destination(base, "fresh")
    self.assertEqual(os.listdir(os.path.dirname(final)), [])  # no probe left


class AttentionTFLiteTest(tf.test.TestCase):
  """Causal models on each attention path convert to builtins and match
  TensorFlow."""

  def _builtins_runner(self, model, expected_op):
    """Exports `model`, converts it, checks its operators; returns a
    function from an input array to the TFLite output."""
    path = os.path.join(self.get_temp_dir(), expected_op)
    tf.saved_model.save(model, path)
    converted = tflite.convert(path, signature="serving_default")
    self.assertIn(expected_op, tflite.operators(converted))
    self.assertEqual([op for op in tflite.operators(converted)
                      if op.startswith("CUSTOM")], [])
    runner = tflite.interpreter(converted).get_signature_runner("serving_default")
    name = runner.get_input_details().popitem()[0]
    return lambda x: list(runner(**{name: x}).values())[0]

  def test_static_causal_model_converts_to_builtins(self):
    # The plain path's static query chunks, with their custom gradient.
    length = 600  # Long enough to be chunked without XLA (see chunked._chunk_rows).
    self.assertLen(chunked.causal_chunks(tf.zeros([2, length, 2, 8]),
                                      tf.zeros([2, length, 2, 8]), None), 2)
    inputs = tf_keras.Input((length, 16))
    outputs = tf_mha.MultiHeadAttention(2, 8)(inputs, inputs, use_causal_mask=True)
    model = tf_keras.Model(inputs, outputs)
    run = self._builtins_runner(model, "BATCH_MATMUL")
    x = np.random.default_rng(0).normal(size=(2, length, 16)).astype(np.float32)
    bounds.assert_close(run(x), model(x), bounds.LAYER_ULPS)

  def test_flash_model_with_a_static_batch_converts_to_builtins(self):
    # The blockwise path's while loops, at any length.
    inputs = tf_keras.Input((None, 16), batch_size=1)
    outputs = tf_mha.MultiHeadAttention(2, 8, flash_attention=True)(
        inputs, inputs, use_causal_mask=True)
    model = tf_keras.Model(inputs, outputs)
    run = self._builtins_runner(model, "WHILE")
    rng = np.random.default_rng(1)
    for length in (5, 2100):  # one block, and three 1024-row blocks
      x = rng.normal(size=(1, length, 16)).astype(np.float32)
      bounds.assert_close(run(x), model(x), bounds.LAYER_ULPS)


_KILLED_EXPORT = """
import os, signal, sys
import tensorflow as tf
from tf_mha.export import serving

class Scaled(tf.Module):
  @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
  def __call__(self, x):
    return {"y": x * %(scale)s}

serving._step_hook = lambda name: (os.kill(os.getpid(), signal.SIGKILL)
                                   if name == %(step)r else None)
serving.export(Scaled(), %(base)r, "m", version=7, overwrite=%(overwrite)s)
"""


class PublishTest(tf.test.TestCase):
  """A version directory appears, or is replaced, in one atomic step."""

  def _scale_of(self, version_dir):
    """The version's `y / x`: which export it is; fails if incomplete."""
    self.assertTrue(os.path.isfile(os.path.join(version_dir, "saved_model.pb")))
    loaded = tf.saved_model.load(version_dir)
    return float(loaded.signatures["serving_default"](x=tf.constant([1.0]))["y"][0])

  def _killed_export(self, base, step, overwrite, scale):
    script = _KILLED_EXPORT % dict(base=base, step=step, overwrite=overwrite,
                                   scale=scale)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                            text=True, cwd=_REPO, timeout=300,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return result.returncode

  def test_sigkill_at_each_step_never_leaves_a_missing_or_partial_version(self):
    for step in ("saved", "complete", "published"):
      base = os.path.join(self.get_temp_dir(), f"new_{step}")
      self.assertEqual(self._killed_export(base, step, False, 2.0), -9)
      versions = [n for n in os.listdir(os.path.join(base, "m")) if n.isdigit()]
      if step == "published":
        self.assertEqual(self._scale_of(os.path.join(base, "m", "7")), 2.0)
      else:
        self.assertEqual(versions, [])
    for step in ("saved", "complete", "exchanged", "published"):
      base = os.path.join(self.get_temp_dir(), f"replace_{step}")
      serving.export(_Tiny(), base, "m", version=7)  # the old one: y = 2x
      self.assertEqual(self._killed_export(base, step, True, 5.0), -9)
      model_dir = os.path.join(base, "m")
      scale = self._scale_of(os.path.join(model_dir, "7"))
      self.assertEqual(scale, 5.0 if step in ("exchanged", "published") else 2.0)
      # The next export removes what the killed one left.
      self.assertTrue(any(n.startswith(".tmp-") for n in os.listdir(model_dir))
                      or step == "published")
      serving.export(_Tiny(), base, "m", version=8)
      self.assertEqual(sorted(os.listdir(model_dir)), ["7", "8"])

  def test_a_version_that_appears_during_the_export_is_not_replaced(self):
    base = self.get_temp_dir()
    final = os.path.join(base, "m", "4")

    class Other(tf.Module):
      @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
      def __call__(self, x):
        return {"y": x * 3.0}

    def someone_else_exports(name):
      if name == "complete" and not os.path.exists(final):
        tf.saved_model.save(Other(), final)

    serving._step_hook = someone_else_exports
    try:
      with self.assertRaisesRegex(serving.ExportRefused, "appeared while"):
        serving.export(_Tiny(), base, "m", version=4)
      self.assertEqual(self._scale_of(final), 3.0)
      self.assertEqual(os.listdir(os.path.join(base, "m")), ["4"])
      serving.export(_Tiny(), base, "m", version=4, overwrite=True)
      self.assertEqual(self._scale_of(final), 2.0)
    finally:
      serving._step_hook = None

  def test_live_exports_staging_is_kept(self):
    model_dir = os.path.join(self.get_temp_dir(), "m")
    os.makedirs(os.path.join(model_dir, f".tmp-3-{os.getpid()}-abcdef12"))
    os.makedirs(os.path.join(model_dir, ".tmp-3-999999999-abcdef12"))
    os.makedirs(os.path.join(model_dir, ".tmp-5-0f00d3e9"))  # older naming
    removed = serving.remove_stale_staging(model_dir)
    self.assertLen(removed, 2)
    self.assertEqual(os.listdir(model_dir), [f".tmp-3-{os.getpid()}-abcdef12"])


class DemoPipelineTest(tf.test.TestCase):
  """One trained demo, exported once, checked every way."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # A directory of its own: pytest-xdist may run this class's tests in
    # two processes at once, each exporting in setUpClass.
    cls.base = tempfile.mkdtemp(prefix="tf_mha_export_")
    cls.report = pipeline.export_demo(output_dir=cls.base, epochs=4,
                                      quantizations=("none", "dynamic_range", "int8"))

  def test_report_and_layout(self):
    report = self.report
    self.assertGreaterEqual(report.accuracy, 0.95)
    self.assertLess(report.keras_vs_saved_model, 1e-5)
    self.assertTrue(os.path.isfile(os.path.join(report.saved_model_dir, "saved_model.pb")))
    self.assertTrue(os.path.isdir(os.path.join(report.saved_model_dir, "variables")))
    self.assertTrue(os.path.isfile(report.warmup_file))
    path, size, diff, accuracy = report.tflite["none"]
    self.assertLess(diff, tflite.FLOAT32_TOLERANCE)
    self.assertGreaterEqual(accuracy, 0.95)
    self.assertEqual(os.path.getsize(path), size)
    self.assertTrue(any("TFLite (none)" in line for line in report.lines()))

  def test_int8_is_quantized_and_accurate(self):
    path, _, diff, accuracy = self.report.tflite["int8"]
    self.assertGreaterEqual(accuracy, self.report.accuracy - 0.02)
    self.assertLess(diff, 0.05)
    details = tflite.interpreter(path).get_tensor_details()
    int8 = [d["name"] for d in details if d["dtype"] == np.int8]
    # The projections and feed-forward layers run in int8.
    self.assertTrue(any("mha" in name for name in int8), int8[:10])
    self.assertTrue(any("ff1" in name for name in int8), int8[:10])

  def test_text_to_label_entirely_in_litert(self):
    path, size, count = self.report.tokenizer
    self.assertEqual(os.path.getsize(path), size)
    self.assertEqual(count, 300)
    with open(path, "rb") as f:
      ops = tflite.operators(f.read())
    self.assertIn("CUSTOM:FastWordpieceTokenizeWithOffsets", ops)
    self.assertEqual([op for op in ops if op.startswith("CUSTOM:Flex")], [])
    texts = list(pipeline.SAMPLE_TEXTS) + ["The Movie Was NOT Good"]
    ids = tflite.run(path, "tokenize", {"text": np.array(texts)},
                     text_ops=True)["token_ids"]
    probs = tflite.run(self.report.tflite["none"][0], "classify_ids",
                       {"token_ids": ids})["probabilities"]
    served = tf.saved_model.load(self.report.saved_model_dir).signatures[
        "serving_default"](text=tf.constant(texts))
    bounds.assert_close(probs, served["probabilities"], bounds.MODEL_ULPS)
    self.assertIn("TFLite tokenizer", "\n".join(self.report.lines()))

  def test_tflite_uses_builtins_only(self):
    with open(self.report.tflite["none"][0], "rb") as f:
      ops = tflite.operators(f.read())
    self.assertIn("BATCH_MATMUL", ops)
    self.assertEqual([op for op in ops if op.startswith("CUSTOM")], [])
    self.assertNotIn("FlexEinsum", " ".join(ops))

  def test_tflite_runs_at_several_lengths(self):
    model = self.report.tflite["none"][0]
    for length in (1, 7, 30):
      ids = np.random.default_rng(length).integers(1, 20, size=(3, length)).astype(np.int32)
      probs = tflite.run(model, "classify_ids", {"token_ids": ids})["probabilities"]
      self.assertEqual(probs.shape, (3, 2))
      bounds.assert_close(probs.sum(-1), np.ones(3), bounds.LAYER_ULPS)

  def test_serves_from_a_clean_process_without_tf_mha(self):
    env = dict(os.environ, PYTHONPATH="", TF_CPP_MIN_LOG_LEVEL="3")
    script = os.path.join(_REPO, "tools", "run_signature.py")
    args = [script, f"--saved_model_dir={self.report.saved_model_dir}",
            "--text=the movie was good but the acting was not great",
            "--text=the movie was not good but the acting was great"]
    # tf_mha may be installed here; make it unimportable in the child.
    blocked = ("import runpy, sys; sys.modules['tf_mha'] = None; "
               f"sys.argv = {args!r}; runpy.run_path(sys.argv[0], run_name='__main__')")
    result = subprocess.run(
        [sys.executable, "-I", "-c", blocked],
        capture_output=True, text=True, env=env, cwd=self.get_temp_dir(), timeout=300)
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    lines = result.stdout.strip().splitlines()
    self.assertIn('"label": "negative"', lines[0])
    self.assertIn('"label": "positive"', lines[1])

  def test_run_signature_names_bad_input(self):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    script = os.path.join(_REPO, "tools", "run_signature.py")
    model = f"--saved_model_dir={self.report.saved_model_dir}"
    for args, expected in (([b"--text=caf\xe9 \xff"], "--text must be UTF-8"),
                           (["--signature=classify_ids", "--text=hi"],
                            "does not take one string input")):
      result = subprocess.run([sys.executable, script, model, *args],
                              capture_output=True, cwd=_REPO, env=env, timeout=300)
      stderr = result.stderr.decode(errors="replace")
      self.assertEqual(result.returncode, 1, stderr[-2000:])
      self.assertIn(expected, stderr)
      self.assertNotIn("Traceback", stderr)

  def test_convert_tool_and_refusal_exit_codes(self):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out_file = os.path.join(self.get_temp_dir(), "m.tflite")
    convert = subprocess.run(
        [sys.executable, "-m", "tools.convert_tflite",
         f"--saved_model_dir={self.report.saved_model_dir}",
         f"--output_file={out_file}", "--quantize=float16"],
        capture_output=True, text=True, env=env, cwd=_REPO, timeout=600)
    self.assertEqual(convert.returncode, 0, convert.stderr[-2000:])
    self.assertIn("max |TFLite - SavedModel|", convert.stdout)
    self.assertTrue(os.path.isfile(out_file))
    refuse = subprocess.run(
        [sys.executable, "-m", "tools.export_saved_model", f"--output_dir={self.base}",
         "--version=1", "--quantize="],
        capture_output=True, text=True, env=env, cwd=_REPO, timeout=600)
    self.assertEqual(refuse.returncode, 1)
    self.assertIn("--overwrite", refuse.stderr)
    usage = subprocess.run(
        [sys.executable, "-m", "tools.export_saved_model",
         f"--output_dir={self.get_temp_dir()}", "--quantize=none,int4"],
        capture_output=True, text=True, env=env, cwd=_REPO, timeout=300)
    self.assertEqual(usage.returncode, 1)
    self.assertIn("quantize='int4'", usage.stderr)
    self.assertNotIn("Traceback", usage.stderr)
    self.assertNotIn("Training the demo model", usage.stderr)
    for bad_file in (self.get_temp_dir(), os.path.join(out_file, "under_a_file.tflite")):
      with self.assertRaisesRegex(ValueError, "`output_file`="):
        pipeline.convert_and_check(self.report.saved_model_dir, "none", bad_file)
    to_dir = subprocess.run(
        [sys.executable, "-m", "tools.convert_tflite",
         f"--saved_model_dir={self.report.saved_model_dir}",
         f"--output_file={self.get_temp_dir()}"],
        capture_output=True, text=True, env=env, cwd=_REPO, timeout=300)
    self.assertEqual(to_dir.returncode, 1)
    self.assertIn("`output_file`=", to_dir.stderr)
    self.assertNotIn("Traceback", to_dir.stderr)
    bad = subprocess.run(
        [sys.executable, "-m", "tools.convert_tflite", "--saved_model_dir=/nonexistent",
         f"--output_file={out_file}"],
        capture_output=True, text=True, env=env, cwd=_REPO, timeout=300)
    self.assertNotEqual(bad.returncode, 0)
    self.assertIn("saved_model_dir", bad.stderr)


if __name__ == "__main__":
  tf.test.main()
