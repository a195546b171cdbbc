"""Benchmarks tf_mha against tf_keras and Keras 3 MultiHeadAttention.

Peers run in the same process, interleaved (one call of each in turn), and
each point reports the median of several calls. Peak memory needs a fresh
process per point (`peak_rss_point`). `tools/benchmark.py` is the CLI.
"""

import dataclasses
import math
import statistics
import time

import tensorflow as tf
import tf_keras

from tf_mha.benchmarks import memory
from tf_mha.ops import chunked

IMPLEMENTATIONS = ("tf_mha", "tf_keras", "keras3", "tf_mha_keras3")
# Not a peer: tf_mha's matmuls alone, the ceiling for its `% matmul peak`.
MATMULS_ONLY = "matmuls_only"


@dataclasses.dataclass(frozen=True)
class Point:
  seq_len: int
  batch: int = 4
  model_dim: int = 512
  num_heads: int = 8
  key_dim: int = 64
  causal: bool = True
  padding: bool = False  # a [B, T, S] padding mask (BERT's), not causal
  backward: bool = False
  jit: bool = True
  sliding_window: int = None  # tf_mha and Keras 3 only

  def attention_flops(self):
    """Full (non-causal) attention FLOPs: QK^T and PV, times 3 with backward."""
    t = self.seq_len
    flops = 4 * self.batch * self.num_heads * t * t * self.key_dim
    return flops * (3 if self.backward else 1)

  def projection_flops(self):
    flops = 8 * self.batch * self.seq_len * self.model_dim * self.num_heads * self.key_dim
    return flops * (3 if self.backward else 1)


def make_layer(impl):
  if impl == "tf_mha":
    import tf_mha
    return tf_mha.MultiHeadAttention
  if impl == "tf_keras":
    import tf_keras
    return tf_keras.layers.MultiHeadAttention
  if impl == "keras3":
    import keras
    return keras.layers.MultiHeadAttention
  if impl == "tf_mha_keras3":  # Keras 3's layer on tf_mha's op
    from tf_mha import keras3  # pylint: disable=g-import-not-at-top
    return keras3.MultiHeadAttention
  if impl == MATMULS_ONLY:
    return MatmulsOnly
  raise ValueError(f"`impl` must be one of {IMPLEMENTATIONS + (MATMULS_ONLY,)}. "
                   f"Received: impl={impl!r}")


class MatmulsOnly(tf_keras.layers.Layer):
  """The matmuls of tf_mha's plain path and nothing else: a timing ceiling.

  The four projections, and per causal query chunk (as `ops` cuts them) the
  `QK^T` and `PV` products over the keys that chunk reads; no bias, scale,
  mask, softmax or dropout. No forward pass built from the same XLA
  matmuls can be faster, so its `% matmul peak` bounds tf_mha's forward.
  (Not its backward: autodiff of this chain transposes more than tf_mha's
  closed-form gradient does.)
  """

  def __init__(self, num_heads, key_dim, sliding_window=None, **kwargs):
    super().__init__(**kwargs)
    self._heads, self._size, self._window = num_heads, key_dim, sliding_window

  def build(self, input_shape):
    d, heads = input_shape[-1], [self._heads, self._size]  # D; [N, H]
    shapes = {"query": [d, *heads], "key": [d, *heads], "value": [d, *heads],
              "output": [*heads, d]}
    self._kernels = {name: self.add_weight(name=name, shape=shape)
                     for name, shape in shapes.items()}
    super().build(input_shape)

  def call(self, query, value, use_causal_mask=False):
    q, k, v = (tf.einsum("BTD,DNH->BTNH", x, self._kernels[name])
               for x, name in ((query, "query"), (value, "key"),
                               (value, "value")))
    chunks = (use_causal_mask and chunked.causal_chunks(q, k, None, self._window)
              or [(0, q.shape[1], 0, k.shape[1])])
    q, k, v = (tf.transpose(x, [0, 2, 1, 3]) for x in (q, k, v))  # [B, N, *, H]
    outs = [tf.einsum("BNTS,BNSH->BNTH",
                      tf.einsum("BNTH,BNSH->BNTS", q[:, :, t0:t1], k[:, :, s0:s1]),
                      v[:, :, s0:s1])
            for t0, t1, s0, s1 in chunks]
    return tf.einsum("BNTH,NHD->BTD", tf.concat(outs, axis=2),
                     self._kernels["output"])


