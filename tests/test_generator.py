"""The generator demo: decoder, SavedModel signatures, TFLite prefill/decode,
`tools/generate.py` and the README's phone-side loop."""

import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the tokenizer's ops)
import tf_keras

from tf_mha import generation
from tf_mha.demo import decoder as decoder_lib
from tf_mha.demo import generator
from tf_mha.demo import generator_export
from tf_mha.demo import sequences
from tf_mha.demo import text_generation
from tf_mha.export import arrays
from tf_mha.export import converter
from tf_mha.export import litert_generation
from tf_mha.export import tflite
from tests import bounds
from tests import doc_pages

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_QUANTIZATIONS = ("none", "float16", "dynamic_range", "int8")


def _small_decoder():
  tf_keras.utils.set_random_seed(5)
  model = decoder_lib.Decoder(vocab_size=13, max_length=16, dim=16,
                              num_query_heads=4, num_key_value_heads=2)
  model(tf.zeros([1, 2], tf.int32))
  return model


class DecoderTest(tf.test.TestCase):
  """The cached step against the whole-sequence call, same weights."""

  def test_prefill_then_decode_equals_the_whole_sequence(self):
    model = _small_decoder()
    ids = np.random.default_rng(0).integers(1, 13, (2, 9)).astype(np.int32)
    want = model(ids)
    caches = model.empty_caches(2)
    logits, caches = model.step(ids[:, :5], np.tile(np.arange(5), (2, 1)), 0, caches)
    bounds.assert_close(logits, want[:, :5], bounds.MODEL_ULPS)
    for i in range(5, 9):
      logits, caches = model.step(ids[:, i:i + 1], np.full([2, 1], i), i, caches)
      bounds.assert_close(logits[:, 0], want[:, i], bounds.MODEL_ULPS)

  def test_left_padded_rows_equal_unpadded_ones(self):
    model = _small_decoder()
    rng = np.random.default_rng(1)
    short, long = rng.integers(1, 13, 3), rng.integers(1, 13, 6)
    ids = np.stack([np.concatenate([[0, 0, 0], short]), long]).astype(np.int32)
    positions = np.stack([np.arange(-3, 3), np.arange(6)]).astype(np.int32)
    logits, caches = model.step(ids, positions, 0, model.empty_caches(2))
    bounds.assert_close(logits[0, 3:], model(short[None])[0], bounds.MODEL_ULPS)
    bounds.assert_close(logits[1], model(long[None])[0], bounds.MODEL_ULPS)
    step, _ = model.step(np.array([[4], [5]], np.int32),
                         np.array([[3], [6]], np.int32), 6, caches)
    bounds.assert_close(step[0, 0], model(np.append(short, 4)[None])[0, -1],
                        bounds.MODEL_ULPS)
    bounds.assert_close(step[1, 0], model(np.append(long, 5)[None])[0, -1],
                        bounds.MODEL_ULPS)

  def test_config_round_trip(self):
    model = _small_decoder()
    copy = type(model).from_config(model.get_config())
    self.assertEqual(copy.cache_shape(3), [3, 2, 16, 2, 4])


class DataTest(tf.test.TestCase):

  def test_held_out_prompts_are_new_and_answers_reverse(self):
    train = sequences.make_prompts(2000, seed=0)
    held_out = sequences.make_prompts(300, seed=1, exclude=train)
    self.assertFalse({p for p in held_out if len(p.split()) > 2} & set(train))
    self.assertEqual(sequences.answer("red fox sun"), "sun fox red")
    lengths = {len(p.split()) for p in held_out}
    self.assertEqual(lengths, set(range(1, sequences.MAX_WORDS + 1)))

  def test_tokenizer_frames_the_prompt(self):
    tokenizer = generator.PromptTokenizer(generator.VOCAB)
    ids = tokenizer(tf.constant(["Red fox", "sun", "zebra"])).numpy()
    index = generator.VOCAB.index
    self.assertAllEqual(ids, [[generator.BEGIN_ID, index("red"), index("fox"),
                               generator.SEPARATOR_ID],
                              [generator.BEGIN_ID, index("sun"),
                               generator.SEPARATOR_ID, 0],
                              [generator.BEGIN_ID, index("[UNK]"),
                               generator.SEPARATOR_ID, 0]])


