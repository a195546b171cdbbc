"""`tools/benchmark.py --gemma3_270m`: Gemma 3 at its real size, from a
KerasHub preset to TF Serving's `generate` and to LiteRT-LM.

A `Gemma3Backbone` with Gemma 3 270M's configuration (`CONFIG`: 18 layers,
D=640, 4 query heads and 1 key/value head of 256, F=2048, vocabulary
262,144, a sliding window of 512 on five layers of six; random weights,
nothing downloaded), saved as a preset, then:
  * KerasHub: `Gemma3CausalLM.generate` compiled, greedy, on TensorFlow;
  * tf_mha: `tf_mha_export --keras_hub_preset`'s SavedModel `generate`;
  * LiteRT-LM: `tf_mha_convert_litertlm` (float32, dynamic-range int8), each
    conversion in a process of its own (its time and peak memory), then the
    file in LiteRT-LM (prefill and decode tokens/s, time to first token).
The dynamic-range decode is set against the time it takes to read the
file's weights once, at the memory bandwidth measured in the same run.
"""

import dataclasses
import os
import subprocess
import sys
import tempfile
import time

import tensorflow as tf

from tf_mha.benchmarks import generation
from tf_mha.benchmarks import keras_hub as hub_benchmark
from tf_mha.benchmarks import memory
from tf_mha.export import keras_hub_export
from tf_mha.models import random_presets

CONFIG = dict(num_layers=18, hidden_dim=640, num_query_heads=4,
              num_key_value_heads=1, head_dim=256, intermediate_dim=2048,
              use_sliding_window_attention=True, sliding_window_size=512,
              use_post_ffw_norm=True, use_post_attention_norm=True,
              use_query_key_norm=True)
VOCAB = 262_144


@dataclasses.dataclass
class Conversion:
  quantize: str
  seconds: float
  peak_rss_bytes: int
  file_bytes: int


# Runs the module argv[1] as `python -m` would, with argv[2:], and at exit
# writes its peak memory in bytes to argv[0] (`memory.peak_rss`, whose source
# the script starts with).
_RUN_WITH_PEAK = memory.SOURCE + r"""
import atexit, runpy, sys
peak_file, sys.argv = sys.argv[1], sys.argv[2:]
def write_peak():
  with open(peak_file, "w") as f:
    f.write(str(peak_rss()))
atexit.register(write_peak)
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def convert_in_child(saved_model_dir, output_file, quantize):
  """`tf_mha_convert_litertlm` in a child process: `Conversion` (wall time,
  the child's peak memory, the file's size)."""
  peak_file = output_file + ".peak"
  start = time.perf_counter()
  child = subprocess.run(
      [sys.executable, "-c", _RUN_WITH_PEAK, peak_file, "tf_mha.cli.convert_litertlm",
       f"--saved_model_dir={saved_model_dir}", f"--output_file={output_file}",
       f"--quantize={quantize}"], capture_output=True, text=True, check=False)
  seconds = time.perf_counter() - start
  if child.returncode:
    raise RuntimeError(f"Converting ({quantize}) failed:\n{child.stdout[-2000:]}"
                       f"\n{child.stderr[-3000:]}")
  with open(peak_file) as f:
    peak = int(f.read())
  os.remove(peak_file)
  return Conversion(quantize, seconds, peak, os.path.getsize(output_file))


def _time_keras_hub(causal_lm, text, prompt, new, repeats):
  """KerasHub's compiled greedy `generate` from the prompt text (Gemma 3's
  generate needs its preprocessor), every slot generated."""
  causal_lm.compile(sampler="greedy")
  generate = lambda count: causal_lm.generate(
      [text], max_length=prompt + count, stop_token_ids=None)
  first = generation.best_seconds(lambda: generate(1), repeats)
  whole = generation.best_seconds(lambda: generate(new), repeats)
  return hub_benchmark.Row("gemma3_270m", "KerasHub generate (TF)", 1,
                           prompt / first, (new - 1) / (whole - first), first)


def run(prompt=128, new=128, repeats=2, log=print):
  """`(rows, conversions, bandwidth)` of one run."""
  rows, conversions = [], []
  with tempfile.TemporaryDirectory() as directory:
    log("Building and saving a Gemma 3 270M-shaped preset (random weights)...")
    causal_lm = random_presets.causal_lm("gemma3", vocabulary_size=VOCAB, **CONFIG)
    preset = os.path.join(directory, "gemma3_270m")
    causal_lm.save_to_preset(preset)
    log("Exporting it on tf_mha...")
    start = time.perf_counter()
    export = keras_hub_export.export_preset(
        preset, output_dir=directory, model_name="export",
        max_length=prompt + new)
    export_seconds = time.perf_counter() - start
    loaded = tf.saved_model.load(export.path)
    text = hub_benchmark.prompt_text(loaded, prompt)
    log("Timing KerasHub's generate, then tf_mha's...")
    rows.append(_time_keras_hub(causal_lm, text, prompt, new, repeats))
    del causal_lm
    rows.append(hub_benchmark.time_saved_model(loaded, "gemma3_270m", text, 1,
                                               new, repeats))
    del loaded
    for quantize in ("none", "dynamic_range"):
      log(f"Converting to LiteRT-LM ({quantize}) and running it...")
      path = os.path.join(directory, f"{quantize}.litertlm")
      conversions.append(convert_in_child(export.path, path, quantize))
      figures = generation.run_litertlm_file(path, text, new, repeats)
      rows.append(hub_benchmark.Row(
          "gemma3_270m", f"LiteRT-LM, {'float32' if quantize == 'none' else quantize}",
          1, figures["prefill"], figures["decode"], figures["first"]))
  return rows, conversions, generation.memory_bandwidth(), export_seconds


def table(rows, conversions, bandwidth, export_seconds, prompt=128, new=128):
  """Markdown: the runtimes, the conversions, and the dynamic-range decode
  against one read of its file at the measured bandwidth."""
  keras = next(r for r in rows if r.runtime.startswith("KerasHub"))
  lines = [f"Gemma 3 270M's shape (18 layers, D=640, 4/1 heads of 256, F=2048, "
           f"V={VOCAB:,}, window 512; random weights), prompt {prompt}, {new} "
           f"new tokens, batch 1; export {export_seconds:.0f} s:", "",
           "| runtime | prefill tok/s | decode tok/s | first token | "
           "decode vs KerasHub |", "|---|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r.runtime} | {r.prefill_tokens_per_second:,.0f} | "
                 f"{r.decode_tokens_per_second:,.1f} | "
                 f"{r.time_to_first_token * 1000:,.0f} ms | "
                 f"{r.decode_tokens_per_second / keras.decode_tokens_per_second:.2f}x |")
  lines += ["", "| conversion | time | peak memory | file |", "|---|---:|---:|---:|"]
  for c in conversions:
    lines.append(f"| {c.quantize} | {c.seconds:.0f} s | "
                 f"{c.peak_rss_bytes / 2**30:.1f} GiB | {c.file_bytes / 2**20:,.0f} MB |")
  dynamic = next(r for r in rows if r.runtime.endswith("dynamic_range"))
  size = next(c.file_bytes for c in conversions if c.quantize == "dynamic_range")
  read = size / bandwidth
  step = 1 / dynamic.decode_tokens_per_second
  lines += ["", f"Memory bandwidth {bandwidth / 1e9:.1f} GB/s (this run): reading "
            f"the dynamic-range file once takes {read * 1000:.1f} ms; a LiteRT-LM "
            f"decode step takes {step * 1000:.1f} ms, {step / read:.2f}x that."]
  return "\n".join(lines)
