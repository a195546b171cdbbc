"""`.litertlm` files run by LiteRT-LM itself (issue 32): a decoder built here
from tf_mha layers (not the demo's class), with a Hugging Face tokenizer,
through `decoder_signatures.save_decoder`, `litertlm.convert` and the
`tf_mha_convert_litertlm` and `litert-lm` commands; greedy text equal to the
SavedModel's own loop, fed as the runtime feeds it."""

import ast
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf
import tf_keras
from absl.testing import parameterized
from tensorflow.compiler.tf2xla.python import xla

import tf_mha
from tf_mha.export import converter
from tf_mha.export import decoder_signatures
from tf_mha.export import litertlm
from tf_mha.export import litertlm_file
from tf_mha.export import quantized
from tf_mha.export import tflite

from tests import bounds

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_WORDS = [f"w{i}" for i in range(40)]
_VOCAB = ["<pad>", "<unk>", "<s>", "</s>"] + _WORDS  # 44 tokens
_SLOTS, _PREFILLS = 32, (4, 8)


class TinyDecoder(tf_keras.Model):
  """Two GQA layers with rotary positions and an untied head; the step
  interface of `decoder_signatures`."""

  def __init__(self, vocab_size=48, dim=32, slots=_SLOTS):
    super().__init__()
    self.num_layers, self.slots = 2, slots
    self.embed = tf_keras.layers.Embedding(vocab_size, dim)
    self.attention = [tf_mha.GroupedQueryAttention(
        head_dim=8, num_query_heads=4, num_key_value_heads=2,
        rope_max_wavelength=10000) for _ in range(self.num_layers)]
    self.mlp = [tf_keras.layers.Dense(dim, activation="relu")
                for _ in range(self.num_layers)]
    self.head = tf_keras.layers.Dense(vocab_size)

  def cache_shape(self, batch):
    return [batch, 2, self.slots, 2, 8]

  def step(self, token_ids, positions, cache_index, caches):
    x = self.embed(token_ids)
    out = []
    for attention, mlp, cache in zip(self.attention, self.mlp, caches):
      h, cache = attention(x, x, cache=cache, cache_update_index=cache_index,
                           positions=positions)
      x = x + h
      x = x + mlp(x)
      out.append(cache)
    return self.head(x) * 4.0, out  # sharper logits: fewer near-ties

  def call(self, token_ids):
    caches = [tf.zeros(self.cache_shape(1)) for _ in range(self.num_layers)]
    length = tf.shape(token_ids)[1]
    return self.step(token_ids, tf.range(length)[None], 0, caches)[0]


def _hf_tokenizer(path):
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import decoders, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  tokenizer = tokenizers.Tokenizer(models.WordLevel(
      {token: i for i, token in enumerate(_VOCAB)}, unk_token="<unk>"))
  tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words by spaces
  tokenizer.add_special_tokens(["<pad>", "<s>", "</s>"])
  tokenizer.save(path)
  return path


def _prompt(count, offset=0):
  return " ".join(_WORDS[(offset + 7 * i) % len(_WORDS)] for i in range(count))


class LiteRTLMTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = tempfile.mkdtemp()
    tf_keras.utils.set_random_seed(11)
    cls.model = TinyDecoder()
    cls.model(tf.constant([[2, 5]]))
    cls.tokenizer = _hf_tokenizer(os.path.join(cls.dir, "tokenizer.json"))
    cls.saved = decoder_signatures.save_decoder(
        cls.model, os.path.join(cls.dir, "decoder"), prefill_lengths=_PREFILLS,
        tokenizer=cls.tokenizer, start_token="<s>", stop_tokens=["</s>"])
    cls.loaded = tf.saved_model.load(cls.saved)
    cls.file = os.path.join(cls.dir, "decoder.litertlm")
    cls.conversion = litertlm.convert(cls.saved, cls.file, prompt=_prompt(3))
    cls.engine = litertlm_file.engine(cls.file)

  @classmethod
  def tearDownClass(cls):
    cls.engine.close()
    super().tearDownClass()

  def _reference(self, text, max_new=20, stop_ids=(3,)):
    contract = litertlm.read_contract(self.loaded)
    call = litertlm.saved_model_call(self.loaded)
    ids = [2] + self.engine.tokenize(text)
    return litertlm.reference_tokens(call, self.loaded, contract, ids, max_new,
                                     list(stop_ids))

  def test_signatures_follow_the_protocol(self):
    self.assertEqual(sorted(self.loaded.signatures), ["decode", "prefill_4", "prefill_8"])
    decode = self.loaded.signatures["decode"]
    inputs = decode.structured_input_signature[1]
    self.assertEqual(inputs["tokens"].shape.as_list(), [1, 1])
    self.assertEqual(inputs["input_pos"].shape.as_list(), [1])
    self.assertEqual(inputs["kv_cache_k_1"].shape.as_list(), [1, _SLOTS, 2, 8])
    self.assertEqual(decode.structured_outputs["logits"].shape.as_list(), [1, 1, 48])
    self.assertNotIn("logits", self.loaded.signatures["prefill_8"].structured_outputs)
    contract = litertlm.read_contract(self.loaded)
    self.assertEqual((contract.prefill, contract.layers, contract.slots,
                      contract.vocabulary), ({"prefill_4": 4, "prefill_8": 8}, 2, _SLOTS, 48))

  def test_decode_equals_the_whole_prefix_recomputed(self):
    """The SavedModel's prefill/decode against the model's full call."""
    ids = [2, 9, 14, 20, 7, 30]
    contract = litertlm.read_contract(self.loaded)
    caches = {n: np.zeros(s.shape, np.float32) for n, s in self.loaded.signatures[
        "decode"].structured_input_signature[1].items() if n.startswith("kv_cache")}
    for position, token in enumerate(ids):
      out = self.loaded.signatures["decode"](
          tokens=tf.constant([[token]]), input_pos=tf.constant([position]),
          **caches)
      caches = {n: out[n] for n in caches}
    full = self.model(tf.constant([ids]))[:, -1]
    bounds.assert_close(out["logits"][:, 0], full, bounds.MODEL_ULPS)
    self.assertEqual(contract.slots, _SLOTS)

  @parameterized.named_parameters(
      ("shorter_than_the_smallest_prefill", 2),
      ("between_prefill_lengths", 6),
      ("longer_than_the_largest_prefill", 13))
  def test_runtime_greedy_text_equals_the_saved_model(self, words):
    text = _prompt(words, offset=words)
    got = litertlm_file.run_greedy(self.engine, text, 12)
    want = self._reference(text, max_new=12)
    self.assertTrue(want)
    self.assertEqual(got.text, self.engine.detokenize(want))
    self.assertGreater(got.decode_tokens_per_second, 0)

  def test_a_stop_token_ends_generation(self):
    text = _prompt(5, offset=1)
    free = self._reference(text, max_new=6, stop_ids=())
    self.assertLen(free, 6)
    stop = free[2]
    first = free.index(stop)
    path = os.path.join(self.get_temp_dir(), "stop.litertlm")
    litertlm.convert(self.saved, path, stop_tokens=[str(stop)], prompt=text)
    engine = litertlm_file.engine(path)
    try:
      got = litertlm_file.run_greedy(engine, text, 6)
    finally:
      engine.close()
    self.assertEqual(got.text, self.engine.detokenize(free[:first]))

  def test_a_prompt_that_fills_the_cache_stops_without_a_crash(self):
    text = _prompt(_SLOTS - 3)  # 30 tokens with the start token
    got = litertlm_file.run_greedy(self.engine, text, 20)
    want = self._reference(text, max_new=20)
    # The runtime stops when the prompt and the new tokens fill the slots.
    self.assertLessEqual(len(want), 2)
    self.assertEqual(got.text, self.engine.detokenize(want) if want else "")

  def test_report_and_file(self):
    kinds = [kind for kind, _ in self.conversion.sections]
    self.assertEqual(kinds, ["LlmMetadataProto", "ExecutorMetadataProto",
                             "HF_Tokenizer_Zlib", "TFLiteModel"])
    self.assertFalse([op for op in self.conversion.operators if op.startswith("CUSTOM")])
    self.assertIn("DYNAMIC_UPDATE_SLICE", self.conversion.operators)
    self.assertEqual(self.engine.bos_token_id, 2)
    self.assertEqual(self.engine.eos_token_ids, [[3]])
    text = "\n".join(self.conversion.lines())
    self.assertRegex(text, r"decode \d+ tokens/s")

  @parameterized.parameters("dynamic_range", "int4", "dynamic_int4_block32",
                            "dynamic_int8", "weight_only_int8")
  def test_quantized_files_match_their_own_tflite_loop(self, quantize):
    """The check passes (LiteRT-LM = the quantized model in LiteRT), and
    the weights shrink."""
    path = os.path.join(self.get_temp_dir(), f"{quantize}.litertlm")
    result = litertlm.convert(self.saved, path, quantize=quantize,
                              prompt=_prompt(4))
    self.assertLess(result.size, self.conversion.size)
    # The file alone: LiteRT-LM's weight cache from the check went with it.
    self.assertEqual(os.listdir(self.get_temp_dir()), [f"{quantize}.litertlm"])
    self.assertFalse([op for op in result.operators if op.startswith("CUSTOM")])

  def test_the_command_offers_every_quantization(self):
    """The command lists its choices itself (it reads its flags before
    TensorFlow loads): the library's, in the same order. Read from its
    source, as the docs are (importing it would define its flags here)."""
    with open(os.path.join(_REPO, "tf_mha", "cli", "convert_litertlm.py")) as f:
      tree = ast.parse(f.read())
    choices = [ast.literal_eval(node.args[2]) for node in ast.walk(tree)
               if isinstance(node, ast.Call) and getattr(node.func, "attr", "") ==
               "DEFINE_enum" and ast.literal_eval(node.args[0]) == "quantize"]
    self.assertEqual(choices, [list(litertlm.QUANTIZATIONS)])

  def test_blocks_of_128_on_widths_they_divide(self):
    """`dynamic_int4_block128` on a decoder 128 wide (its blocks run along
    each matmul's input), and a clear refusal on this one (32 wide)."""
    out = os.path.join(self.get_temp_dir(), "block128.litertlm")
    with self.assertRaisesRegex(ValueError, r"`quantize`='dynamic_int4_block128' "
                                r"does not apply to this model: .*block size 128"):
      litertlm.convert(self.saved, out, quantize="dynamic_int4_block128")
    self.assertEqual(os.listdir(self.get_temp_dir()), [])
    from tf_mha.models import gemma3  # pylint: disable=g-import-not-at-top
    model = gemma3.Gemma3CausalLM(gemma3.Gemma3Config(
        vocabulary_size=64, num_layers=1, hidden_dim=128, num_query_heads=2,
        num_key_value_heads=1, head_dim=64, intermediate_dim=256,
        sliding_window=8), max_length=32)
    model(tf.constant([[2, 5]]))
    saved = decoder_signatures.save_decoder(
        model, os.path.join(self.get_temp_dir(), "wide"), prefill_lengths=(8,),
        tokenizer=self.tokenizer, start_token="<s>", stop_tokens=["</s>"])
    float32 = tf.io.gfile.stat(os.path.join(saved, "variables",
                                            "variables.data-00000-of-00001")).length
    # Its tied table read by EMBEDDING_LOOKUP and FULLY_CONNECTED, in the
    # runtime: int4 weights and their scales, and int8.
    for quantize, fraction in (("dynamic_int4_block128", 1 / 3), ("dynamic_int8", 1 / 2)):
      result = litertlm.convert(saved, out, quantize=quantize, prompt=_prompt(4))
      self.assertLess(result.size, float32 * fraction, quantize)
      self.assertIn("EMBEDDING_LOOKUP", result.operators)

  def test_bad_input_is_named_and_nothing_is_written(self):
    out = os.path.join(self.get_temp_dir(), "never.litertlm")
    cases = [
        (dict(tokenizer=self.saved + "/saved_model.pb"), r"`tokenizer`.*neither a SentencePiece"),
        (dict(tokenizer=os.path.join(self.dir, "missing.model")), r"`tokenizer`.*cannot be read"),
        (dict(start_token="<nope>"), r"`start_token` names '<nope>'"),
        (dict(stop_tokens=["99"]), r"`stop_tokens` must be inside .*\[0, 44\)"),
        (dict(max_tokens=_SLOTS + 1), r"`max_tokens` must be in \[1, 32\]"),
        (dict(quantize="int8"), r"`quantize` must be one of"),
        (dict(stop_tokens=[]), r"`stop_tokens` must name at least one token"),
    ]
    for kwargs, message in cases:
      with self.assertRaisesRegex(ValueError, message):
        litertlm.convert(self.saved, out, **kwargs)
      self.assertFalse(os.path.exists(out))
    big = os.path.join(self.get_temp_dir(), "big.json")
    import tokenizers  # pylint: disable=g-import-not-at-top
    from tokenizers import models  # pylint: disable=g-import-not-at-top
    tokenizers.Tokenizer(models.WordLevel(
        {f"t{i}": i for i in range(60)}, unk_token="t0")).save(big)
    with self.assertRaisesRegex(ValueError, r"has 60 tokens, more than the model's 48"):
      litertlm.convert(self.saved, out, tokenizer=big)
    with self.assertRaisesRegex(ValueError, r"`output_file`.*is a directory"):
      litertlm.convert(self.saved, self.dir)
    self.assertFalse(os.path.exists(out))
    self.assertEqual([n for n in os.listdir(self.get_temp_dir()) if "tmp" in n], [])

  def test_saved_models_off_the_protocol_are_named(self):
    out = os.path.join(self.get_temp_dir(), "never.litertlm")

    def save(name, signatures):
      module = tf.Module()
      path = os.path.join(self.get_temp_dir(), name)
      tf.saved_model.save(module, path, signatures=signatures)
      return path

    spec = lambda shape, name, dtype=tf.float32: tf.TensorSpec(shape, dtype, name=name)
    plain = tf.function(lambda x: {"y": x * 2.0}, input_signature=[spec([1, 4], "x")])
    with self.assertRaisesRegex(ValueError, r"must have a `decode` signature.*"
                                r"Found signatures: \['serving_default'\]"):
      litertlm.convert(save("plain", {"serving_default": plain}), out,
                       tokenizer=self.tokenizer)
    unpaired = tf.function(
        lambda tokens, input_pos, kv_cache_k_0: {
            "kv_cache_k_0": kv_cache_k_0,
            "logits": tf.zeros([1, 1, 48]) + tf.cast(tokens[0, 0], tf.float32)},
        input_signature=[spec([1, 1], "tokens", tf.int32), spec([1], "input_pos", tf.int32),
                         spec([1, 8, 2, 4], "kv_cache_k_0")])
    with self.assertRaisesRegex(ValueError, r"in pairs.*Found: \['kv_cache_k_0'\]"):
      litertlm.convert(save("unpaired", {"decode": unpaired, "prefill_1": unpaired}),
                       out, tokenizer=self.tokenizer)
    no_logits = tf.function(
        lambda tokens, input_pos: {"out": tf.cast(tokens, tf.float32)},
        input_signature=[spec([1, 1], "tokens", tf.int32), spec([1], "input_pos", tf.int32)])
    with self.assertRaisesRegex(ValueError, r"caches must be kv_cache_k_<i>"):
      litertlm.convert(save("no_caches", {"decode": no_logits, "prefill_1": no_logits}),
                       out, tokenizer=self.tokenizer)
    self.assertFalse(os.path.exists(out))

  def test_select_tf_ops_are_refused(self):
    def call(tokens, input_pos, kv_cache_k_0, kv_cache_v_0):
      odd = tf.strings.to_number(tf.strings.as_string(tokens), tf.float32)  # Flex
      return {"kv_cache_k_0": kv_cache_k_0, "kv_cache_v_0": kv_cache_v_0,
              "logits": tf.zeros([1, 1, 48]) + odd[:, :1, None]}
    specs = [tf.TensorSpec([1, 1], tf.int32, name="tokens"),
             tf.TensorSpec([1], tf.int32, name="input_pos"),
             tf.TensorSpec([1, 8, 2, 4], tf.float32, name="kv_cache_k_0"),
             tf.TensorSpec([1, 8, 2, 4], tf.float32, name="kv_cache_v_0")]
    function = tf.function(call, input_signature=specs)
    path = os.path.join(self.get_temp_dir(), "flex")
    tf.saved_model.save(tf.Module(), path,
                        signatures={"decode": function, "prefill_1": function})
    out = os.path.join(self.get_temp_dir(), "flex.litertlm")
    with self.assertRaisesRegex(converter.SelectOpsRefused, r"AsString"):
      litertlm.convert(path, out, tokenizer=self.tokenizer, stop_tokens=["</s>"])
    self.assertFalse(os.path.exists(out))

  def test_the_commands(self):
    """tf_mha_convert_litertlm with no flag but the paths (the export
    recorded the rest), then the `litert-lm` command on its file."""
    out = os.path.join(self.get_temp_dir(), "cli.litertlm")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    convert = subprocess.run(
        [sys.executable, "-m", "tools.convert_litertlm",
         f"--saved_model_dir={self.saved}", f"--output_file={out}",
         f"--prompt={_prompt(5)}"], cwd=_REPO, capture_output=True, text=True,
        timeout=600, env=env)
    self.assertEqual(convert.returncode, 0, convert.stderr[-3000:])
    self.assertEqual(os.listdir(os.path.dirname(out)), ["cli.litertlm"])
    self.assertRegex(convert.stdout, r"sections: LlmMetadataProto .*TFLiteModel")
    self.assertRegex(convert.stdout, r"LiteRT-LM: prefill \d+ tokens/s, decode \d+")
    want = self.engine.detokenize(self._reference(_prompt(5), max_new=litertlm.CHECK_TOKENS))
    self.assertIn(f"greedy from {_prompt(5)!r}: {want!r}", convert.stdout)
    command = shutil.which("litert-lm", path=os.path.dirname(sys.executable))
    self.assertIsNotNone(command, "the litert-lm command is installed with tf_mha")
    home = tempfile.mkdtemp()  # it writes under $HOME
    run = subprocess.run([command, "run", out, "--prompt", _prompt(5),
                          "--backend", "cpu"], capture_output=True, text=True,
                         timeout=600, env=dict(env, HOME=home))
    self.assertEqual(run.returncode, 0, run.stderr[-2000:])
    # The command generates until a stop token or a full cache.
    whole = self.engine.detokenize(self._reference(_prompt(5), max_new=_SLOTS))
    self.assertEqual(run.stdout.strip().splitlines()[-1].strip(), whole)
    refused = subprocess.run(
        [sys.executable, "-m", "tools.convert_litertlm",
         f"--saved_model_dir={self.saved}", f"--output_file={out}2",
         "--stop_tokens=nope"], cwd=_REPO, capture_output=True, text=True,
        timeout=600, env=env)
    self.assertEqual(refused.returncode, 1)
    self.assertIn("FAILED: `stop_tokens` names 'nope'", refused.stderr)
    self.assertNotIn("Traceback", refused.stderr)
    self.assertFalse(os.path.exists(f"{out}2"))


