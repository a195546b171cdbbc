"""Generation speed of a decoder of realistic layer sizes, cached against
uncached, in TensorFlow (XLA) and LiteRT, and KerasHub's Llama `generate`
of the same sizes: `tools/benchmark.py --generation`.

Shapes: `P` prompt tokens, `M` new tokens, `S = P + M` cache slots.

The decoder (`tf_mha.demo.decoder.Decoder`, random weights): D=512, 8 query
heads and 2 key/value heads of 64, 4 blocks, feed-forward 2048, B=1. Cached
generation prefills the prompt, then decodes one token at a time over the
caches. Uncached generation recomputes the whole prefix for every token,
which is what a tf.keras decoder converted to TFLite does today; its time
per token grows with the prefix, so it is timed at `_UNCACHED_POINTS`
lengths between P and S - 1 and summed over every length by linear
interpolation (one compile and a few calls per length, instead of M).
"""

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
import tf_keras

from tf_mha import generation
from tf_mha.benchmarks import memory
from tf_mha.demo import decoder as decoder_lib
from tf_mha.export import decoder_signatures
from tf_mha.export import litert_generation
from tf_mha.export import litertlm
from tf_mha.export import tflite

_UNCACHED_POINTS = 6
_VOCAB = 4096
# The rows the targets compare (`table`).
TENSORFLOW, LITERT_FLOAT32, KERAS_HUB = (
    "TensorFlow, XLA (tf_mha)", "LiteRT, float32", "KerasHub LlamaCausalLM.generate")
LITERT_DYNAMIC, LITERTLM_DYNAMIC = "LiteRT, dynamic_range", "LiteRT-LM, dynamic_range"


@dataclasses.dataclass
class Row:
  name: str
  prefill_tokens_per_second: float
  cached_tokens_per_second: float
  uncached_tokens_per_second: float  # None: not timed (KerasHub)
  token_ms_16: float  # median time of new tokens 14..18 (cached); None: not timed
  token_ms_256: float  # median time of the last 5 new tokens (cached)
  end_to_end_tokens_per_second: float  # new tokens / (prefill + decoding)

  @property
  def speedup(self):
    if self.uncached_tokens_per_second is None:
      return None
    return self.cached_tokens_per_second / self.uncached_tokens_per_second

  @property
  def flatness(self):
    return None if self.token_ms_16 is None else self.token_ms_256 / self.token_ms_16


def build_decoder(slots, seed=0):
  tf_keras.utils.set_random_seed(seed)
  model = decoder_lib.Decoder(_VOCAB, max_length=slots, dim=512, num_query_heads=8,
                              num_key_value_heads=2, num_layers=4, ff_dim=2048)
  model(tf.zeros([1, 1], tf.int32))
  return model


def best_seconds(fn, repeats):
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def _uncached_tokens_per_second(time_at, prompt, new):
  """`new` tokens / the summed time of recomputing prefixes of `prompt` to
  `prompt + new - 1` tokens, from `time_at(length)` at a few lengths."""
  lengths = np.linspace(prompt, prompt + new - 1, _UNCACHED_POINTS).round().astype(int)
  seconds = [time_at(int(n)) for n in lengths]
  total = np.interp(np.arange(prompt, prompt + new), lengths, seconds).sum()
  return new / total


def _flat_ms(step_seconds):
  """(median ms of new tokens 14..18, of the last 5): step i makes token i + 2."""
  return (1e3 * float(np.median(step_seconds[12:17])),
          1e3 * float(np.median(step_seconds[-5:])))


def time_tensorflow(model, prompt_ids, new, repeats=3):
  """XLA: the whole greedy loop in one compiled function, against the
  compiled whole-sequence call at each length."""
  prompt = prompt_ids.shape[1]

  def step(ids, caches, index):
    positions = index + tf.range(tf.shape(ids)[1])[None]
    return model.step(ids, positions, index, caches)

  generate = tf.function(lambda ids, m: generation.greedy_generate(
      step, ids, m, model.empty_caches(1))[0], jit_compile=True)
  prefill_only = best_seconds(lambda: generate(prompt_ids, 1).numpy(), repeats)
  whole = best_seconds(lambda: generate(prompt_ids, new).numpy(), repeats)
  one_step = tf.function(step, jit_compile=True)
  caches = step(prompt_ids, model.empty_caches(1), 0)[1]
  steps = []
  token = tf.constant([[7]])
  for i in range(new - 1):
    start = time.perf_counter()
    logits, caches = one_step(token, caches, tf.constant(prompt + i))
    logits.numpy()
    steps.append(time.perf_counter() - start)
  full = tf.function(model, jit_compile=True)

  def uncached_at(length):
    ids = tf.ones([1, length], tf.int32)
    return best_seconds(lambda: full(ids)[:, -1].numpy(), repeats)

  return Row(TENSORFLOW, prompt / prefill_only,
             (new - 1) / (whole - prefill_only),
             _uncached_tokens_per_second(uncached_at, prompt, new), *_flat_ms(steps),
             new / whole)


