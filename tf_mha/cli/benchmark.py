"""Benchmark tf_mha against tf_keras and Keras 3 MultiHeadAttention.

Installed as `tf_mha_benchmark`; from a checkout, `python -m tools.benchmark`.
TensorFlow's own logs are hidden unless --verbosity is given.

  python -m tools.benchmark                       # the default grid
  python -m tools.benchmark --seq_lens=512 --passes=fwd,fwd+bwd --jit=true
  python -m tools.benchmark --seq_lens=512 --impls=tf_mha,tf_keras,keras3,matmuls_only  # + ceiling
  python -m tools.benchmark --memory_seq_lens=8192,16384   # peak RSS, one process each

Writes results/benchmark.md and results/benchmark.png (--plots=DIR: the
plots of every part that ran).
"""

import json
import os
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

from tf_mha.benchmarks import plots
from tf_mha.cli import _console

_SEQ_LENS = flags.DEFINE_list("seq_lens", ["128", "512", "2048"],
                              "Sequence lengths for the timing table.")
_PASSES = flags.DEFINE_list("passes", ["fwd", "fwd+bwd"], "fwd and/or fwd+bwd.")
_JIT = flags.DEFINE_list("jit", ["true", "false"], "jit_compile settings to time.")
_MASKS = flags.DEFINE_list(
    "masks", ["causal", "padding"],
    "Self-attention masks to time: causal (a decoder's), padding (BERT's "
    "[B, T, S] mask of padded rows, not causal).")
_DECODE = flags.DEFINE_bool(
    "decode", False, "Also time cached decoding: a one-layer decode step at "
    "positions 256 and 4095 of a 4096-slot cache (and 256 of 256), and a "
    "2048-token prefill, for tf_mha's MultiHeadAttention and "
    "GroupedQueryAttention (K=2; tensor and variable caches) against "
    "KerasHub's CachedMultiHeadAttention (needs keras-hub).")
_PACKING = flags.DEFINE_bool(
    "packing", False, "Also time packed sequences: an encoder's training "
    "step (4 blocks, D=512, 8 heads, T=512) in real tokens/s, tf_mha packed "
    "with segment ids and with a dense block-diagonal mask against tf_mha, "
    "tf_keras and Keras 3 padded; and the op on four 128-token examples, "
    "packed or as rows.")
_GENERATION = flags.DEFINE_bool(
    "generation", False, "Also time generation: a decoder of D=512, 8 query "
    "and 2 key/value heads of 64, 4 blocks (random weights), B=1, a 128-token "
    "prompt then 256 new tokens, cached (prefill + decode) against uncached "
    "(recomputing the prefix), in TensorFlow with XLA and in LiteRT (float32 "
    "and dynamic-range int8), and KerasHub's LlamaCausalLM.generate of the "
    "same sizes.")
_KERAS_HUB = flags.DEFINE_bool(
    "keras_hub", False, "Also time KerasHub's Llama and Qwen2 (D=512, 4 "
    "blocks, 8/2 heads of 64, F=1536, V=8192, random weights; a 128-token "
    "prompt then 256 new tokens, batch 1 and 8): KerasHub's compiled "
    "generate against the same weights in tf_mha's SavedModel generate "
    "(tf_mha_export --keras_hub_preset) and in LiteRT-LM (float32, "
    "dynamic-range).")
_GEMMA3_270M = flags.DEFINE_bool(
    "gemma3_270m", False, "Also run Gemma 3 at its real size: a Gemma3Backbone "
    "of 270M's configuration (random weights), exported on tf_mha, converted "
    "to LiteRT-LM (float32, dynamic-range; time, peak memory, size) and run "
    "(prefill and decode tokens/s, first token), beside KerasHub's compiled "
    "generate and tf_mha's SavedModel generate; the dynamic-range decode "
    "against reading its weights once at the measured memory bandwidth.")
_BERT = flags.DEFINE_bool(
    "bert", False, "Also time a training step of Model Garden's BertEncoderV2 "
    "(4 layers, D=512, 8 heads, T=512, B=4, padding mask, jit) on tf_mha's "
    "attention against tf_keras' (needs tf-models-official).")
_BATCH = flags.DEFINE_integer("batch", 4, "Batch size B.")
_REPEATS = flags.DEFINE_integer(
    "repeats", 5, "Least timed calls per point (median); short points get more, "
    "to about a second per implementation.")
_IMPLS = flags.DEFINE_list(
    "impls", ["tf_mha", "tf_keras", "keras3", "tf_mha_keras3"],
    "Implementations to compare (tf_mha_keras3: tf_mha.keras3's Keras 3 "
    "layer). Add matmuls_only for a last column: not a "
    "peer, tf_mha's matmuls alone (no softmax), the ceiling for its forward "
    "% matmul peak.")
