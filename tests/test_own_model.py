"""Users' own models through export and TFLite conversion (issue 23): a
tf_keras encoder with ids and a padding mask, a causal GroupedQueryAttention
model, a Keras 3 model with dict inputs, and a Model Garden BertEncoderV2
classifier on tf_mha. Each LiteRT model is checked here against its
SavedModel on fresh inputs, independently of the converter's own check."""

import os
import subprocess
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf
import tf_keras
from absl.testing import parameterized

import tf_mha
import tf_mha.keras3
from tf_mha.export import converter
from tf_mha.export import keras_export
from tf_mha.export import tflite
from tests import bounds

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _encoder(flex_mask=False):
  """Token ids and a padding mask in, one tf_mha layer, class logits out."""
  tf_keras.utils.set_random_seed(1)
  ids = tf_keras.Input([None], dtype="int32", name="token_ids")
  mask = tf_keras.Input([None], dtype="int32", name="padding_mask")
  h = tf_keras.layers.Embedding(100, 32)(ids)
  keep = tf.cast(mask, tf.bool)
  # `keep[:, None, :]` on booleans is a StridedSlice TFLite has no builtin for.
  keep = keep[:, None, :] if flex_mask else tf.expand_dims(keep, 1)
  h = tf_mha.MultiHeadAttention(4, 8, name="mha")(h, h, attention_mask=keep)
  pooled = tf_keras.layers.GlobalAveragePooling1D()(h)
  return tf_keras.Model([ids, mask], tf_keras.layers.Dense(3, name="logits")(pooled))


def _causal_gqa():
  tf_keras.utils.set_random_seed(2)
  ids = tf_keras.Input([None], dtype="int32", name="ids")
  h = tf_keras.layers.Embedding(50, 24)(ids)
  h = tf_mha.GroupedQueryAttention(head_dim=6, num_query_heads=4,
                                   num_key_value_heads=2)(h, h, use_causal_mask=True)
  return tf_keras.Model(ids, tf_keras.layers.Dense(50, name="next")(h))


def _keras3():
  keras.utils.set_random_seed(3)
  words = keras.Input([None], dtype="int32", name="words")
  features = keras.Input([None, 4], name="features")
  h = keras.layers.Embedding(30, 16)(words) + keras.layers.Dense(16)(features)
  h = tf_mha.keras3.MultiHeadAttention(2, 8)(h, h, use_causal_mask=True)
  return keras.Model({"words": words, "features": features},
                     {"scores": keras.layers.Dense(5)(h)})


def _bucketed():
  """Words and a 3-class bucket id per row, each feeding its own table."""
  tf_keras.utils.set_random_seed(4)
  words = tf_keras.Input([None], dtype="int32", name="words")
  bucket = tf_keras.Input([], dtype="int32", name="bucket")
  h = tf_keras.layers.Embedding(40, 16)(words)
  h = h + tf_keras.layers.Embedding(3, 16)(bucket)[:, None, :]
  h = tf_mha.MultiHeadAttention(2, 8)(h, h)
  pooled = tf_keras.layers.GlobalAveragePooling1D()(h)
  return tf_keras.Model([words, bucket], tf_keras.layers.Dense(2)(pooled))


class _OneHotTable(tf.Module):
  """Type ids looked up as one-hot rows of a 2-row table: TensorFlow gives
  zeros for an id past the table, LiteRT's EMBEDDING_LOOKUP (what the
  converter makes of it, as of BERT's type embeddings) refuses it."""

  def __init__(self):
    super().__init__()
    rng = np.random.default_rng(5)
    self.table = tf.Variable(rng.standard_normal([2, 4]).astype(np.float32))

  @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="kind")])
  def serve(self, kind):
    rows = tf.matmul(tf.one_hot(tf.reshape(kind, [-1]), 2), self.table)
    return {"out": tf.reduce_sum(rows, 0)}


class _NegativeOffsets(tf.Module):
  """A model that asserts its integer input is negative: no id draw (ids
  are never negative) runs."""

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="offset")])
  def serve(self, offset):
    with tf.control_dependencies([tf.debugging.assert_negative(offset)]):
      return {"out": tf.cast(offset, tf.float32) * 2.0}


def _samples(seed, batch=6, length=9):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, 100, [batch, length]).astype(np.int32)
  mask = np.ones([batch, length], np.int32)
  mask[:, length - 2:] = 0  # padding at the end of every row
  return {"token_ids": ids, "padding_mask": mask}


