"""`tools/benchmark.py --keras_hub`: KerasHub's own decoders against the same
weights on tf_mha.

A Llama and a Qwen2 of D=512, 4 blocks, 8 query and 2 key/value heads of 64,
feed-forward 1536, vocabulary 8192 (random weights, presets made with
`random_presets`), a prompt of 128 tokens and 256 new ones, batch 1 and 8:
  * KerasHub: `CausalLM.generate` compiled, greedy, on TensorFlow, every
    slot generated (no stop token);
  * tf_mha: the SavedModel `tf_mha_export --keras_hub_preset` writes, its
    `generate` signature (strings in and out, one XLA loop);
  * LiteRT-LM: the `.litertlm` files `tf_mha_convert_litertlm` makes of it
    (float32, dynamic-range), batch 1, in a process of their own.
Prefill tokens/s and time to first token come from generating one token;
decode tokens/s from the difference to generating all of them.
"""

import dataclasses
import os
import tempfile

import numpy as np
import tensorflow as tf

from tf_mha.benchmarks import generation
from tf_mha.export import keras_hub_export
from tf_mha.export import litertlm
from tf_mha.models import random_presets

SIZES = dict(num_layers=4, hidden_dim=512, num_query_heads=8,
             num_key_value_heads=2, intermediate_dim=1536)
VOCAB = 8192
FAMILIES = ("llama", "qwen2")


@dataclasses.dataclass
class Row:
  family: str
  runtime: str
  batch: int
  prefill_tokens_per_second: float  # prompt tokens of the whole batch
  decode_tokens_per_second: float  # new tokens of the whole batch
  time_to_first_token: float  # seconds


def prompt_text(loaded, tokens):
  """A prompt text of exactly `tokens` tokens (start token included), by
  the SavedModel's own `tokenize`."""
  count = lambda text: int(loaded.signatures["tokenize"](
      prompt=tf.constant([text]))["num_tokens"][0])
  words = tokens
  text = " ".join(["the"] * words)
  while count(text) != tokens:
    words += tokens - count(text)
    text = " ".join(["the"] * words)
  return text


def _time_keras_hub(causal_lm, family, ids, new, repeats):
  """KerasHub's compiled greedy `generate` on `ids` `[B, P]`: `Row`."""
  def generate(count):
    padded = np.pad(ids, [(0, 0), (0, count)])
    mask = np.pad(np.ones_like(ids, bool), [(0, 0), (0, count)])
    return causal_lm.generate({"token_ids": padded, "padding_mask": mask},
                              stop_token_ids=None)
  first = generation.best_seconds(lambda: generate(1), repeats)
  whole = generation.best_seconds(lambda: generate(new), repeats)
  batch, length = ids.shape
  return Row(family, "KerasHub generate (TF)", batch, batch * length / first,
             batch * (new - 1) / (whole - first), first)


def time_saved_model(loaded, family, text, batch, new, repeats):
  """tf_mha's SavedModel `generate`: `Row` (the batch's rows may end at the
  stop token; decode counts the steps the loop ran)."""
  generate = loaded.signatures["serving_default"]
  prompts = tf.constant([text] * batch)
  call = lambda count: generate(prompt=prompts, max_new_tokens=tf.constant(count))
  first = generation.best_seconds(lambda: call(1), repeats)
  whole = generation.best_seconds(lambda: call(new), repeats)
  steps = min(new, int(np.max(call(new)["num_tokens"])) + 1)
  length = int(loaded.signatures["tokenize"](prompt=prompts[:1])["num_tokens"][0])
  return Row(family, "tf_mha SavedModel generate (TF)", batch,
             batch * length / first, batch * (steps - 1) / (whole - first), first)


def time_family(family, directory, prompt=128, new=256, batches=(1, 8),
                repeats=3, log=print):
  """Every row of one family."""
  os.environ.setdefault("KERAS_BACKEND", "tensorflow")
  causal_lm = random_presets.causal_lm(family, vocabulary_size=VOCAB, **SIZES)
  preset = os.path.join(directory, family)
  causal_lm.save_to_preset(preset)
  log(f"Exporting the {family} preset on tf_mha...")
  export = keras_hub_export.export_preset(
      preset, output_dir=directory, model_name=f"{family}_export",
      max_length=prompt + new)
  loaded = tf.saved_model.load(export.path)
  text = prompt_text(loaded, prompt)
  ids = np.asarray(causal_lm.preprocessor.generate_preprocess(
      [text], sequence_length=prompt)["token_ids"])
  causal_lm.preprocessor = None
  causal_lm.compile(sampler="greedy")
  rows = []
  for batch in batches:
    log(f"Timing {family} at batch {batch}: KerasHub, then tf_mha...")
    rows.append(_time_keras_hub(causal_lm, family, np.repeat(ids, batch, 0),
                                new, repeats))
    rows.append(time_saved_model(loaded, family, text, batch, new, repeats))
  for quantize in ("none", "dynamic_range"):
    log(f"Converting {family} to LiteRT-LM ({quantize}) and timing it...")
    path = os.path.join(directory, f"{family}_{quantize}.litertlm")
    litertlm.convert(export.path, path, quantize=quantize, prompt=text)
    figures = generation.run_litertlm_file(path, text, new, repeats)
    rows.append(Row(family, f"LiteRT-LM, {'float32' if quantize == 'none' else quantize}",
                    1, figures["prefill"], figures["decode"], figures["first"]))
  return rows


def run(prompt=128, new=256, batches=(1, 8), repeats=3, log=print):
  """All rows, both families, in one run."""
  with tempfile.TemporaryDirectory() as directory:
    return [row for family in FAMILIES
            for row in time_family(family, directory, prompt, new, batches,
                                   repeats, log)]


def table(rows, prompt=128, new=256):
  """Markdown: each row, and tf_mha's decode speed over KerasHub's."""
  keras_hub = {(r.family, r.batch): r.decode_tokens_per_second for r in rows
               if r.runtime.startswith("KerasHub")}
  s = SIZES
  lines = [f"KerasHub's decoders against the same weights on tf_mha "
           f"(D={s['hidden_dim']}, {s['num_layers']} blocks, "
           f"{s['num_query_heads']}/{s['num_key_value_heads']} heads of "
           f"{s['hidden_dim'] // s['num_query_heads']}, "
           f"F={s['intermediate_dim']}, V={VOCAB}; prompt {prompt}, {new} new "
           "tokens; tokens/s of the whole batch):", "",
           "| model | runtime | batch | prefill tok/s | decode tok/s | "
           "first token | decode vs KerasHub |",
           "|---|---|---:|---:|---:|---:|---:|"]
  for r in rows:
    ratio = r.decode_tokens_per_second / keras_hub[(r.family, r.batch)]
    lines.append(f"| {r.family} | {r.runtime} | {r.batch} | "
                 f"{r.prefill_tokens_per_second:,.0f} | "
                 f"{r.decode_tokens_per_second:,.0f} | "
                 f"{r.time_to_first_token * 1000:,.0f} ms | {ratio:.2f}x |")
  return "\n".join(lines)
