"""KerasHub's Llama, Mistral and Qwen2 on tf_mha, against KerasHub itself on
the same weights: presets made with random weights, saved and reloaded."""

import dataclasses
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import types

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import tf_keras

from tf_mha.export import keras_hub_export
from tf_mha.export import litertlm
from tf_mha.models import keras_hub
from tf_mha.models import random_presets
from tests import bounds

# name -> (family, backbone arguments): every option each family reads.
PRESETS = {
    "llama": ("llama", {}),
    "llama31_rope": ("llama", dict(
        rope_frequency_adjustment_factor=8.0, rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0, rope_pretraining_sequence_length=16,
        rope_max_wavelength=500000)),
    "llama3_bpe": ("llama3", {}),
    "mistral_window": ("mistral", dict(sliding_window=5, head_dim=16)),
    "qwen2": ("qwen2", dict(rope_scaling_factor=2.0)),
    "qwen2_window_untied": ("qwen2", dict(
        use_sliding_window_attention=True, sliding_window_size=4,
        tie_word_embeddings=False)),
    # Gemma 3: 7 layers (local 0-4 and 6, global 5), soft-capping on, every
    # norm; and one with soft-capping and QK norm off, H != D / N.
    "gemma3_local_capped": ("gemma3", dict(
        num_layers=7, use_sliding_window_attention=True, sliding_window_size=4,
        attention_logit_soft_cap=20.0, final_logit_soft_cap=30.0,
        use_post_ffw_norm=True, use_post_attention_norm=True,
        global_rope_scaling_factor=8.0)),
    "gemma3_plain": ("gemma3", dict(
        head_dim=16, use_query_key_norm=False, query_head_dim_normalize=False)),
}
PROMPTS = ["the cat sat on", "a dog", "the quick brown fox jumps over the lazy dog"]
MAX_LENGTH = 40
NEW_TOKENS = 10
_DIR = None


def setUpModule():
  global _DIR
  _DIR = tempfile.mkdtemp()


def tearDownModule():
  shutil.rmtree(_DIR, ignore_errors=True)


def preset_dir(name):
  """The preset's directory, saved once per run."""
  path = os.path.join(_DIR, "presets", name)
  if not os.path.isdir(path):
    family, kwargs = PRESETS[name]
    random_presets.save(family, path, seed=len(name), **kwargs)
  return path


def keras_hub_greedy(causal_lm, prompts, new_tokens):
  """KerasHub's compiled greedy `generate` -> each row's new token ids
  (up to and including the end token). Where `generate` fails on TF (Qwen's
  sliding window: keras-hub's mask takes a tensor as a Python bool; Gemma 3
  without a preprocessor), the backbone's logits over the whole sequence
  pick each token."""
  causal_lm.compile(sampler="greedy")
  preprocessor = causal_lm.preprocessor
  inputs = preprocessor.generate_preprocess(prompts, sequence_length=MAX_LENGTH)
  lengths = np.sum(np.asarray(inputs["padding_mask"]), 1)
  ends = [preprocessor.tokenizer.end_token_id]
  if "Gemma" in type(causal_lm).__name__:
    ends.append(preprocessor.tokenizer.token_to_id("<end_of_turn>"))
  causal_lm.preprocessor = None
  try:
    out = np.asarray(causal_lm.generate(
        inputs, max_length=int(lengths.max()) + new_tokens,
        stop_token_ids=ends)["token_ids"])
  except (tf.errors.OperatorNotAllowedInGraphError, ValueError):
    out = _forward_greedy(causal_lm, np.asarray(inputs["token_ids"]),
                          lengths, new_tokens)
  finally:
    causal_lm.preprocessor = preprocessor
  rows = []
  for row, length in zip(out, lengths):
    new = [int(t) for t in row[length:length + new_tokens]]
    stop = [i for i, t in enumerate(new) if t in ends]
    rows.append(new[:stop[0] + 1] if stop else new)
  return rows