def _litert_matches(test, tflite_file, saved_model_dir, signature, inputs,
                    atol=None):
  """LiteRT's outputs against the SavedModel's on `inputs`: within float32
  rounding of their scale (`atol=None`), or within `atol`, a quantized
  file's error (int8 steps of 1/127 and float16's of 2**-11 of a weight's
  range: orders of magnitude above any CPU's float32 rounding)."""
  got = tflite.run(tflite_file, signature, inputs)
  want = tf.saved_model.load(saved_model_dir).signatures[signature](
      **{k: tf.constant(v) for k, v in inputs.items()})
  test.assertEqual(set(got), set(want))
  for name, value in want.items():
    if atol is None:
      bounds.assert_close(got[name], value, bounds.MODEL_ULPS, msg=name)
    else:
      test.assertAllClose(got[name], value, atol=atol, rtol=0, msg=name)


class OwnModelTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = tempfile.mkdtemp()
    cls.user_file = os.path.join(cls.dir, "user.keras")
    _encoder().save(cls.user_file)
    cls.sample_file = os.path.join(cls.dir, "sample.npz")
    np.savez(cls.sample_file, **_samples(0))
    cls.user = keras_export.export_keras_model(
        cls.user_file, output_dir=cls.dir, model_name="mine",
        sample_data=cls.sample_file)

  def _out(self, name):
    return os.path.join(self.get_temp_dir(), name)

  def test_export_keeps_the_model_input_names_and_dynamic_shapes(self):
    loaded = tf.saved_model.load(self.user.path)
    signature = loaded.signatures["serving_default"]
    specs = signature.structured_input_signature[1]
    self.assertEqual(sorted(specs), ["padding_mask", "token_ids"])
    for spec in specs.values():
      self.assertEqual(spec.shape.as_list(), [None, None])
      self.assertEqual(spec.dtype, tf.int32)
    self.assertEqual(list(signature.structured_outputs), ["logits"])
    self.assertTrue(os.path.exists(os.path.join(
        self.user.path, "assets.extra", "tf_serving_warmup_requests")))
    # Two batch sizes and lengths against the Keras model itself.
    model = tf_keras.models.load_model(self.user_file)
    for batch, length in ((1, 3), (4, 17)):
      inputs = _samples(batch, batch, length)
      bounds.assert_close(signature(**inputs)["logits"],
                          model([inputs["token_ids"], inputs["padding_mask"]]),
                          bounds.MODEL_ULPS)
    self.assertLess(self.user.difference, 1e-6)
    self.assertEqual(self.user.checked_on, "the sample data")

  @parameterized.parameters("none", "float16", "dynamic_range")
  def test_user_encoder_converts_to_builtins_and_matches(self, quantize):
    out = self._out(f"mine_{quantize}.tflite")
    result = converter.convert_saved_model(self.user.path, out, quantize=quantize)
    self.assertEqual(result.signatures, ["serving_default"])
    self.assertFalse([op for op in result.operators if op.startswith("CUSTOM")])
    self.assertEqual(result.operators, tflite.operator_counts(out))
    self.assertEqual(sum(result.operators.values()),
                     sum(tflite.operator_counts(out).values()))
    atol = None if quantize == "none" else 5e-2
    for batch, length in ((1, 4), (3, 21)):  # lengths not seen in the check
      _litert_matches(self, out, self.user.path, "serving_default",
                      _samples(batch + 10, batch, length), atol)

  def test_int8_needs_calibration_and_gives_finite_outputs(self):
    out = self._out("mine_int8.tflite")
    with self.assertRaisesRegex(ValueError, r"`calibration_data` is required"):
      converter.convert_saved_model(self.user.path, out, quantize="int8")
    self.assertFalse(os.path.exists(out))
    calibration = self._out("calibration.npz")
    np.savez(calibration, **_samples(5, batch=32, length=12))
    result = converter.convert_saved_model(
        self.user.path, out, quantize="int8", calibration_data=calibration)
    self.assertIn("QUANTIZE", result.operators)
    got = tflite.run(out, "serving_default", _samples(7, 4, 12))["logits"]
    self.assertTrue(np.all(np.isfinite(got)))
    _litert_matches(self, out, self.user.path, "serving_default",
                    _samples(7, 4, 12), atol=0.1)

  @parameterized.parameters("none", "float16", "dynamic_range", "int8")
  def test_ids_drawn_for_the_check_stay_inside_their_tables(self, quantize):
    """A 3-class input feeding an embedding: the export's and the
    conversion's drawn checks use ids the tables hold."""
    path = os.path.join(self.get_temp_dir(), f"bucketed_{quantize}.keras")
    _bucketed().save(path)
    export = keras_export.export_keras_model(
        path, output_dir=self.get_temp_dir(), model_name=f"bucketed_{quantize}")
    self.assertEqual(export.checked_on, "inputs drawn from the specs")
    rng = np.random.default_rng(6)
    fresh = {"words": rng.integers(0, 40, [4, 7]).astype(np.int32),
             "bucket": rng.integers(0, 3, [4]).astype(np.int32)}
    calibration = None
    if quantize == "int8":
      calibration = self._write_npz(
          "bucketed_calibration.npz",
          words=rng.integers(0, 40, [16, 7]).astype(np.int32),
          bucket=rng.integers(0, 3, [16]).astype(np.int32))
    out = self._out(f"bucketed_{quantize}.tflite")
    result = converter.convert_saved_model(export.path, out, quantize=quantize,
                                           calibration_data=calibration)
    self.assertEqual(tflite.index_bounds(out),
                     {"serving_default": {"bucket": 3, "words": 40}})
    self.assertIn("serving_default", result.differences)
    _litert_matches(self, out, export.path, "serving_default", fresh,
                    atol=None if quantize == "none" else 0.1)

  def test_a_one_hot_table_bounds_the_draw_and_litert_failures_are_named(self):
    saved = os.path.join(self.get_temp_dir(), "one_hot")
    module = _OneHotTable()
    tf.saved_model.save(module, saved, signatures={"serving_default": module.serve})
    out = self._out("one_hot.tflite")
    result = converter.convert_saved_model(saved, out)
    self.assertEqual(result.operators.get("EMBEDDING_LOOKUP"), 1)
    self.assertEqual(tflite.index_bounds(out), {"serving_default": {"kind": 2}})
    # Ids the SavedModel takes (one-hot rows of zeros) but LiteRT refuses.
    bad = self._write_npz("kind_5.npz", kind=np.full([2, 3], 5, np.int32))
    refused = self._out("one_hot_refused.tflite")
    with self.assertRaisesRegex(
        converter.LiteRTFailed, r"signature 'serving_default'.*kind int32\[1, 3\] "
        r"in \[5, 5\].*index out of bounds.*Nothing written.*--sample_data"):
      converter.convert_saved_model(saved, refused, sample_data=bad)
    self.assertFalse(os.path.exists(refused))

  def test_no_draw_the_saved_model_accepts_is_named(self):
    saved = os.path.join(self.get_temp_dir(), "negative")
    module = _NegativeOffsets()
    tf.saved_model.save(module, saved, signatures={"serving_default": module.serve})
    out = self._out("negative.tflite")
    with self.assertRaisesRegex(
        ValueError, r"Signature 'serving_default': the SavedModel runs on no "
        r"inputs drawn from its specs \(offset int32\[None\].*InvalidArgumentError: "
        r"assertion failed.*--sample_data"):
      converter.convert_saved_model(saved, out)
    self.assertFalse(os.path.exists(out))
    offsets = self._write_npz("offsets.npz", offset=np.array([-1, -4], np.int32))
    result = converter.convert_saved_model(saved, out, sample_data=offsets)
    self.assertEqual(result.differences["serving_default"], {"out": 0.0})

  def test_causal_gqa_model(self):
    path = os.path.join(self.get_temp_dir(), "gqa.h5")
    _causal_gqa().save(path)
    export = keras_export.export_keras_model(
        path, output_dir=self.get_temp_dir(), model_name="gqa")
    self.assertEqual(list(export.inputs), ["ids"])
    for quantize, atol in (("none", None), ("dynamic_range", 5e-2)):
      out = self._out(f"gqa_{quantize}.tflite")
      converter.convert_saved_model(export.path, out, quantize=quantize)
      self.assertFalse([op for op in tflite.operators(out) if op.startswith("CUSTOM")])
      ids = np.random.default_rng(4).integers(0, 50, [2, 13]).astype(np.int32)
      _litert_matches(self, out, export.path, "serving_default", {"ids": ids}, atol)

  def test_keras3_model_with_dict_inputs(self):
    path = os.path.join(self.get_temp_dir(), "k3.keras")
    model = _keras3()
    model.save(path)
    export = keras_export.export_keras_model(
        path, output_dir=self.get_temp_dir(), model_name="k3")
    self.assertEqual(export.framework, "keras3")
    self.assertEqual(sorted(export.inputs), ["features", "words"])
    self.assertEqual(export.outputs, ["scores"])
    rng = np.random.default_rng(6)
    inputs = {"words": rng.integers(0, 30, [2, 7]).astype(np.int32),
              "features": rng.standard_normal([2, 7, 4]).astype(np.float32)}
    served = tf.saved_model.load(export.path).signatures["serving_default"](
        **{k: tf.constant(v) for k, v in inputs.items()})
    bounds.assert_close(served["scores"], model(inputs)["scores"], bounds.MODEL_ULPS)
    for quantize, atol in (("none", None), ("float16", 1e-2)):
      out = self._out(f"k3_{quantize}.tflite")
      converter.convert_saved_model(export.path, out, quantize=quantize)
      self.assertNotIn("VAR_HANDLE", tflite.operators(out))  # weights frozen
      _litert_matches(self, out, export.path, "serving_default", inputs, atol)

  def test_sequential_multi_output_and_subclassed_models(self):
    tf_keras.utils.set_random_seed(12)
    keras.utils.set_random_seed(12)

    class Subclassed(tf_keras.Model):

      def __init__(self):
        super().__init__()
        self.attention = tf_mha.MultiHeadAttention(2, 4)

      def call(self, x):
        return self.attention(x, x, use_causal_mask=True)

    features = tf_keras.Input([16, 8], name="feats")
    h = tf_mha.MultiHeadAttention(2, 4)(features, features)
    subclassed = Subclassed()
    subclassed(tf.ones([1, 5, 8]))  # called once: its specs are saved
    cases = {  # name: (model, file, expected inputs, expected outputs)
        "sequential": (tf_keras.Sequential([
            tf_keras.Input([None, 8], name="x"), tf_keras.layers.Dense(8, name="d")]),
                       "seq.keras", ["x"], ["d"]),
        "two_outputs": (tf_keras.Model(features, [
            tf_keras.layers.Dense(2, name="a")(h),
            tf_keras.layers.Dense(3, name="b")(h)]), "two.keras", ["feats"], ["a", "b"]),
        "keras3_sequential": (keras.Sequential([
            keras.Input([None, 8], name="inp"), keras.layers.Dense(4)]),
                              "k3seq.keras", ["inp"], None),
        "subclassed": (subclassed, "subclassed_savedmodel", None, None),
    }
    for name, (model, file, inputs, outputs) in cases.items():
      path = os.path.join(self.get_temp_dir(), file)
      model.save(path)
      export = keras_export.export_keras_model(
          path, output_dir=self.get_temp_dir(), model_name=name)
      if inputs:
        self.assertEqual(list(export.inputs), inputs, name)
      if outputs:
        self.assertEqual(export.outputs, outputs, name)
      out = self._out(f"{name}.tflite")
      converter.convert_saved_model(export.path, out)
      (spec,) = export.inputs.values()
      shape = [3] + [d or 6 for d in spec.shape.as_list()[1:]]
      x = np.random.default_rng(13).standard_normal(shape).astype(np.float32)
      _litert_matches(self, out, export.path, "serving_default",
                      {list(export.inputs)[0]: x})

  def test_bad_calibration_data_is_named_and_nothing_is_written(self):
    out = self._out("bad.tflite")
    cases = {
        "missing.npz": ({"token_ids": np.ones([2, 5], np.int32)},
                        r"missing arrays \['padding_mask'\].*expected names "
                        r"are \['padding_mask', 'token_ids'\]"),
        "unexpected.npz": ({**_samples(0), "extra": np.ones([6, 9])},
                           r"holds arrays \['extra'\]"),
        "dtype.npz": ({**_samples(0), "token_ids": np.full([6, 9], "a")},
                      r"'token_ids'.*must hold int32"),
        "rank.npz": ({**_samples(0), "padding_mask": np.ones([6, 9, 2, 2], np.int32)},
                     r"'padding_mask'.*must have rank 2"),
    }
    for name, (arrays, message) in cases.items():
      path = self._out(name)
      np.savez(path, **arrays)
      with self.assertRaisesRegex(ValueError, r"`calibration_data`.*" + message):
        converter.convert_saved_model(self.user.path, out, quantize="int8",
                                      calibration_data=path)
      self.assertFalse(os.path.exists(out))

  def test_bad_arguments_are_named(self):
    out = self._out("never.tflite")
    with self.assertRaisesRegex(ValueError, r"`signatures` names \['nope'\].*"
                                r"it has \['serving_default'\]"):
      converter.convert_saved_model(self.user.path, out, signatures=["nope"])
    broken = self._out("broken")
    os.makedirs(broken)
    with open(os.path.join(broken, "saved_model.pb"), "wb") as f:
      f.write(b"not a protobuf")
    with self.assertRaisesRegex(ValueError, r"`saved_model_dir`.*does not load"):
      converter.convert_saved_model(broken, out)
    with self.assertRaisesRegex(ValueError, r"`saved_model_dir` holds no SavedModel"):
      converter.convert_saved_model(self.get_temp_dir() + "/nothing", out)
    with self.assertRaisesRegex(ValueError, r"`output_file`.*is a directory"):
      converter.convert_saved_model(self.user.path, self.get_temp_dir())
    self.assertFalse(os.path.exists(out))
    with self.assertRaisesRegex(ValueError, r"`sample_data`.*missing arrays"):
      keras_export.export_keras_model(
          self.user_file, output_dir=self.get_temp_dir(), model_name="never",
          sample_data=self._write_npz("ids_only.npz", token_ids=np.ones([1, 2])))
    self.assertFalse(os.path.exists(os.path.join(self.get_temp_dir(), "never", "1")))
    with self.assertRaisesRegex(ValueError, r"`keras_model` does not load"):
      keras_export.export_keras_model(self.sample_file, output_dir=self.get_temp_dir(),
                                      model_name="never")

  def _write_npz(self, name, **arrays):
    path = self._out(name)
    np.savez(path, **arrays)
    return path

  def test_select_tf_ops_are_refused_by_name_unless_allowed(self):
    path = os.path.join(self.get_temp_dir(), "flex.keras")
    _encoder(flex_mask=True).save(path)
    export = keras_export.export_keras_model(
        path, output_dir=self.get_temp_dir(), model_name="flex")
    out = self._out("flex.tflite")
    with self.assertRaisesRegex(converter.SelectOpsRefused, r"\['StridedSlice'\]"):
      converter.convert_saved_model(export.path, out)
    self.assertFalse(os.path.exists(out))
    result = converter.convert_saved_model(export.path, out,
                                           allow_select_tf_ops=True)
    self.assertIn("CUSTOM:FlexStridedSlice", result.operators)
    self.assertEqual(result.operators, tflite.operator_counts(out))
    # No interpreter here carries the Flex delegate: said, not hidden.
    self.assertIsNone(result.differences["serving_default"])
    self.assertIn("serving_default: not checked in LiteRT (Select TF ops "
                  "['CUSTOM:FlexStridedSlice'] need the Flex delegate",
                  "\n".join(result.lines()))

  def test_the_commands_on_a_users_model(self):
    """The user's path: both commands, their report, a refusal's exit code."""
    base = self.get_temp_dir()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    run = lambda *args: subprocess.run([sys.executable, "-m", *args], cwd=_REPO,
                                       capture_output=True, text=True,
                                       timeout=600, env=env)
    export = run("tools.export_saved_model", f"--keras_model={self.user_file}",
                 "--model_name=cli", f"--output_dir={base}",
                 f"--sample_data={self.sample_file}")
    self.assertEqual(export.returncode, 0, export.stderr[-2000:])
    self.assertIn("serving_default: inputs token_ids int32[None, None], "
                  "padding_mask int32[None, None]; outputs logits", export.stdout)
    out = os.path.join(base, "cli.tflite")
    convert = run("tools.convert_tflite", f"--saved_model_dir={base}/cli/1",
                  f"--output_file={out}", "--quantize=dynamic_range")
    self.assertEqual(convert.returncode, 0, convert.stderr[-2000:])
    self.assertRegex(convert.stdout, r"max \|TFLite - SavedModel\| "
                     r"serving_default/logits: [\d.e-]+ \(inputs drawn")
    self.assertRegex(convert.stdout, r"operators: .*FULLY_CONNECTED x\d+")
    refused = run("tools.convert_tflite", f"--saved_model_dir={base}/cli/1",
                  f"--output_file={base}/int8.tflite", "--quantize=int8",
                  "--calibration_data=serving_default=" + self.sample_file + ",x=y.npz")
    self.assertEqual(refused.returncode, 1)
    self.assertIn("FAILED: `calibration_data` must give one .npz per signature",
                  refused.stderr)
    self.assertNotIn("Traceback", refused.stderr)
    self.assertFalse(os.path.exists(f"{base}/int8.tflite"))