def make_step(impl, point, seed=0):
  """A compiled step for one implementation and its input."""
  window = {} if point.sliding_window is None else {
      "sliding_window": point.sliding_window}
  layer = make_layer(impl)(num_heads=point.num_heads, key_dim=point.key_dim,
                           **window)
  x = tf.random.stateless_normal([point.batch, point.seq_len, point.model_dim],
                                 seed=[seed, 1])
  layer(x[:, :8], x[:, :8])  # build
  variables = list(layer.trainable_variables)
  mask = padding_mask(point.batch, point.seq_len) if point.padding else None

  def forward(inp):
    if mask is not None:
      return layer(inp, inp, attention_mask=mask)
    return layer(inp, inp, use_causal_mask=point.causal)

  def forward_backward(inp):
    with tf.GradientTape() as tape:
      tape.watch(inp)
      loss = tf.reduce_sum(tf.square(forward(inp)))
    return tape.gradient(loss, [inp] + variables)

  fn = tf.function(forward_backward if point.backward else forward,
                   jit_compile=point.jit)
  return fn, x


def padding_mask(batch, length, seed=0):
  """BERT's `[B, T, S]` self-attention mask for rows padded at the end: row
  `b` has `length - pad_b` real tokens, `pad_b` up to an eighth of `T`."""
  pads = tf.random.stateless_uniform([batch], [seed, 2], 0, length // 8 + 1,
                                     dtype=tf.int32)
  keys = tf.sequence_mask(length - pads, length)  # [B, S]
  return tf.tile(keys[:, None, :], [1, length, 1])  # [B, T, S]