@functools.lru_cache(maxsize=None)
def keras_hub_tokens(name):
  """KerasHub's greedy tokens for `PROMPTS` from the preset `name`: its
  `generate` compiled and run once per run (the module's classes run in one
  worker: `tests/conftest.py`). Only the tokens are kept: a KerasHub model
  kept from one test to the next lost its SentencePiece op's resource."""
  import keras_hub as hub  # pylint: disable=g-import-not-at-top
  return keras_hub_greedy(hub.models.CausalLM.from_preset(preset_dir(name)),
                          PROMPTS, NEW_TOKENS)


def _forward_greedy(causal_lm, ids, lengths, new_tokens):
  out = ids.copy()
  for row, length in enumerate(lengths):
    for t in range(length, length + new_tokens):
      logits = keras_hub_logits(causal_lm, out[row:row + 1, :t])
      out[row, t] = int(np.argmax(logits[0, -1]))
  return out


def load_float64(path):
  """tf_mha's model of the preset with every layer in float64: the float64
  run of the same weights that the float32 results are measured against."""
  policy = tf_keras.mixed_precision.global_policy()
  tf_keras.mixed_precision.set_global_policy("float64")
  try:
    return keras_hub.load(path, MAX_LENGTH)
  finally:
    tf_keras.mixed_precision.set_global_policy(policy)


def keras_hub_logits(causal_lm, ids):
  """KerasHub's own logits for `ids` `[B, T]` (no padding)."""
  backbone = causal_lm.backbone
  return np.asarray(backbone.token_embedding(
      backbone({"token_ids": ids, "padding_mask": np.ones_like(ids)}),
      reverse=True))  # [B, T, V]


def cached_logits(model, ids, prompt_length, shift=0):
  """`model.step` over `ids` `[B, T]`: a prompt of `prompt_length` tokens,
  then one cached step per token (at its position + `shift`) -> logits
  `[B, T, V]`."""
  batch = ids.shape[0]
  caches = model.empty_caches(batch)
  positions = tf.range(prompt_length)[None] + tf.zeros([batch, 1], tf.int32)
  logits, caches = model.step(ids[:, :prompt_length], positions, 0, caches)
  out = [logits.numpy()]
  for t in range(prompt_length, ids.shape[1]):
    logits, caches = model.step(ids[:, t:t + 1], tf.fill([batch, 1], t + shift), t,
                                 caches)
    out.append(logits.numpy())
  return np.concatenate(out, 1)


@functools.lru_cache(maxsize=None)
def _gemma3_references():
  """`(ids, KerasHub's float32 logits, tf_mha's float64 logits)` for the
  Gemma 3 mutation tests, computed once."""
  import keras_hub as hub  # pylint: disable=g-import-not-at-top
  path = preset_dir("gemma3_local_capped")
  ids = np.random.default_rng(7).integers(3, 200, [2, 14]).astype(np.int32)
  theirs = hub.models.CausalLM.from_preset(path)
  return ids, keras_hub_logits(theirs, ids), load_float64(path).model(ids).numpy()