class ModelGardenEndToEndTest(tf.test.TestCase):
  """A BertEncoderV2 classifier as BERT is configured (two token types) built
  on tf_mha (patch_tf_keras), saved as a tf_keras SavedModel directory, and
  taken through both commands, in the processes a user would run."""

  def test_bert_classifier_exports_and_converts(self):
    base = self.get_temp_dir()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    build = subprocess.run([sys.executable, "-c", _BUILD_BERT, base], cwd=_REPO,
                           capture_output=True, text=True, timeout=600, env=env)
    self.assertEqual(build.returncode, 0, build.stderr[-3000:])
    self.assertIn("attention on tf_mha: True", build.stdout)
    run = lambda *args: subprocess.run([sys.executable, "-m", *args], cwd=_REPO,
                                       capture_output=True, text=True,
                                       timeout=600, env=env)
    # No --sample_data: the export's own check draws its inputs.
    export = run("tools.export_saved_model", f"--keras_model={base}/bert",
                 "--model_name=bert", f"--output_dir={base}",
                 "--imports=official.nlp.modeling", "--patch_tf_keras")
    self.assertEqual(export.returncode, 0, export.stderr[-3000:])
    self.assertIn("input_mask int32[None, None], input_type_ids int32[None, "
                  "None], input_word_ids int32[None, None]", export.stdout)
    sample = dict(np.load(f"{base}/sample.npz"))
    for quantize, atol in (("none", None), ("float16", 5e-3),
                           ("dynamic_range", 5e-2), ("int8", 0.2)):
      out = f"{base}/bert_{quantize}.tflite"
      calibration = ([f"--calibration_data={base}/calibration.npz"]
                     if quantize == "int8" else [])
      convert = run("tools.convert_tflite", f"--saved_model_dir={base}/bert/1",
                    f"--output_file={out}", f"--quantize={quantize}",
                    *calibration)
      self.assertEqual(convert.returncode, 0, convert.stderr[-3000:])
      self.assertNotIn("Traceback", convert.stderr)
      self.assertFalse([op for op in tflite.operators(out) if op.startswith("CUSTOM")])
      if quantize != "int8":  # checked on drawn inputs, type ids below 2
        self.assertIn("(inputs drawn from its specs)", convert.stdout)
        self.assertEqual(tflite.index_bounds(out)["serving_default"]["input_type_ids"], 2)
      _litert_matches(self, out, f"{base}/bert/1", "serving_default", sample, atol)