_MEMORY_SEQ_LENS = flags.DEFINE_list(
    "memory_seq_lens", [], "Lengths for peak-RSS points (B=1, causal forward, "
    "jit), each implementation in its own subprocess.")
_MEMORY_IMPLS = flags.DEFINE_list("memory_impls", ["tf_mha", "keras3"],
                                  "Implementations for the peak-RSS points.")
_MEMORY_PASSES = flags.DEFINE_list(
    "memory_passes", ["fwd"], "fwd and/or fwd+bwd (a training step's "
    "gradients) for the peak-RSS points.")
_MEMORY_WINDOW = flags.DEFINE_integer(
    "memory_sliding_window", None, "A `sliding_window` for the peak-RSS "
    "points (tf_mha and Keras 3 have one; tf_keras does not).")
_RESULTS_DIR = flags.DEFINE_string("results_dir", "results", "Where to write outputs.")
_PLOTS = flags.DEFINE_string(
    "plots", None, "Also write PNG plots of this run here: time and peak "
    "memory against sequence length (tf_mha, tf_keras, Keras 3), packed "
    "against padded real tokens/s (--packing), decode tokens/s per runtime "
    "(--generation).")
_SINGLE = flags.DEFINE_string(
    "single_point", None,
    "Internal: 'impl,T,backward,window' run in this process.")


def _check_results_dir(path, flag="results_dir"):
  """Makes `path` and writes a probe there, or a UsageError naming --`flag`
  (before minutes of timing; permission bits say nothing for root)."""
  try:
    os.makedirs(path, exist_ok=True)
    os.remove(tempfile.mkstemp(prefix=".probe-", dir=path)[1])
  except OSError as e:
    raise app.UsageError(f"--{flag}={path!r} cannot be written: "
                         f"{e.strerror}") from e


def _single(spec):
  try:
    impl, t, backward, window = spec.split(",")
    int(t)
  except ValueError as e:
    raise app.UsageError(f"--single_point takes 'impl,T,backward,window'; "
                         f"got {spec!r}") from e
  from tf_mha.benchmarks import attention as lib  # pylint: disable=g-import-not-at-top
  point = lib.Point(int(t), batch=1, backward=backward == "1",
                    sliding_window=int(window) if window else None)
  seconds, rss = lib.peak_rss_point(impl, point)
  print(json.dumps({"seconds": seconds, "peak_rss": rss}))


def _memory_point(impl, t, backward, window):
  """Runs one point in a fresh process; None when it fails (e.g. OOM)."""
  cmd = [sys.executable, "-m", "tf_mha.cli.benchmark",
         f"--single_point={impl},{t},{int(backward)},{window or ''}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  return json.loads(lines[-1]) if proc.returncode == 0 and lines else None


def _positive_ints(flag):
  """The flag's list of positive integers, or a UsageError naming it."""
  try:
    values = [int(v) for v in flag.value]
  except ValueError:
    values = []
  if len(values) != len(flag.value) or any(v < 1 for v in values):
    raise app.UsageError(f"--{flag.name} takes positive integers, got "
                         f"{','.join(flag.value)!r}")
  return values


def _choices(flag, allowed, values=None):
  """`values` (default: the flag's) if all are `allowed`, else a UsageError."""
  values = flag.value if values is None else values
  bad = [v for v in values if v not in allowed]
  if bad:
    raise app.UsageError(f"--{flag.name} takes {', '.join(allowed)}; got {bad}")
  return values


def _time(lib, point):
  """Times one point for every implementation asked for, with progress."""
  print(f"T={point.seq_len} {'padding' if point.padding else 'causal'} "
        f"{'fwd+bwd' if point.backward else 'fwd'} jit={point.jit}:", flush=True)
  # The matmul ceiling is a forward one: differentiated by autodiff, its
  # chain gets transposes that tf_mha's closed-form gradient avoids.
  impls = [i for i in _IMPLS.value
           if not ((point.backward or point.padding) and i == lib.MATMULS_ONLY)]
  times = lib.time_point(point, impls, _REPEATS.value,
                         log=lambda s: print(s, flush=True))
  print("  " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in times.items()),
        flush=True)
  return times