class FamilyTest(parameterized.TestCase):

  @parameterized.named_parameters(*[(name, name) for name in PRESETS])
  def test_logits_and_greedy_tokens_equal_keras_hub(self, name):
    import keras_hub as hub  # pylint: disable=g-import-not-at-top
    theirs = hub.models.CausalLM.from_preset(preset_dir(name))
    expected_tokens = keras_hub_tokens(name)
    ours, ours64 = keras_hub.load(preset_dir(name), MAX_LENGTH), load_float64(preset_dir(name))
    rng = np.random.default_rng(7)
    ids = rng.integers(3, ours.model.config.vocabulary_size - 8, [2, 14]).astype(np.int32)
    truth = ours64.model(ids).numpy()  # [B, T, V] float64
    expected = keras_hub_logits(theirs, ids)
    # KerasHub's float32 logits within float32 rounding of tf_mha's float64
    # run (the same math), and tf_mha's float32 ones, whole and through the
    # cache (a prompt of 6, then steps past the sliding windows of 4 and 5),
    # no further from it than 4x KerasHub's own error on this CPU.
    bound = bounds.assert_as_accurate_as_peer(ours.model(ids).numpy(), expected, truth)
    bounds.assert_as_accurate_as_peer(cached_logits(ours.model, ids, 6), expected,
                                      truth, "cached steps")
    self.assertEqual(ours64.model.dtype, "float64")
    np.testing.assert_allclose(cached_logits(ours64.model, ids, 6), truth, rtol=0,
                               atol=bounds.scale(truth) * 1e-12)  # float64 rounding
    module = keras_hub_export.serving_module(ours)
    out = module.generate(tf.constant(PROMPTS), tf.constant(NEW_TOKENS))
    self.assert_margins_exceed(theirs, ours64, expected_tokens, 2 * bound)
    for row, tokens in enumerate(expected_tokens):
      got = out["token_ids"].numpy()[row]
      self.assertEqual(list(got[:len(tokens)]), tokens, f"row {row}")
      self.assertEqual(out["num_tokens"].numpy()[row],
                       len(tokens) - (tokens[-1] in ours.stop_ids))
    self.assertEqual(set(out["status"].numpy()), {b"ok"})

  def assert_margins_exceed(self, theirs, ours64, expected_tokens, margin):
    """Each greedy token is the float64 run's argmax by more than `margin`
    (twice the float32 bound): then float32 rounding on any CPU picks it too,
    and the exact token comparison is sound."""
    inputs = theirs.preprocessor.generate_preprocess(PROMPTS, sequence_length=MAX_LENGTH)
    for row, tokens in enumerate(expected_tokens):
      prompt = np.asarray(inputs["token_ids"])[row][np.asarray(inputs["padding_mask"])[row]]
      ids = np.concatenate([prompt, tokens])[None].astype(np.int32)
      logits = ours64.model(ids).numpy()[0, len(prompt) - 1:-1]
      margins = bounds.greedy_margins(logits, np.asarray(tokens))
      self.assertGreater(margins.min(), margin, f"row {row}: a greedy step "
                         "too close to a tie to compare tokens exactly; choose "
                         f"other prompts (margins {np.round(margins, 5)})")

  @parameterized.named_parameters(
      ("norm_without_one_plus", "norm"), ("no_final_soft_cap", "soft_cap"),
      ("positions_shifted", "positions"))
  def test_gemma3_bounds_catch_a_real_error(self, mutation):
    """The bounds above fail on the smallest real errors in Gemma 3: a norm
    scaled by `scale` instead of `1 + scale`, the final soft cap missing, a
    cached step's rotary position off by one."""
    path = preset_dir("gemma3_local_capped")
    ids, expected, truth = _gemma3_references()
    ours = keras_hub.load(path, MAX_LENGTH).model
    if mutation == "norm":
      for block in ours.blocks:
        block.pre_ffw_norm.scale.assign_sub(tf.ones_like(block.pre_ffw_norm.scale))
    elif mutation == "soft_cap":
      ours.config = dataclasses.replace(ours.config, final_logit_soft_cap=None)
    mutated = cached_logits(ours, ids, 6, shift=int(mutation == "positions"))
    with self.assertRaises(AssertionError):
      bounds.assert_as_accurate_as_peer(mutated, expected, truth)

  def test_start_token_is_the_preprocessors(self):
    self.assertEqual(keras_hub.load(preset_dir("llama")).start_id, 1)
    self.assertIsNone(keras_hub.load(preset_dir("qwen2")).start_id)
    qwen = keras_hub.load(preset_dir("qwen2"))
    self.assertEqual(qwen.end_id, qwen.tokenizer.token_to_id("<|endoftext|>"))

  def test_causal_lm_in_memory(self):
    causal_lm = random_presets.causal_lm("qwen2", seed=3)
    ours = keras_hub.load(causal_lm, 16)
    ids = np.array([[5, 9, 30, 2]], np.int32)
    expected = keras_hub_logits(causal_lm, ids)
    bounds.assert_close(ours.model(ids).numpy(), expected, bounds.MODEL_ULPS)
    self.assertEqual(ours.model.max_length, 16)

  def test_bpe_tokenizer_json_tokenizes_as_keras_hub(self):
    import tokenizers  # pylint: disable=g-import-not-at-top
    preset = keras_hub.load(preset_dir("qwen2"))
    path = keras_hub.tokenizer_file(preset.tokenizer, _DIR)
    hf = tokenizers.Tokenizer.from_file(path)
    texts = ["the cat sat", "  two  spaces", "tabs\tand\nlines", "Héllo wörld!",
             "numbers 12345 and 3.14", "it's don't we'll", "<|endoftext|> end",
             "emoji 🙂 ok", "trailing space "]
    for text in texts:
      self.assertEqual(hf.encode(text).ids,
                       list(np.asarray(preset.tokenizer(text))), text)