_BUILD_BERT = """
import sys
import numpy as np
import tf_keras
import tf_mha
tf_mha.patch_tf_keras()
from official.nlp.modeling import networks
tf_keras.utils.set_random_seed(3)
encoder = networks.BertEncoderV2(
    vocab_size=60, hidden_size=32, num_layers=2, num_attention_heads=4,
    intermediate_size=64, max_sequence_length=32, type_vocab_size=2,
    inner_activation="gelu")
names = ("input_word_ids", "input_mask", "input_type_ids")
inputs = {n: tf_keras.Input([None], dtype="int32", name=n) for n in names}
pooled = encoder(inputs)["pooled_output"]
model = tf_keras.Model(inputs, tf_keras.layers.Dense(3, name="logits")(pooled))
block = encoder._transformer_layers[0]
print("attention on tf_mha:", any(isinstance(l, tf_mha.MultiHeadAttention)
                                  for l in block._flatten_layers()))
model.save(sys.argv[1] + "/bert", save_format="tf")  # a SavedModel directory
rng = np.random.default_rng(0)
def batch(size, length):
  ids = rng.integers(1, 60, [size, length]).astype("int32")
  mask = np.ones_like(ids)
  mask[0, length - 3:] = 0
  types = np.zeros_like(ids)
  types[:, length // 2:] = 1  # a second segment, as BERT's sentence pairs
  return dict(input_word_ids=ids, input_mask=mask, input_type_ids=types)
np.savez(sys.argv[1] + "/sample.npz", **batch(3, 11))
np.savez(sys.argv[1] + "/calibration.npz", **batch(32, 11))
"""


if __name__ == "__main__":
  tf.test.main()