def _decode_lines():
  """The decode and prefill comparison, as Markdown lines."""
  from tf_mha.benchmarks import decode  # pylint: disable=g-import-not-at-top
  print("Cached decoding (B=1, D=512, 8 query heads of 64, jit):", flush=True)
  points = [("step at 256 of 4096 slots", 4096, 1, 256),
            ("step at 4095 of 4096 slots", 4096, 1, 4095),
            ("step at 256 of 256 slots", 256, 1, 255),
            ("prefill 2048 tokens, 4096 slots", 4096, 2048, 0)]
  try:
    rows = decode.time_decode(points, repeats=max(_REPEATS.value, 20),
                              log=lambda s: print(s, flush=True))
  except ImportError as e:
    raise app.UsageError(f"--decode needs keras-hub: {e}") from e
  cache_kib = {impl: 2 * 4096 * heads * 64 * 4 / 1024
               for impl, (heads, _) in decode.DECODE_IMPLS.items()}
  return ["", decode.decode_table(rows), "",
          "Cache per layer at 4096 slots: " + ", ".join(
              f"{impl} {kib:.0f} KiB" for impl, kib in cache_kib.items())]


def _bert_lines(lib):
  """The BertEncoderV2 training-step comparison, as Markdown lines."""
  print("BertEncoderV2 training step (Model Garden) on tf_mha and tf_keras:",
        flush=True)
  try:
    times, difference = lib.bert_training_steps(
        repeats=_REPEATS.value, log=lambda s: print(s, flush=True))
  except ImportError as e:
    raise app.UsageError(f"--bert needs tf-models-official: {e}") from e
  return ["", "| Model Garden BertEncoderV2 training step (4 layers, D=512, "
          "8 heads, T=512, B=4, padding mask, jit) | tf_mha (ms) | tf_keras (ms) "
          "| vs tf_keras | max output difference, same weights |",
          "|---|---|---|---|---|",
          f"| median of {_REPEATS.value} interleaved steps | "
          f"{times['tf_mha'] * 1e3:.1f} | {times['tf_keras'] * 1e3:.1f} | "
          f"{times['tf_keras'] / times['tf_mha']:.2f}x | {difference:.2g} |"]


def _checked_flags():
  """The flags' values, checked before TensorFlow loads (the implementation
  names: `_check_implementations`): `(seq_lens, memory_seq_lens, jits)`."""
  seq_lens = _positive_ints(_SEQ_LENS)
  memory_seq_lens = _positive_ints(_MEMORY_SEQ_LENS)
  for flag in (_PASSES, _MEMORY_PASSES):
    _choices(flag, ("fwd", "fwd+bwd"))
  _choices(_MASKS, ("causal", "padding"))
  jits = [j == "true" for j in _choices(
      _JIT, ("true", "false"), [j.lower() for j in _JIT.value])]
  _console.check_positive(_BATCH, _REPEATS, _MEMORY_WINDOW)
  if _MEMORY_WINDOW.value is not None and "tf_keras" in _MEMORY_IMPLS.value:
    raise app.UsageError("--memory_sliding_window: tf_keras has no "
                         "sliding_window; leave it out of --memory_impls")
  _check_results_dir(_RESULTS_DIR.value)
  if _PLOTS.value:
    _check_results_dir(_PLOTS.value, "plots")
  return seq_lens, memory_seq_lens, jits


def _check_implementations(lib):
  """A UsageError naming --impls or --memory_impls if either names an
  implementation `lib` (the attention benchmark, which loads TensorFlow)
  does not have."""
  _choices(_IMPLS, lib.IMPLEMENTATIONS + (lib.MATMULS_ONLY,))
  _choices(_MEMORY_IMPLS, lib.IMPLEMENTATIONS)


def _memory_points(memory_seq_lens):
  """Peak-memory points, each in a fresh process: `[(T, pass,
  implementation, {"seconds", "peak_rss"} or None)]`."""
  window = _MEMORY_WINDOW.value
  points = []
  for t in memory_seq_lens:
    for passes in _MEMORY_PASSES.value:
      for impl in _MEMORY_IMPLS.value:
        band = "" if window is None else f" sliding_window={window}"
        print(f"Peak memory: {impl} T={t} causal{band} {passes} (own process)...",
              flush=True)
        result = _memory_point(impl, t, passes == "fwd+bwd", window)
        print(f"  {_memory_text(result)}", flush=True)
        points.append((t, passes, impl, result))
  return points


def _memory_text(result):
  return ("did not complete" if result is None else
          f"{result['seconds']:.2f} s, {result['peak_rss'] / 2**30:.2f} GiB peak RSS")


def _memory_lines(points):
  """The peak-memory points as Markdown rows."""
  if not points:
    return []
  window = _MEMORY_WINDOW.value
  band = "" if window is None else f" sliding_window={window}"
  return ["", "| T | pass | implementation | B=1, causal, jit: time, peak RSS |",
          "|---|---|---|---|",
          *(f"| {t}{band} | {passes} | {impl} | {_memory_text(result)} |"
            for t, passes, impl, result in points)]