class ExportTest(parameterized.TestCase):

  @parameterized.named_parameters(("llama", "llama"), ("qwen2", "qwen2"),
                                  ("gemma3", "gemma3_local_capped"))
  def test_saved_model_in_a_clean_process_and_litertlm(self, name):
    import keras_hub as hub  # pylint: disable=g-import-not-at-top
    output = os.path.join(_DIR, "exports")
    export = keras_hub_export.export_preset(
        preset_dir(name), output_dir=output, model_name=name, max_length=MAX_LENGTH,
        prefill_lengths=(8, 32))
    theirs = hub.models.CausalLM.from_preset(preset_dir(name))
    expected = keras_hub_tokens(name)
    stops = export.preset.stop_ids
    detokenize = tf.function(theirs.preprocessor.tokenizer.detokenize)
    texts = [detokenize(tf.constant([t for t in tokens if t not in stops], tf.int32)
                        ).numpy() for tokens in expected]  # bytes: a token may
    # end mid-character, so the texts are compared as bytes
    script = ("import sys, tensorflow as tf, tensorflow_text\n"
              "loaded = tf.saved_model.load(sys.argv[1])\n"
              "out = loaded.signatures['serving_default'](prompt=tf.constant("
              "sys.argv[2:]), max_new_tokens=tf.constant(%d))\n"
              "print('\\n'.join(repr(t) for t in out['text'].numpy()))\n"
              "print(sorted(m for m in sys.modules if m.startswith('keras')))\n"
              % NEW_TOKENS)
    run = subprocess.run([sys.executable, "-c", script, export.path, *PROMPTS],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    lines = run.stdout.strip().split("\n")
    self.assertEqual(lines[:len(PROMPTS)], [repr(t) for t in texts])
    self.assertNotIn("keras_hub", lines[-1])
    # The .litertlm from the version directory alone: `convert` checks the
    # runtime's text against the SavedModel's own loop; here also against
    # KerasHub's tokens.
    path = os.path.join(_DIR, f"{name}.litertlm")
    conversion = litertlm.convert(export.path, path, prompt=PROMPTS[0])
    self.assertTrue(os.path.isfile(path))
    from tf_mha.export import litertlm_file  # pylint: disable=g-import-not-at-top
    with litertlm_file.engine(path) as engine:
      got = litertlm_file.run_greedy(engine, PROMPTS[0], NEW_TOKENS).text
    self.assertEqual(got.strip(), texts[0].decode("utf-8", "replace").strip(),
                     conversion)


_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(module, *flags):
  return subprocess.run([sys.executable, "-m", f"tools.{module}", *flags],
                        capture_output=True, text=True, cwd=_REPO,
                        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


class CommandTest(parameterized.TestCase):

  def test_export_then_convert_with_no_other_flag(self):
    output = os.path.join(_DIR, "cli")
    export = _command("export_saved_model", f"--keras_hub_preset={preset_dir('mistral_window')}",
                      f"--output_dir={output}", "--max_length=24")
    self.assertEqual(export.returncode, 0, export.stderr[-3000:])
    version = os.path.join(output, "mistral_window", "1")
    self.assertIn(version, export.stdout)
    self.assertTrue(os.path.isfile(os.path.join(version, "assets.extra",
                                                "tf_serving_warmup_requests")))
    path = os.path.join(_DIR, "mistral.litertlm")
    convert = _command("convert_litertlm", f"--saved_model_dir={version}",
                       f"--output_file={path}")
    self.assertEqual(convert.returncode, 0, convert.stderr[-3000:])
    self.assertTrue(os.path.isfile(path))

  def test_refused_preset_writes_nothing(self):
    path = os.path.join(tempfile.mkdtemp(dir=_DIR), "gpt2")
    shutil.copytree(preset_dir("llama"), path)
    config = os.path.join(path, "config.json")
    with open(config) as f:
      text = f.read().replace("LlamaBackbone", "GPT2Backbone")
    with open(config, "w") as f:
      f.write(text)
    output = os.path.join(_DIR, "refused")
    for flags in ([f"--keras_hub_preset={path}"],
                  [f"--keras_hub_preset={preset_dir('llama')}", "--max_length=2"]):
      result = _command("export_saved_model", *flags, f"--output_dir={output}")
      self.assertEqual(result.returncode, 1, result.stderr[-2000:])
      self.assertRegex(result.stderr, "Refused: .*(GPT2Backbone|max_length)")
      self.assertNotIn("Traceback", result.stderr)
      self.assertFalse(os.path.exists(output) and any(
          files for _, _, files in os.walk(output)))


class BadInputTest(parameterized.TestCase):

  def _copy(self, name):
    path = os.path.join(tempfile.mkdtemp(dir=_DIR), name)
    shutil.copytree(preset_dir(name), path)
    return path

  def test_unsupported_architecture(self):
    path = self._copy("llama")
    config = os.path.join(path, "config.json")
    with open(config) as f:
      text = f.read().replace("LlamaBackbone", "GPT2Backbone")
    with open(config, "w") as f:
      f.write(text)
    with self.assertRaisesRegex(keras_hub.PresetError,
                                "GPT2Backbone.*Supported.*LlamaBackbone.*QwenBackbone"):
      keras_hub.load(path)

  def test_missing_file(self):
    path = self._copy("llama")
    os.remove(os.path.join(path, "model.weights.h5"))
    with self.assertRaisesRegex(keras_hub.PresetError, "missing a file.*model.weights.h5"):
      keras_hub.load(path)

  def test_weights_do_not_match_config(self):
    path = self._copy("qwen2")
    for name in ("config.json", "task.json"):  # KerasHub reads task.json's
      with open(os.path.join(path, name)) as f:
        text = f.read().replace('"intermediate_dim": 64', '"intermediate_dim": 48')
      with open(os.path.join(path, name), "w") as f:
        f.write(text)
    with self.assertRaisesRegex(keras_hub.PresetError, "do not match"):
      keras_hub.load(path)

  def test_max_length_too_short(self):
    with self.assertRaisesRegex(keras_hub.PresetError, "max_length.*at least 3"):
      keras_hub.load(preset_dir("llama"), max_length=2)
    with self.assertRaisesRegex(keras_hub.PresetError, "max_length.*at least 2"):
      keras_hub.load(preset_dir("qwen2"), max_length=1)

  def test_gemma3_with_a_vision_encoder(self):
    import keras_hub as hub  # pylint: disable=g-import-not-at-top
    vision = hub.models.Gemma3VisionEncoder(
        image_size=16, patch_size=4, num_heads=2, hidden_dim=8, num_layers=1,
        intermediate_dim=16, output_dim=32, pool_size=2)
    backbone = hub.models.Gemma3Backbone(
        vocabulary_size=64, image_size=16, num_layers=1, num_query_heads=2,
        num_key_value_heads=1, hidden_dim=32, intermediate_dim=16, head_dim=8,
        vision_encoder=vision)
    with self.assertRaisesRegex(keras_hub.PresetError, "vision encoder.*text-only"):
      keras_hub.load(types.SimpleNamespace(backbone=backbone, preprocessor=None))

  def test_not_a_preset(self):
    with self.assertRaisesRegex(keras_hub.PresetError, "not a directory"):
      keras_hub.load(os.path.join(_DIR, "nowhere"))
    with self.assertRaisesRegex(keras_hub.PresetError, "config.json"):
      keras_hub.load(tempfile.mkdtemp(dir=_DIR))


if __name__ == "__main__":
  tf.test.main()