def _masked_decoder(path, mask_dtype, slots=48, prefill=8, vocab=48, dim=16):
  """A user's own one-layer decoder in plain TensorFlow, saved with
  LiteRT-LM's signatures and a `mask` input (`[1, 1, T, S]`, float32 added to
  the scores or bool selecting them) as its only causal mask: it attends to
  whatever the mask lets through."""
  heads, size = 2, dim // 2
  rng = np.random.default_rng(5)
  module = tf.Module()
  module.w = {name: tf.Variable(rng.normal(0, 0.5, shape).astype(np.float32))
              for name, shape in (("embed", [vocab, dim]), ("q", [dim, dim]),
                                  ("k", [dim, dim]), ("v", [dim, dim]),
                                  ("o", [dim, dim]), ("out", [dim, vocab]))}

  def step(tokens, input_pos, mask, kv_cache_k_0, kv_cache_v_0):
    w = module.w
    x = tf.gather(w["embed"], tokens)  # [1, T, D]
    split = lambda t: tf.reshape(t, [1, -1, heads, size])
    at = tf.stack([0, input_pos[0], 0, 0])
    keys = xla.dynamic_update_slice(kv_cache_k_0, split(x @ w["k"]), at)
    values = xla.dynamic_update_slice(kv_cache_v_0, split(x @ w["v"]), at)
    scores = tf.einsum("btnh,bsnh->bnts", split(x @ w["q"]), keys) / size**0.5
    if mask.dtype == tf.bool:
      scores = tf.where(mask, scores, -1e9)
    else:
      scores += mask
    mixed = tf.einsum("bnts,bsnh->btnh", tf.nn.softmax(scores), values)
    x += tf.reshape(mixed, [1, -1, dim]) @ w["o"]
    return {"logits": 4.0 * x @ w["out"], "kv_cache_k_0": keys,
            "kv_cache_v_0": values}

  def signature(length):
    cache = tf.TensorSpec([1, slots, heads, size], tf.float32)
    return tf.function(step, input_signature=[
        tf.TensorSpec([1, length], tf.int32), tf.TensorSpec([length], tf.int32),
        tf.TensorSpec([1, 1, length, slots], mask_dtype), cache, cache])

  tf.saved_model.save(module, path, signatures={
      "decode": signature(1), f"prefill_{prefill}": signature(prefill)})
  return path