def bert_training_steps(batch=4, length=512, layers=4, hidden=512, heads=8,
                        repeats=5, log=print):
  """Model Garden's `BertEncoderV2`, built on tf_keras' attention and on
  tf_mha's (`patch_tf_keras`) with the same weights: a jit-compiled training
  step (forward, backward, Adam) of each, interleaved.

  Returns:
    `({"tf_mha": s, "tf_keras": s}, max |output difference|)`.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tf_mha  # pylint: disable=g-import-not-at-top
  with tf_mha.patch_tf_keras():  # Model Garden's own subclasses on tf_mha
    from official.nlp.modeling import networks  # pylint: disable=g-import-not-at-top

  def build():
    return networks.BertEncoderV2(
        vocab_size=1000, hidden_size=hidden, num_layers=layers,
        num_attention_heads=heads, inner_dim=4 * hidden,
        max_sequence_length=length)

  ids = tf.random.stateless_uniform([batch, length], [0, 3], 1, 1000, tf.int32)
  mask = tf.cast(padding_mask(batch, length)[:, 0], tf.int32)  # [B, S]
  inputs = dict(input_word_ids=ids, input_mask=mask,
                input_type_ids=tf.zeros_like(ids))
  tf_keras.utils.set_random_seed(0)
  encoders = {"tf_keras": build()}
  with tf_mha.patch_tf_keras():  # the blocks build their attention on call
    encoders["tf_mha"] = build()
    encoders["tf_mha"](inputs)
  encoders["tf_keras"](inputs)
  encoders["tf_mha"].set_weights(encoders["tf_keras"].get_weights())
  outputs = [encoders[k](inputs)["sequence_output"].numpy()
             for k in ("tf_keras", "tf_mha")]
  difference = float(np.max(np.abs(outputs[0] - outputs[1])))
  steps = {}
  for name, encoder in encoders.items():
    optimizer = tf_keras.optimizers.Adam(1e-4)

    def step(x, encoder=encoder, optimizer=optimizer):
      with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(encoder(x)["sequence_output"]))
      grads = tape.gradient(loss, encoder.trainable_variables)
      optimizer.apply_gradients(zip(grads, encoder.trainable_variables))
      return loss

    steps[name] = (tf.function(step, jit_compile=True), inputs)
    log(f"  BERT on {name}: compiled and warmed up in {timed(*steps[name]):.1f} s")
  samples = {name: [] for name in steps}
  for _ in range(repeats):
    for name in steps:
      samples[name].append(timed(*steps[name]))
  return {k: statistics.median(v) for k, v in samples.items()}, difference


def timed(fn, x):
  """Seconds for one call of `fn(x)`, until its result is computed.

  With synchronous eager execution (TensorFlow's default) the call returns
  only once its outputs are ready, so nothing else is timed: fetching a value
  from the result would add ~0.6 ms of extra eager ops to every call. Under
  asynchronous execution the result is fetched to wait for it.
  """
  start = time.perf_counter()
  result = fn(x)
  if not tf.config.experimental.get_synchronous_execution():
    tf.nest.flatten(result)[0].numpy()
  return time.perf_counter() - start


def time_point(point, impls=IMPLEMENTATIONS, repeats=5, log=print,
               min_seconds=1.0):
  """Median seconds per call for each implementation, interleaved.

  At least `repeats` calls each, more for short calls (up to 200) so that
  every implementation runs for about `min_seconds`: a few-millisecond call
  varies by tens of percent from one call to the next on a busy CPU.
  """
  steps, longest = {}, 0.0
  for impl in impls:
    fn, x = make_step(impl, point)
    log(f"  {impl}: compiled and warmed up in {timed(fn, x):.1f} s")
    longest = max(longest, timed(fn, x))
    steps[impl] = (fn, x)
  calls = min(max(repeats, math.ceil(min_seconds / max(longest, 1e-6))), 200)
  samples = {impl: [] for impl in impls}
  for _ in range(calls):
    for impl in impls:
      samples[impl].append(timed(*steps[impl]))
  return {impl: statistics.median(s) for impl, s in samples.items()}


def matmul_peak(size=2048, repeats=10):
  """This machine's float32 matmul throughput (FLOP/s) under XLA."""
  a = tf.random.stateless_normal([size, size], seed=[1, 2])
  b = tf.random.stateless_normal([size, size], seed=[3, 4])
  fn = tf.function(lambda pair: tf.matmul(*pair), jit_compile=True)
  timed(fn, (a, b))
  return 2 * size ** 3 / min(timed(fn, (a, b)) for _ in range(repeats))


def peak_rss_point(impl, point):
  """Runs one call of `impl` at `point` and returns (seconds, peak RSS bytes).

  Meant for a fresh process (`memory.peak_rss`).
  """
  fn, x = make_step(impl, point)
  first = timed(fn, x)
  return min(first, timed(fn, x)), memory.peak_rss()


def markdown_table(rows, peak):
  """Rows of (point, {impl: seconds}) -> a Markdown table with ratios.

  With `MATMULS_ONLY` timed, a last column gives its `% matmul peak`: the
  ceiling for tf_mha's.
  """
  ceiling = any(MATMULS_ONLY in times for _, times in rows)
  on_keras3 = any("tf_mha_keras3" in times for _, times in rows)
  header = ("| T | mask | pass | jit | tf_mha (ms) | tf_keras (ms) | Keras 3 (ms) | "
            "vs tf_keras | vs Keras 3 | % matmul peak (full-attention FLOPs) |")
  if on_keras3:
    header += " tf_mha.keras3 (ms) | tf_mha.keras3 / tf_mha |"
  if ceiling:
    header += " its matmuls alone: % matmul peak |"
  lines = [header, "|" + "---|" * header[1:].count("|")]
  for point, times in rows:
    flops = point.attention_flops() + point.projection_flops()
    ratio = lambda impl: (f"{times[impl] / times['tf_mha']:.2f}x"
                          if impl in times and "tf_mha" in times else "n/a")
    ms = lambda impl: f"{times[impl] * 1e3:.1f}" if impl in times else "n/a"
    share = lambda impl: (f"{100 * flops / times[impl] / peak:.0f}%"
                          if impl in times else "n/a")
    kind = "padding" if point.padding else "causal" if point.causal else "none"
    line = (f"| {point.seq_len} | {kind} | {'fwd+bwd' if point.backward else 'fwd'} | "
            f"{'yes' if point.jit else 'no'} | {ms('tf_mha')} | {ms('tf_keras')} | "
            f"{ms('keras3')} | {ratio('tf_keras')} | {ratio('keras3')} | "
            f"{share('tf_mha')} |")
    if on_keras3:
      mine = times.get("tf_mha_keras3")
      line += (f" {ms('tf_mha_keras3')} | "
               + (f"{mine / times['tf_mha']:.2f}x |"
                  if mine and "tf_mha" in times else "n/a |"))
    lines.append(line + (f" {share(MATMULS_ONLY)} |" if ceiling else ""))
  return "\n".join(lines)