class GeneratorExportTest(tf.test.TestCase):
  """One trained export, driven as TF Serving and a phone would."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.out_dir = tempfile.mkdtemp()
    cls.report = generator_export.export_generator(
        output_dir=cls.out_dir, quantizations=_QUANTIZATIONS)
    cls.loaded = tf.saved_model.load(cls.report.saved_model_dir)
    cls.prompts = ["red fox sun", "one", "gold owl bee elk moon star rain snow",
                   "Blue Cat"]

  def _generate(self, prompts, max_new_tokens=10, **sampling):
    """The `generate` signature, as Python calls it: every input given (the
    sampling ones greedy unless `sampling` says otherwise)."""
    inputs = {**generator.GREEDY, **{k: tf.constant(v, generator.GREEDY[k].dtype)
                                     for k, v in sampling.items()}}
    return self.loaded.signatures["generate"](
        prompt=tf.constant(prompts), max_new_tokens=tf.constant(max_new_tokens),
        **inputs)

  def test_trained_to_exact_answers_everywhere(self):
    self.assertGreaterEqual(self.report.accuracy["Keras"], 0.95)
    self.assertEqual(self.report.accuracy["SavedModel"], self.report.accuracy["Keras"])
    for quantize in _QUANTIZATIONS:
      path, size, accuracy, speed = self.report.tflite[quantize]
      self.assertEqual(os.path.getsize(path), size)
      self.assertGreater(speed, 0)
      # float32 is checked token for token by the export itself.
      self.assertGreaterEqual(accuracy, 0.95 if quantize == "none" else 0.9, quantize)
    text = "\n".join(self.report.lines())
    for quantize in _QUANTIZATIONS:
      self.assertIn(f"TFLite prefill/decode ({quantize})", text)

  def test_litertlm_files_answer_in_the_runtime(self):
    """The main job's .litertlm files, in LiteRT-LM itself: exact-match 1.0
    float32 and dynamic-range, and `litert-lm run` with the file's template."""
    self.assertEqual(sorted(self.report.litertlm), ["dynamic_range", "none"])
    for quantize, (path, size, accuracy, speed) in self.report.litertlm.items():
      suffix = "" if quantize == "none" else "_dynamic_range"
      self.assertEqual(path, os.path.join(self.out_dir, f"tf_mha_generator{suffix}.litertlm"))
      self.assertEqual(os.path.getsize(path), size)
      self.assertEqual(accuracy, 1.0, quantize)
      self.assertGreater(speed, 0)
    self.assertEqual(self.report.same_ids, 2 * generator.HELD_OUT_PROMPTS)
    path = self.report.litertlm["none"][0]
    texts, _ = generator_export.run_litertlm(path, self.prompts)
    self.assertEqual(texts, [sequences.answer(p.lower()) for p in self.prompts])
    # The export ran each file in LiteRT-LM: its weight caches are gone.
    self.assertEqual([n for n in os.listdir(self.out_dir) if "cache" in n], [])
    import shutil  # pylint: disable=g-import-not-at-top
    command = shutil.which("litert-lm", path=os.path.dirname(sys.executable))
    self.assertIsNotNone(command, "the litert-lm command is installed with tf_mha")
    run = subprocess.run([command, "run", path, "--prompt", "red fox sun",
                          "--backend", "cpu"], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, HOME=tempfile.mkdtemp()))
    self.assertEqual(run.returncode, 0, run.stderr[-2000:])
    self.assertEqual(run.stdout.strip().splitlines()[-1], "sun fox red")
    self.assertIn("LiteRT-LM (dynamic_range)", "\n".join(self.report.lines()))

  def test_sentencepiece_model_gives_the_saved_model_ids(self):
    import sentencepiece  # pylint: disable=g-import-not-at-top
    model = sentencepiece.SentencePieceProcessor(
        model_proto=sequences.sentencepiece_model())
    self.assertEqual(model.get_piece_size(), len(generator.VOCAB))
    prompts = ["Red FOX sun", "one", "zebra owl"]
    ids = self.loaded.signatures["tokenize"](prompt=tf.constant(prompts))["token_ids"]
    for prompt, row in zip(prompts, ids.numpy()):
      self.assertEqual([generator.BEGIN_ID] + model.encode(prompt + generator_export.USER_SUFFIX),
                       row[row != 0].tolist())
    self.assertEqual(model.decode([generator.VOCAB.index(w) for w in ("sun", "fox")]),
                     "sun fox")

  def test_generate_signature_answers_a_mixed_batch(self):
    out = self._generate(self.prompts)
    texts = [t.decode() for t in out["text"].numpy()]
    self.assertEqual(texts, [sequences.answer(p.lower()) for p in self.prompts])
    self.assertAllEqual(out["num_tokens"], [3, 1, 8, 2])
    ids = out["token_ids"].numpy()
    self.assertEqual(ids.shape, (4, 10))
    for row, count in zip(ids, [3, 1, 8, 2]):
      self.assertEqual(row[count], generator.END_ID)
      self.assertAllEqual(row[count + 1:], np.zeros(10 - count - 1))
    # Each row alone gives the same tokens (left padding is masked).
    for i, prompt in enumerate(self.prompts):
      self.assertAllEqual(self._generate([prompt])["token_ids"][0], ids[i])

  def test_max_new_tokens_cuts_the_answer(self):
    out = self._generate(["red fox sun owl"], max_new_tokens=2)
    self.assertEqual(out["text"].numpy()[0].decode(), "owl sun")
    self.assertEqual(out["token_ids"].shape, (1, 2))

  def test_generate_loop_is_xla_compiled(self):
    with open(os.path.join(self.report.saved_model_dir, "saved_model.pb"), "rb") as f:
      graph = f.read()
    self.assertIn(b"_XlaMustCompile", graph)
    self.assertIn(b"While", graph)

  def test_bad_requests_to_generate_name_the_input(self):
    """Only what is wrong with the whole request fails it."""
    for prompts, count, sampling, pattern in (
        (["red fox"], 47, {}, "`max_new_tokens` must be at most 46"),
        (["red fox"], 0, {}, "`max_new_tokens` must be at least 1"),
        (["red fox", "one"], 5, {"temperature": [1.0, 2.0, 3.0]},
         "`temperature` must be a scalar or one value per prompt"),
        (["red fox"], 5, {"seed": [[1, 2]]},
         "`seed` must be a scalar or one value per prompt")):
      with self.assertRaisesRegex(tf.errors.InvalidArgumentError, re.escape(pattern)):
        self._generate(prompts, count, **sampling)

  def test_a_bad_row_fails_no_other_row(self):
    """An empty prompt, an over-long one and bad sampling values get their
    status, empty texts and no tokens; the other rows are what they give
    alone."""
    long_prompt = " ".join(["red"] * 47)  # 49 tokens: more than the 48 slots
    prompts = ["red fox sun", "", long_prompt, "one two six ten", "  ", "gold owl"]
    out = self._generate(prompts, top_p=[1.0, 1.0, 1.0, 1.0, 1.0, 2.0])
    self.assertAllEqual(out["status"].numpy().astype(str),
                        ["ok", "empty_prompt", "prompt_too_long", "ok",
                         "empty_prompt", "invalid_sampling"])
    self.assertAllEqual(out["num_tokens"], [3, 0, 0, 4, 0, 0])
    texts = out["text"].numpy().astype(str)
    self.assertAllEqual(texts, ["sun fox red", "", "", "ten six two one", "", ""])
    ids = out["token_ids"].numpy()
    self.assertAllEqual(ids[[1, 2, 4, 5]], np.zeros([4, 10]))
    for row in (0, 3):
      self.assertAllEqual(self._generate([prompts[row]])["token_ids"][0], ids[row])
    served = self.loaded.signatures["serving_default"](
        prompt=tf.constant(prompts[:3]), max_new_tokens=tf.constant(10))
    self.assertAllEqual(served["token_ids"], ids[:3])
    self.assertAllEqual(served["status"], out["status"][:3])

  def test_a_row_stops_where_the_batch_cache_is_full(self):
    """The batch shares the cache's slots: beside a 42-token prompt, an
    8-word answer (9 tokens with [END]) gets 7 and the status cache_full."""
    prompts = ["gold owl bee elk moon star rain snow", " ".join(["red"] * 40)]
    out = self._generate(prompts, 12)
    self.assertEqual(out["status"].numpy()[0].decode(), "cache_full")
    self.assertEqual(out["text"].numpy()[0].decode(),
                     "snow rain star moon elk bee owl")
    self.assertEqual(out["num_tokens"].numpy()[0], 7)
    self.assertAllEqual(out["token_ids"].numpy()[0, 7:], np.zeros(5))
    alone = self._generate(prompts[:1], 12)
    self.assertEqual(alone["status"].numpy()[0].decode(), "ok")
    self.assertEqual(alone["num_tokens"].numpy()[0], 8)

  def test_sampling_in_the_saved_model(self):
    prompts = ["red fox sun", "gold owl bee elk", "one two"]
    greedy = self._generate(prompts)["token_ids"].numpy()
    # Degenerate settings are greedy.
    for sampling in ({"temperature": 5.0, "top_k": 1, "seed": 3},
                     {"temperature": 5.0, "top_p": 1e-6, "seed": 3}):
      self.assertAllEqual(self._generate(prompts, **sampling)["token_ids"], greedy)
    hot = {"temperature": 50.0, "seed": 11}
    first = self._generate(prompts, **hot)
    self.assertAllEqual(self._generate(prompts, **hot)["token_ids"], first["token_ids"])
    self.assertNotAllEqual(first["token_ids"], greedy)  # it samples
    self.assertNotAllEqual(self._generate(prompts, temperature=50.0, seed=12)[
        "token_ids"], first["token_ids"])  # and the seed matters
    self.assertAllEqual(first["status"].numpy().astype(str), ["ok"] * 3)
    # Row r of a batch seed s draws with (s, r); a per-row seed s is (s, 0),
    # whatever the batch: the third row alone with its own seed.
    per_row = self._generate(prompts, temperature=[0.0, 50.0, 50.0], seed=[0, 0, 11])
    self.assertAllEqual(per_row["token_ids"][0], greedy[0])
    alone = self._generate(prompts[2:], temperature=50.0, seed=[11])
    self.assertAllEqual(per_row["token_ids"][2], alone["token_ids"][0])
    self.assertAllEqual(self._generate(prompts[:1], temperature=50.0, seed=11)[
        "token_ids"][0], first["token_ids"][0])
    # The restored function takes the optional inputs by their defaults.
    restored = self.loaded.generate(tf.constant(prompts), tf.constant(10))
    self.assertAllEqual(restored["token_ids"], greedy)

  def test_litert_samples_the_saved_model_tokens(self):
    """The phone-side loop draws as the SavedModel does: the same seed
    gives the same tokens (float32: logits within 1e-4), top-k 1 is greedy."""
    runner = litert_generation.Generator(self.report.tflite["none"][0])
    prompts = ["red fox sun", "gold owl bee elk", "one two"]
    served = self._generate(prompts, temperature=4.0, top_k=6, seed=5)
    ids = self.loaded.signatures["tokenize"](prompt=tf.constant(prompts))[
        "token_ids"].numpy()
    for row, (prompt_ids, want) in enumerate(zip(ids, served["token_ids"].numpy())):
      sampling = generation.Sampling(temperature=4.0, top_k=6, seed=(5, row))
      got = runner.generate(prompt_ids[prompt_ids != 0].tolist(), 10,
                            end_id=generator.END_ID, sampling=sampling).token_ids
      self.assertAllEqual(got, want[:len(got)])
      greedy = runner.generate(prompt_ids[prompt_ids != 0].tolist(), 10,
                               end_id=generator.END_ID).token_ids
      top_1 = runner.generate(prompt_ids[prompt_ids != 0].tolist(), 10,
                              end_id=generator.END_ID, sampling=generation.Sampling(
                                  temperature=4.0, top_k=1, seed=row)).token_ids
      self.assertEqual(top_1, greedy)

  def test_prefill_refuses_a_write_past_the_cache(self):
    prefill = self.loaded.signatures["prefill"]
    shape = [1] + prefill.structured_input_signature[1]["kv_cache_0"].shape.as_list()[1:]
    caches = {f"kv_cache_{i}": tf.zeros(shape) for i in range(2)}
    for length, index in ((49, 0), (10, 45), (1, 48), (1, -1)):
      with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                  "cache_update_index does not fit"):
        prefill(token_ids=tf.fill([1, length], 7), cache_index=tf.constant(index),
                positions=tf.range(length)[None] + index, **caches)

  def test_prefill_and_decode_match_keras_and_every_tflite_variant(self):
    ids = self.loaded.signatures["tokenize"](prompt=tf.constant(["gold owl bee"]))[
        "token_ids"].numpy()
    shape = [1] + self.loaded.signatures["decode"].structured_input_signature[1][
        "kv_cache_0"].shape.as_list()[1:]
    caches = {f"kv_cache_{i}": np.zeros(shape, np.float32) for i in range(2)}
    served, inputs = [], {"token_ids": ids, "cache_index": np.array(0, np.int32),
                          "positions": np.arange(5, dtype=np.int32)[None], **caches}
    for index in range(5, 9):  # prefill, then 4 decode steps
      key = "prefill" if index == 5 else "decode"
      out = {k: v.numpy() for k, v in self.loaded.signatures[key](
          **{k: tf.constant(v) for k, v in inputs.items()}).items()}
      served.append((key, inputs, out))
      token = np.argmax(out["logits"][:, -1], -1).astype(np.int32)
      inputs = {"token_ids": token[:, None], "positions": np.array([[index]], np.int32),
                "cache_index": np.array(index, np.int32),
                **{k: out[k] for k in caches}}
    # Cached steps equal recomputing the whole prefix (rotary positions).
    tokens = np.concatenate([ids[0]] + [i["token_ids"][0] for _, i, _ in served[1:]])
    full = self.report.model(tokens[None]).numpy()[0]
    for last, (key, _, want) in enumerate(served, start=4):
      bounds.assert_close(want["logits"][0, -1], full[last], bounds.MODEL_ULPS, msg=key)
    for key, step_inputs, want in served:  # the Keras model, same weights
      logits, keras_caches = self.report.model.step(
          step_inputs["token_ids"], step_inputs["positions"],
          step_inputs["cache_index"], [step_inputs[k] for k in sorted(caches)])
      bounds.assert_close(logits, want["logits"], bounds.MODEL_ULPS)
      bounds.assert_close(keras_caches[1], want["kv_cache_1"], bounds.MODEL_ULPS)
    for quantize in _QUANTIZATIONS:
      interpreter = tflite.interpreter(self.report.tflite[quantize][0])
      for last, (key, step_inputs, want) in enumerate(served, start=4):
        got = interpreter.get_signature_runner(key)(**step_inputs)
        self.assertEqual(set(got), set(want))
        if quantize == "none":
          for name in want:
            bounds.assert_close(got[name], want[name], bounds.MODEL_ULPS,
                                msg=f"{key} {name}")
          bounds.assert_close(got["logits"][0, -1], full[last], bounds.MODEL_ULPS,
                              msg=f"TFLite {key} against the full recompute")
        self.assertAllEqual(np.argmax(got["logits"][:, -1], -1),
                            np.argmax(want["logits"][:, -1], -1), msg=quantize)

  def test_tflite_signatures_have_the_saved_model_names_and_builtins_only(self):
    for quantize in _QUANTIZATIONS:
      path = self.report.tflite[quantize][0]
      with open(path, "rb") as f:
        ops = tflite.operators(f.read())
      self.assertIn("DYNAMIC_UPDATE_SLICE", ops)
      self.assertEqual([op for op in ops if op.startswith("CUSTOM")], [], quantize)
      signatures = tflite.interpreter(path).get_signature_list()
      for key in ("prefill", "decode"):
        saved = self.loaded.signatures[key]
        self.assertEqual(sorted(signatures[key]["inputs"]),
                         sorted(saved.structured_input_signature[1]))
        self.assertEqual(sorted(signatures[key]["outputs"]),
                         sorted(saved.structured_outputs))

  def test_the_converter_takes_the_saved_model_as_it_is(self):
    """tf_mha_convert_tflite's library on the served export: `prefill` and
    `decode` (its numeric signatures) in one builtins-only file."""
    out = os.path.join(self.out_dir, "converted_from_saved_model.tflite")
    result = converter.convert_saved_model(self.report.saved_model_dir, out)
    self.assertEqual(result.signatures, ["decode", "prefill"])
    self.assertEqual(set(result.skipped), {"generate", "serving_default", "tokenize"})
    self.assertFalse([op for op in result.operators if op.startswith("CUSTOM")])
    self.assertIn("DYNAMIC_UPDATE_SLICE", result.operators)
    for name in ("prefill", "decode"):  # inputs the converter did not check on
      signature = self.loaded.signatures[name]
      for example in arrays.draw(arrays.signature_inputs(signature), seed=9):
        got = tflite.run(out, name, example)
        want = signature(**{k: tf.constant(v) for k, v in example.items()})
        for output, value in want.items():
          bounds.assert_close(got[output], value, bounds.MODEL_ULPS, msg=output)

  def test_tflite_prefill_takes_any_prompt_length(self):
    runner = litert_generation.Generator(self.report.tflite["none"][0])
    prefill = self.loaded.signatures["prefill"]
    shape = [1] + prefill.structured_input_signature[1]["kv_cache_0"].shape.as_list()[1:]
    for length in (1, 4, 17, 48):
      ids = np.random.default_rng(length).integers(5, 29, (1, length)).astype(np.int32)
      inputs = {"token_ids": ids, "positions": np.arange(length, dtype=np.int32)[None],
                "cache_index": np.array(0, np.int32),
                **{f"kv_cache_{i}": np.zeros(shape, np.float32) for i in range(2)}}
      got = runner._prefill(**inputs)
      want = prefill(**{k: tf.constant(v) for k, v in inputs.items()})
      bounds.assert_close(got["logits"], want["logits"], bounds.MODEL_ULPS)

  def test_litert_generator_refuses_what_does_not_fit(self):
    runner = litert_generation.Generator(self.report.tflite["none"][0])
    with self.assertRaisesRegex(ValueError, "`prompt_ids` is empty"):
      runner.generate([], 3)
    with self.assertRaisesRegex(ValueError, "`prompt_ids` has 49 tokens"):
      runner.generate([5] * 49, 1)
    with self.assertRaisesRegex(ValueError, "`max_new_tokens`=40 does not fit"):
      runner.generate([5] * 10, 40)
    with self.assertRaisesRegex(ValueError, "`max_new_tokens` must be a positive"):
      runner.generate([5], 0)

  def test_tokenizer_model_and_vocabulary(self):
    path, size, count = self.report.tokenizer
    self.assertEqual(os.path.getsize(path), size)
    self.assertEqual(count, generator.HELD_OUT_PROMPTS)
    with open(self.report.vocab_file) as f:
      self.assertEqual(f.read().split("\n")[:-1], generator.VOCAB)
    self.assertEqual(text_generation.companion_files(self.report.tflite["int8"][0]),
                     (path, self.report.vocab_file))

  def test_warmup_request_calls_generate(self):
    from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=g-import-not-at-top
    records = list(tf.data.TFRecordDataset(os.path.join(
        self.report.saved_model_dir, "assets.extra", "tf_serving_warmup_requests")))
    log = prediction_log_pb2.PredictionLog.FromString(records[0].numpy())
    request = log.predict_log.request
    self.assertEqual(set(request.inputs), {"prompt", "max_new_tokens"})
    self.assertEqual(request.model_spec.signature_name, "serving_default")
    self.assertIn("generate", self.loaded.signatures)

  def test_serving_in_a_clean_process_with_only_tensorflow(self):
    """As TF Serving runs a request that leaves out `generate`'s optional
    inputs: each one missing is filled from the SignatureDef's defaults."""
    code = """
import os, sys, tensorflow as tf, tensorflow_text
from tensorflow.core.protobuf import saved_model_pb2
saved = saved_model_pb2.SavedModel()
with open(os.path.join(sys.argv[1], "saved_model.pb"), "rb") as f:
  saved.ParseFromString(f.read())
signature_def = saved.meta_graphs[0].signature_def["generate"]
request = {"prompt": tf.constant(["red fox sun"]), "max_new_tokens": tf.constant(6)}
for name in set(signature_def.inputs) - set(request):
  request[name] = tf.constant(tf.make_ndarray(signature_def.defaults[name]))
m = tf.saved_model.load(sys.argv[1])
out = m.signatures["generate"](**request)
default = m.signatures["serving_default"](prompt=tf.constant(["red fox sun"]),
                                          max_new_tokens=tf.constant(6))
assert not any(k.startswith("tf_mha") for k in sys.modules)
print(sorted(signature_def.defaults), out["status"].numpy()[0].decode())
print(out["text"].numpy()[0].decode(), "|", default["text"].numpy()[0].decode())
"""
    result = subprocess.run([sys.executable, "-I", "-c", code,
                             self.report.saved_model_dir],
                            capture_output=True, text=True, timeout=300)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    lines = result.stdout.strip().splitlines()
    self.assertEqual(lines[-2], "['seed', 'temperature', 'top_k', 'top_p'] ok")
    self.assertEqual(lines[-1], "sun fox red | sun fox red")

  def _tool(self, *args):
    return subprocess.run([sys.executable, "-m", "tools.generate", *args],
                          capture_output=True, text=True, cwd=_REPO, timeout=300)

  def test_generate_tool_with_saved_model_and_tflite(self):
    model_dir = os.path.dirname(self.report.saved_model_dir)  # highest version
    for model in (model_dir, self.report.tflite["int8"][0]):
      result = self._tool(f"--model={model}", "--prompt=red fox sun",
                          "--prompt=one two")
      self.assertEqual(result.returncode, 0, result.stderr[-3000:])
      self.assertIn("red fox sun -> sun fox red", result.stdout)
      self.assertIn("one two -> two one", result.stdout)
      self.assertIn("tokens/s", result.stdout)

  def test_generate_tool_samples_alike_in_the_saved_model_and_litert(self):
    # The demo is sure of its answers: a high temperature makes it sample.
    flags = ["--prompt=red fox sun", "--prompt=one two six", "--temperature=50",
             "--top_k=8", "--top_p=0.95", "--seed=21"]
    answers = []
    for model in (self.report.saved_model_dir, self.report.tflite["none"][0]):
      result = self._tool(f"--model={model}", *flags)
      self.assertEqual(result.returncode, 0, result.stderr[-3000:])
      answers.append([line for line in result.stdout.splitlines() if " -> " in line])
    self.assertEqual(answers[0], answers[1])
    self.assertLen(answers[0], 2)
    greedy = self._tool(f"--model={self.report.saved_model_dir}", *flags[:2])
    self.assertNotEqual(answers[0], [line for line in greedy.stdout.splitlines()
                                     if " -> " in line])

  def test_generate_tool_refuses_bad_input_without_a_traceback(self):
    other = os.path.join(self.out_dir, "not_a_decoder")
    module = tf.Module()
    module.f = tf.function(lambda x: {"y": x + 1},
                           input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, other, signatures={"serving_default": module.f})
    none = self.report.tflite["none"][0]
    for args, message in (
        ([f"--model={other}", "--prompt=red"], "is not a generator"),
        ([f"--model={none}", "--prompt="], "`prompt` must be non-empty"),
        ([f"--model={self.report.saved_model_dir}", "--prompt= "],
         "`prompt` must be non-empty"),
        ([f"--model={none}", "--prompt=" + " ".join(["red"] * 47)],
         "`prompt_ids` has 49 tokens"),
        ([f"--model={self.report.saved_model_dir}", "--prompt=red",
          "--max_new_tokens=47"], "`max_new_tokens` must be at most 46"),
        ([f"--model={none}", "--prompt=red", "--max_new_tokens=47"],
         "`max_new_tokens`=47 does not fit"),
        ([f"--model={none}", "--prompt=red", "--vocab=/nonexistent"],
         "`vocab`='/nonexistent' does not exist"),
        ([f"--model={none}", "--prompt=red", "--top_p=0"], "`top_p` must be in (0, 1]"),
        ([f"--model={none}", "--prompt=red", "--temperature=-1"],
         "`temperature` must be at least 0")):
      result = self._tool(*args)
      self.assertEqual(result.returncode, 1, args)
      self.assertIn(message, result.stderr, args)
      self.assertNotIn("Traceback", result.stderr, args)

  def test_readme_phone_side_loop(self):
    loop = doc_pages.block('get_signature_runner("decode")')
    stem = os.path.join(self.out_dir, "tf_mha_generator_1_")
    loop = loop.replace("saved_models/tf_mha_generator_1_", stem)
    namespace = {}
    exec(compile(loop, "README.md", "exec"), namespace)  # pylint: disable=exec-used
    self.assertEqual(namespace["answer"], "sun fox red")


if __name__ == "__main__":
  tf.test.main()