def time_litert(model, prompt_ids, new, quantizations=("none", "dynamic_range"),
                repeats=3):
  """LiteRT: `prefill`/`decode` run by `litert_generation.Generator`,
  against the converted whole-sequence model at each length."""
  rows = []
  with tempfile.TemporaryDirectory() as directory:
    cached_dir, full_dir = (os.path.join(directory, n) for n in ("cached", "full"))
    decoder_lib.save_for_litert(model, cached_dir)
    full = tf.function(lambda token_ids: {"logits": model(token_ids)[:, -1]},
                       input_signature=[tf.TensorSpec([1, None], tf.int32,
                                                      name="token_ids")])
    tf.saved_model.save(model, full_dir, signatures={"full": full})
    for quantize in quantizations:
      cached = tflite.convert(cached_dir, signature=["prefill", "decode"],
                              quantize=quantize)
      runner = litert_generation.Generator(cached)
      ids = prompt_ids.numpy()[0].tolist()
      runs = [runner.generate(ids, new) for _ in range(repeats)]
      best = min(runs, key=lambda r: sum(r.step_seconds))
      full_runner = tflite.interpreter(tflite.convert(
          full_dir, signature="full", quantize=quantize)).get_signature_runner("full")

      def uncached_at(length):
        token_ids = np.ones([1, length], np.int32)
        return best_seconds(lambda: full_runner(token_ids=token_ids), repeats)

      rows.append(Row(
          f"LiteRT, {'float32' if quantize == 'none' else quantize}",
          len(ids) / min(r.prefill_seconds for r in runs),
          best.decode_tokens_per_second,
          _uncached_tokens_per_second(uncached_at, len(ids), new),
          *_flat_ms(best.step_seconds),
          new / (best.prefill_seconds + sum(best.step_seconds))))
  return rows


@dataclasses.dataclass
class RuntimeRow:
  """A `.litertlm` file run by LiteRT-LM in a process of its own."""
  name: str
  file_bytes: int
  prefill_tokens_per_second: float
  decode_tokens_per_second: float
  time_to_first_token: float
  peak_rss_bytes: int  # the whole process: runtime, model and caches


# Runs a .litertlm file in LiteRT-LM (argv: path, prompt text, new tokens,
# repeats) and prints its best benchmark figures and peak memory as JSON.
# LiteRT-LM only (as `litertlm_file.run_greedy` calls it): no TensorFlow in
# the process, so its peak memory is the runtime's, the model's and caches'
# (`memory.peak_rss`, whose source the script starts with).
_RUN_LITERTLM = memory.SOURCE + r"""
import json, sys
import litert_lm
path, text, new, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
engine = litert_lm.Engine(path, backend=litert_lm.Backend.CPU(), enable_benchmark=True)
runs = []
for _ in range(repeats):
  session = engine.create_session(apply_prompt_template=False,
      sampler_config=litert_lm.SamplerConfig(top_k=1), max_output_tokens=new)
  session.run_prefill([text])
  session.run_decode()
  runs.append(session.get_benchmark_info())
  session.close()
engine.close()
print(json.dumps(dict(
    prefill=max(r.last_prefill_tokens_per_second for r in runs),
    decode=max(r.last_decode_tokens_per_second for r in runs),
    first=min(r.time_to_first_token_in_second for r in runs),
    rss=peak_rss())))
"""