def _timing_rows(lib, seq_lens, jits):
  """`[(point, {implementation: seconds})]` for the timing table."""
  rows = []
  for t in seq_lens:
    for padding in (m == "padding" for m in _MASKS.value):
      for backward in (p == "fwd+bwd" for p in _PASSES.value):
        for jit in jits:
          point = lib.Point(t, batch=_BATCH.value, backward=backward, jit=jit,
                            causal=not padding, padding=padding)
          rows.append((point, _time(lib, point)))
  return rows


def _packing_lines():
  from tf_mha.benchmarks import packing  # pylint: disable=g-import-not-at-top
  print("Packed sequences (encoder training step, then the op):", flush=True)
  training, padding = packing.time_training(
      repeats=max(3, min(_REPEATS.value, 5)), log=lambda s: print(s, flush=True))
  return ["", packing.table(training, padding, packing.time_op())], training


def _generation_lines():
  from tf_mha.benchmarks import generation  # pylint: disable=g-import-not-at-top
  rows, runtime_rows, bandwidth = generation.run(
      repeats=max(3, min(_REPEATS.value, 5)), log=lambda s: print(s, flush=True))
  runtimes = {r.name: r.cached_tokens_per_second for r in rows}
  runtimes.update((r.name, r.decode_tokens_per_second) for r in runtime_rows)
  return ["", generation.table(rows),
          generation.runtime_table(rows, runtime_rows, bandwidth)], runtimes


def _keras_hub_lines():
  from tf_mha.benchmarks import keras_hub  # pylint: disable=g-import-not-at-top
  rows = keras_hub.run(repeats=max(3, min(_REPEATS.value, 5)),
                       log=lambda s: print(s, flush=True))
  return ["", keras_hub.table(rows)]


def _gemma3_lines():
  from tf_mha.benchmarks import gemma3  # pylint: disable=g-import-not-at-top
  rows, conversions, bandwidth, export_seconds = gemma3.run(
      log=lambda s: print(s, flush=True))
  return ["", gemma3.table(rows, conversions, bandwidth, export_seconds)]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _SINGLE.value:
    _single(_SINGLE.value)
    return 0
  seq_lens, memory_seq_lens, jits = _checked_flags()
  from tf_mha.benchmarks import attention as lib  # pylint: disable=g-import-not-at-top
  _check_implementations(lib)
  print("Measuring this machine's matmul peak...", flush=True)
  peak = lib.matmul_peak()
  print(f"  {peak / 1e9:.0f} GFLOP/s (float32, XLA, 2048^3)", flush=True)
  # Peak-memory points first, each in a fresh process forked while this one
  # is still small (a child needs its own memory next to its parent's).
  memory = _memory_points(memory_seq_lens)
  rows = _timing_rows(lib, seq_lens, jits)
  table = lib.markdown_table(rows, peak) if rows else ""
  bert = _bert_lines(lib) if _BERT.value else []
  decode = _decode_lines() if _DECODE.value else []
  generation, runtimes = _generation_lines() if _GENERATION.value else ([], None)
  packed, training = _packing_lines() if _PACKING.value else ([], None)
  hub = _keras_hub_lines() if _KERAS_HUB.value else []
  hub += _gemma3_lines() if _GEMMA3_270M.value else []
  report = [f"Matmul peak: {peak / 1e9:.0f} GFLOP/s. B={_BATCH.value}, D=512, "
            "N=8, H=64, self-attention (causal, or BERT's padding mask); "
            "median of interleaved calls (at "
            f"least {_REPEATS.value}, about 1 s per implementation for short "
            "points). Ratios are peer time / tf_mha time.",
            "", table, *bert, *decode, *generation, *hub, *packed,
            *_memory_lines(memory)]
  md_path = os.path.join(_RESULTS_DIR.value, "benchmark.md")
  with open(md_path, "w") as f:
    f.write("\n".join(report) + "\n")
  print("\n".join(report))
  if rows:
    plots.timing(rows, lib.IMPLEMENTATIONS,
                 os.path.join(_RESULTS_DIR.value, "benchmark.png"))
  if _PLOTS.value:
    for path in plots.write(
        _PLOTS.value, timing_rows=rows, implementations=lib.IMPLEMENTATIONS,
        memory_points=[(t, p, i, r and r["peak_rss"]) for t, p, i, r in memory],
        packing_training=training, generation_runtimes=runtimes):
      print(f"Wrote {path}")
  print(f"Wrote {md_path}")
  return 0


def run():
  """Console-script entry point."""
  _console.run(main, __name__)


if __name__ == "__main__":
  run()
