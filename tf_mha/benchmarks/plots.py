"""PNG plots of one benchmark run (`tf_mha_benchmark --plots=DIR`).

Each function takes what the run measured and writes one figure:
`timing` (milliseconds per call against T), `memory` (peak RSS against T),
`packing` (real tokens/s, packed against padded) and `generation` (decode
tokens/s per runtime). matplotlib (the `bench` extra) is imported when a plot
is drawn, so the benchmark's tables need none of it.
"""

import os

TIMING, MEMORY, PACKING, GENERATION = (
    "time_vs_length.png", "memory_vs_length.png", "packed_vs_padded.png",
    "generation_tokens_per_second.png")


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  return pyplot


def _save(fig, path):
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  _pyplot().close(fig)
  return path


def _length_axes(ax, ylabel, title):
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("sequence length T")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)


# How the implementations appear in the plots: label, line style.
_STYLE = {"tf_mha": ("tf_mha", "-o"), "tf_keras": ("tf_keras", "-s"),
          "keras3": ("Keras 3", "-^"), "tf_mha_keras3": ("tf_mha.keras3", "--x")}


def _style(impl):
  return _STYLE.get(impl, (impl, "-o"))


def timing(rows, implementations, path):
  """`rows`: `[(point, {implementation: seconds})]` of the timing table; one
  panel per pass (forward, forward + backward), a line per implementation and
  jit setting."""
  fig, axes = _pyplot().subplots(1, 2, figsize=(11, 4))
  for ax, backward in zip(axes, (False, True)):
    for impl in implementations:
      label, style = _style(impl)
      for jit in (True, False):
        points = sorted((p.seq_len, t[impl] * 1e3) for p, t in rows
                        if p.backward == backward and p.jit == jit and impl in t)
        if points:
          ax.plot(*zip(*points), style if jit else style.replace("-", ":", 1),
                  label=f"{label}{' (jit)' if jit else ''}")
    _length_axes(ax, "ms per call (median)",
                 "forward + backward" if backward else "forward")
  plotted = [ax for ax in axes if ax.get_lines()]
  if plotted:  # nothing to plot when only the matmul ceiling ran
    plotted[0].legend(fontsize=7)
  return _save(fig, path)


def memory(points, path):
  """`points`: `[(T, pass, implementation, peak RSS bytes or None)]`; a panel
  per pass, a line per implementation; points that did not complete are left
  out (and say so in the legend)."""
  passes = sorted({p for _, p, _, _ in points})
  fig, axes = _pyplot().subplots(1, len(passes), figsize=(5.5 * len(passes), 4),
                                 squeeze=False)
  for ax, passed in zip(axes[0], passes):
    for impl in dict.fromkeys(i for _, _, i, _ in points):
      mine = [(t, rss) for t, p, i, rss in points if p == passed and i == impl]
      done = sorted((t, rss / 2**30) for t, rss in mine if rss is not None)
      failed = len(mine) - len(done)
      label, style = _style(impl)
      if done:
        ax.plot(*zip(*done), style, label=label + (f" ({failed} did not complete)"
                                                   if failed else ""))
    _length_axes(ax, "peak RSS, GiB (B=1, causal, jit)",
                 {"fwd": "forward", "fwd+bwd": "forward + backward"}.get(passed, passed))
    ax.legend(fontsize=7)
  return _save(fig, path)


def _bars(names, values, xlabel, title, path):
  fig, ax = _pyplot().subplots(figsize=(8, 0.55 * len(names) + 1.4))
  bars = ax.barh(names, values, color="tab:blue")
  ax.bar_label(bars, [f"{v:,.0f}" for v in values], fontsize=8, padding=3)
  ax.invert_yaxis()
  ax.set_xlabel(xlabel)
  ax.set_title(title)
  ax.set_xlim(0, max(values) * 1.18)
  return _save(fig, path)


def packing(training, path):
  """`training`: `{implementation: (real tokens/s, seconds, real tokens)}`."""
  return _bars(list(training), [rate for rate, _, _ in training.values()],
               "real (non-padding) tokens/s",
               "Encoder training step: packed against padded", path)


def generation(runtimes, path):
  """`runtimes`: `{runtime: decode tokens/s}`."""
  return _bars(list(runtimes), list(runtimes.values()), "decode tokens/s (B=1)",
               "Generation: cached decoding per runtime", path)


def write(directory, timing_rows=(), implementations=(), memory_points=(),
          packing_training=None, generation_runtimes=None):
  """Writes the plots of whatever was measured into `directory`; returns
  their paths."""
  os.makedirs(directory, exist_ok=True)
  path = lambda name: os.path.join(directory, name)
  written = []
  if timing_rows:
    written.append(timing(timing_rows, implementations, path(TIMING)))
  if memory_points:
    written.append(memory(memory_points, path(MEMORY)))
  if packing_training:
    written.append(packing(packing_training, path(PACKING)))
  if generation_runtimes:
    written.append(generation(generation_runtimes, path(GENERATION)))
  return written