class MaskedDecoderTest(tf.test.TestCase, parameterized.TestCase):
  """A model with LiteRT-LM's optional `mask` input, as litert-torch's
  Gemma 3 takes by default (issue 41): the check feeds the mask the way the
  runtime fills it."""

  def test_runtime_mask_is_what_litert_lm_fills(self):
    lowest = -0.7 * np.finfo(np.float32).max
    mask = litertlm.runtime_mask([1, 1, 3, 5], np.float32, start=1, steps=2)
    np.testing.assert_array_equal(mask[0, 0], [
        [0, 0, lowest, lowest, lowest],
        [0, 0, 0, lowest, lowest],
        [lowest] * 5])  # padding: nothing visible
    self.assertEqual(mask.dtype, np.float32)
    np.testing.assert_array_equal(
        litertlm.runtime_mask([1, 1, 1, 4], np.bool_, start=2, steps=1)[0, 0],
        [[True, True, True, False]])
    half = litertlm.runtime_mask([1, 1, 1, 2], np.float16, start=0, steps=1)
    np.testing.assert_array_equal(half[0, 0], np.array([[0, -45824]], np.float16))

  @parameterized.parameters(tf.float32, tf.bool)
  def test_the_command_converts_a_model_with_a_mask_input(self, dtype):
    base = self.get_temp_dir()
    saved = _masked_decoder(os.path.join(base, "masked"), dtype)
    tokenizer = _hf_tokenizer(os.path.join(base, "tokenizer.json"))
    loaded = tf.saved_model.load(saved)
    contract = litertlm.read_contract(loaded)
    self.assertEqual(contract.masks, {"decode": ("mask", dtype.as_numpy_dtype),
                                      "prefill_8": ("mask", dtype.as_numpy_dtype)})
    out = os.path.join(base, "out", "masked.litertlm")
    os.makedirs(os.path.dirname(out))
    prompt = _prompt(11)  # two prefill calls, the second padded
    convert = subprocess.run(
        [sys.executable, "-m", "tools.convert_litertlm", f"--saved_model_dir={saved}",
         f"--output_file={out}", f"--tokenizer={tokenizer}", "--start_token=<s>",
         "--stop_tokens=</s>", f"--prompt={prompt}"], cwd=_REPO,
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    self.assertEqual(convert.returncode, 0, convert.stderr[-3000:])
    self.assertEqual(os.listdir(os.path.dirname(out)), ["masked.litertlm"])
    ids = [2] + [_VOCAB.index(word) for word in prompt.split()]
    want = litertlm.reference_tokens(litertlm.saved_model_call(loaded), loaded,
                                     contract, ids, litertlm.CHECK_TOKENS, [3])
    self.assertLen(want, litertlm.CHECK_TOKENS)
    engine = litertlm_file.engine(out)
    text = engine.detokenize(want)
    engine.close()
    self.assertIn(f"greedy from {prompt!r}: {text!r}", convert.stdout)
    # The mask matters: attending to every slot gives other tokens.
    ignoring = lambda name, inputs: litertlm.saved_model_call(loaded)(name, {
        **inputs, "mask": np.ones_like(inputs["mask"]) if dtype == tf.bool
        else np.zeros_like(inputs["mask"])})
    self.assertNotEqual(litertlm.reference_tokens(
        ignoring, loaded, contract, ids, litertlm.CHECK_TOKENS, [3]), want)

  def test_a_mask_off_the_contract_is_named(self):
    spec = lambda shape, dtype=tf.float32: tf.TensorSpec(shape, dtype)
    def call(tokens, input_pos, mask, kv_cache_k_0, kv_cache_v_0):
      return {"logits": tf.zeros([1, 1, 48]) + mask[0, :, :, :1] +
                        tf.cast(tokens[:, :1, None], tf.float32),
              "kv_cache_k_0": kv_cache_k_0, "kv_cache_v_0": kv_cache_v_0}
    wrong = tf.function(call, input_signature=[
        spec([1, 1], tf.int32), spec([1], tf.int32), spec([1, 1, 1, 9]),
        spec([1, 48, 2, 8]), spec([1, 48, 2, 8])])
    path = os.path.join(self.get_temp_dir(), "wrong")
    tf.saved_model.save(tf.Module(), path, signatures={
        "decode": wrong, "prefill_1": wrong})
    with self.assertRaisesRegex(ValueError, r"Signature 'prefill_1': `mask` must be "
                                r"\[1, 1, 1, 48\].*Found \(1, 1, 1, 9\) float32"):
      litertlm.read_contract(tf.saved_model.load(path))


class TiedEmbeddingTest(tf.test.TestCase, parameterized.TestCase):
  """Files no bigger than litert-torch's (issue 41): a tied embedding is one
  buffer, read by the lookup and by the output matmul, under each recipe."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    from tf_mha.models import gemma3  # pylint: disable=g-import-not-at-top
    cls.vocab, cls.dim = 512, 32
    config = gemma3.Gemma3Config(
        vocabulary_size=cls.vocab, num_layers=1, hidden_dim=cls.dim,
        num_query_heads=2, num_key_value_heads=1, head_dim=16,
        intermediate_dim=64, sliding_window=4)
    tf_keras.utils.set_random_seed(4)
    model = gemma3.Gemma3CausalLM(config, max_length=16)
    model(tf.constant([[1, 2]]))
    # A trained final norm's scale (zeros, the initial one, make it a multiply
    # by ones, which the converter drops): the TFLite converter folded it into
    # the output matmul's weights, a second [V, D] table.
    model.final_norm.scale.assign(
        np.random.default_rng(3).normal(0, 0.1, [cls.dim]).astype(np.float32))
    path = decoder_signatures.save_decoder(
        model, os.path.join(tempfile.mkdtemp(), "tied"), prefill_lengths=(4,))
    names = litertlm.read_contract(tf.saved_model.load(path)).signature_names
    cls.float32 = converter.to_tflite(path, names, "none", None, False)

  # Bytes of the table: float32, int8, int4 (two a byte).
  @parameterized.parameters(("none", 4), ("dynamic_int8", 1),
                            ("weight_only_int8", 1), ("int4", 0.5),
                            ("dynamic_int4_block32", 0.5))
  def test_the_table_is_stored_once(self, quantize, size):
    from tensorflow.lite.tools import flatbuffer_utils  # pylint: disable=g-import-not-at-top
    model = (self.float32 if quantize == "none" else
             quantized.weights(self.float32, quantize))
    parsed = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    readers = {}  # table's buffer -> (signature, operator) that read it
    for subgraph in parsed.subgraphs:
      for op in subgraph.operators:
        for tensor in (subgraph.tensors[i] for i in op.inputs if i >= 0):
          data = parsed.buffers[tensor.buffer].data
          if list(tensor.shape) == [self.vocab, self.dim] and data is not None:
            self.assertLen(data, self.vocab * self.dim * size)
            readers.setdefault(tensor.buffer, set()).add((
                subgraph.name.decode(),
                tflite.operator_name(parsed.operatorCodes[op.opcodeIndex])))
    if quantize == "weight_only_int8":  # dequantized once per signature
      want = {("prefill_4", "DEQUANTIZE"), ("decode", "DEQUANTIZE")}
    else:
      # ai-edge-quantizer quantizes an EMBEDDING_LOOKUP's table, not a GATHER's.
      lookup = "GATHER" if quantize == "none" else "EMBEDDING_LOOKUP"
      want = {("prefill_4", lookup), ("decode", lookup),
              ("decode", "FULLY_CONNECTED")}
    self.assertEqual(list(readers.values()), [want])


class RuntimeBenchmarkTest(tf.test.TestCase):
  """`tools/benchmark.py --generation`'s LiteRT-LM rows, on a tiny decoder."""

  def test_rows_and_ratios(self):
    from tf_mha.benchmarks import generation  # pylint: disable=g-import-not-at-top
    from tf_mha.demo import decoder as decoder_lib  # pylint: disable=g-import-not-at-top
    tf_keras.utils.set_random_seed(5)
    model = decoder_lib.Decoder(64, max_length=32)
    model(tf.constant([[1, 2]]))
    prompt = tf.constant([[5, 9, 17, 30, 41, 8]])
    rows = generation.time_litertlm(model, prompt, 8, repeats=1)
    self.assertEqual([r.name for r in rows],
                     ["LiteRT-LM, float32", generation.LITERTLM_DYNAMIC,
                      "LiteRT-LM, int4"])
    for row in rows:
      self.assertGreater(row.decode_tokens_per_second, 0)
      self.assertGreater(row.prefill_tokens_per_second, 0)
      self.assertGreater(row.peak_rss_bytes, 2**20)
    self.assertLess(rows[1].file_bytes, rows[0].file_bytes)
    ours = generation.Row(generation.LITERT_DYNAMIC, 1.0, 100.0, None, None,
                          None, 1.0)
    table = generation.runtime_table([ours], rows, 1e10)
    ratio = rows[1].decode_tokens_per_second / 100.0
    self.assertIn(f"LiteRT-LM dynamic-range decode / our LiteRT loop's: "
                  f"{ratio:.2f}x", table)
    self.assertGreater(generation.memory_bandwidth(megabytes=16, repeats=1), 1e8)


if __name__ == "__main__":
  tf.test.main()