def _word_tokenizer(path, vocab):
  """A word-level `tokenizer.json` of tokens `t0`..`t<vocab - 1>`."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import decoders, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  tokenizer = tokenizers.Tokenizer(models.WordLevel(
      {f"t{i}": i for i in range(vocab)}, unk_token="t0"))
  tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tokenizer.decoder = decoders.WordPiece(prefix="##")
  tokenizer.save(path)
  return path


def time_litertlm(model, prompt_ids, new,
                  quantizations=("none", "dynamic_range", "int4"), repeats=3):
  """LiteRT-LM: the decoder as a `.litertlm` file, run in a child process;
  `RuntimeRow`s. The runtime needs a stop token: `t0`, which a prompt of ids
  from 5 up does not hold (random weights may still pick it; the runtime's
  tokens/s count what it made)."""
  rows = []
  ids = prompt_ids.numpy()[0].tolist()
  text = " ".join(f"t{i}" for i in ids[1:])  # the runtime prepends ids[0]
  with tempfile.TemporaryDirectory() as directory:
    saved = decoder_signatures.save_decoder(
        model, os.path.join(directory, "decoder"),
        tokenizer=_word_tokenizer(os.path.join(directory, "tokenizer.json"),
                                  model.config.vocabulary_size),
        start_token=ids[0], stop_tokens=[0])
    for quantize in quantizations:
      path = os.path.join(directory, f"{quantize}.litertlm")
      conversion = litertlm.convert(saved, path, quantize=quantize, prompt=text)
      figures = run_litertlm_file(path, text, new, repeats)
      rows.append(RuntimeRow(
          f"LiteRT-LM, {'float32' if quantize == 'none' else quantize}",
          conversion.size, figures["prefill"], figures["decode"],
          figures["first"], figures["rss"]))
  return rows


def run_litertlm_file(path, text, new, repeats):
  """Runs the `.litertlm` file `path` in LiteRT-LM in a child process:
  `{prefill, decode}` tokens/s, `first` (seconds to the first token) and
  `rss` (the process's peak bytes), each the best of `repeats` runs."""
  child = subprocess.run(
      [sys.executable, "-c", _RUN_LITERTLM, path, text, str(new), str(repeats)],
      capture_output=True, text=True, check=True)
  return json.loads(child.stdout.strip().splitlines()[-1])


def memory_bandwidth(megabytes=512, repeats=5):
  """Bytes per second this machine reads and writes: the best of copying a
  `megabytes` array into another (each byte read once and written once)."""
  source = np.ones(megabytes * 2**20 // 8)
  target = np.empty_like(source)
  seconds = best_seconds(lambda: np.copyto(target, source), repeats)
  return 2 * source.nbytes / seconds


def time_keras_hub(prompt_ids, new, repeats=3, seed=0):
  """KerasHub's `LlamaCausalLM.generate` (Keras 3 on TensorFlow, its
  compiled greedy loop) on a `LlamaBackbone` of the same sizes (random
  weights, `preprocessor=None`): a batch of the prompt padded to `P + M`
  tokens, every slot generated (no stop token). Its prefill runs over all
  `P + M` positions; a call padded to `P + 1` times it, as
  `time_tensorflow` times one of `M = 1`. Llama's feed-forward is gated
  (three 512 x 2048 matrices to the demo decoder's two)."""
  import keras  # pylint: disable=g-import-not-at-top
  import keras_hub  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(seed)
  backbone = keras_hub.models.LlamaBackbone(
      vocabulary_size=_VOCAB, num_layers=4, num_query_heads=8, hidden_dim=512,
      intermediate_dim=2048, num_key_value_heads=2)
  model = keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)
  model.compile(sampler="greedy")
  prompt = prompt_ids.numpy()

  def generate(count):
    ids = np.pad(prompt, [(0, 0), (0, count)])
    mask = np.pad(np.ones_like(prompt, bool), [(0, 0), (0, count)])
    return model.generate({"token_ids": ids, "padding_mask": mask},
                          stop_token_ids=None)

  prefill_only = best_seconds(lambda: generate(1), repeats)
  whole = best_seconds(lambda: generate(new), repeats)
  return Row(KERAS_HUB, prompt.shape[1] / prefill_only,
             (new - 1) / (whole - prefill_only), None, None, None, new / whole)


def run(prompt=128, new=256, repeats=3, log=print):
  """Builds the decoder and times every row."""
  model = build_decoder(prompt + new)
  prompt_ids = tf.constant(np.random.default_rng(0).integers(
      5, _VOCAB, (1, prompt)).astype(np.int32))
  log("Timing generation in TensorFlow (XLA)...")
  rows = [time_tensorflow(model, prompt_ids, new, repeats)]
  log("Converting and timing generation in LiteRT...")
  rows += time_litert(model, prompt_ids, new, repeats=repeats)
  log("Timing KerasHub's LlamaCausalLM.generate...")
  rows.append(time_keras_hub(prompt_ids, new, repeats))
  log("Packing and timing generation in LiteRT-LM...")
  runtime_rows = time_litertlm(model, prompt_ids, new, repeats=repeats)
  return rows, runtime_rows, memory_bandwidth()


def runtime_table(rows, runtime_rows, bandwidth, new=256):
  """LiteRT-LM's rows beside our LiteRT loop's, and the targets' ratios."""
  lines = ["", f"LiteRT-LM (its own CPU engine, in a process of its own; "
           f"memory bandwidth here {bandwidth / 1e9:.1f} GB/s, a copy):", "",
           "| runtime | file MB | prefill tokens/s | decode tokens/s | first "
           "token ms | peak memory MB | decode step / reading the file once |",
           "|---|---|---|---|---|---|---|"]
  for r in runtime_rows:
    read = r.file_bytes / bandwidth
    lines.append(f"| {r.name} | {r.file_bytes / 1e6:.1f} | "
                 f"{r.prefill_tokens_per_second:.0f} | "
                 f"{r.decode_tokens_per_second:.0f} | "
                 f"{r.time_to_first_token * 1e3:.0f} | {r.peak_rss_bytes / 2**20:.0f} | "
                 f"{1 / r.decode_tokens_per_second / read:.2f}x |")
  ours = {r.name: r for r in rows}.get(LITERT_DYNAMIC)
  theirs = {r.name: r for r in runtime_rows}.get(LITERTLM_DYNAMIC)
  if ours and theirs:
    lines += ["", f"LiteRT-LM dynamic-range decode / our LiteRT loop's: "
              f"{theirs.decode_tokens_per_second / ours.cached_tokens_per_second:.2f}x "
              "(target: at least 1x); its decode step / reading the file once: "
              f"{1 / theirs.decode_tokens_per_second / (theirs.file_bytes / bandwidth):.2f}x "
              "(target: at most 2x)."]
  return "\n".join(lines)


def table(rows, prompt=128, new=256):
  lines = [f"Generation, B=1, a {prompt}-token prompt then {new} new tokens "
           "(D=512, 8 query and 2 key/value heads of 64, 4 blocks, random "
           "weights):", "",
           "| runtime | prefill tokens/s | cached decode tokens/s | end-to-end "
           "tokens/s | uncached tokens/s | cached / uncached | ms/token at "
           "16th / 256th | 256th / 16th |",
           "|---|---|---|---|---|---|---|---|"]
  missing = "-"
  for r in rows:
    flat = (missing, missing) if r.token_ms_16 is None else (
        f"{r.token_ms_16:.2f} / {r.token_ms_256:.2f}", f"{r.flatness:.2f}")
    uncached = (missing, missing) if r.speedup is None else (
        f"{r.uncached_tokens_per_second:.1f}", f"{r.speedup:.1f}x")
    lines.append(f"| {r.name} | {r.prefill_tokens_per_second:.0f} | "
                 f"{r.cached_tokens_per_second:.1f} | "
                 f"{r.end_to_end_tokens_per_second:.1f} | {uncached[0]} | "
                 f"{uncached[1]} | {flat[0]} | {flat[1]} |")
  by_name = {r.name: r for r in rows}
  ours, litert, keras_hub = (by_name.get(n) for n in (TENSORFLOW, LITERT_FLOAT32,
                                                       KERAS_HUB))
  if ours and litert and keras_hub:
    lines += ["", f"TensorFlow XLA cached decoding / LiteRT float32: "
              f"{ours.cached_tokens_per_second / litert.cached_tokens_per_second:.2f}x "
              "(target: at least 1x); end to end / KerasHub's generate: "
              f"{ours.end_to_end_tokens_per_second / keras_hub.end_to_end_tokens_per_second:.2f}x, "
              f"cached decoding / KerasHub's: "
              f"{ours.cached_tokens_per_second / keras_hub.cached_tokens_per_second:.2f}x "
              "(target: at least 2x)."]
  return "\n".join(lines)
