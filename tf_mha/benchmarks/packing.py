"""Packed sequences against padding (`tools/benchmark.py --packing`).

An encoder of 4 blocks (D=512, 8 heads of 64, feed-forward 2048, T=512)
takes training steps (forward, backward, jit) on examples whose lengths
follow a Wikipedia-like histogram (generated: log-normal, 16 to 512 tokens,
about half of a padded batch is padding). Reported in real tokens per
second, every implementation interleaved in one process:
  * tf_mha packed, segment ids: rows packed by `tf_mha.data.pack`, the
    segments passed as `segment_ids` (blocks between examples skipped);
  * tf_mha packed, dense mask: the same rows with a `[B, T, T]` mask;
  * tf_mha, tf_keras and Keras 3 padded: one example per row, BERT's
    padding mask.
And the op alone: four 128-token examples as one packed row (segment ids,
and a dense block-diagonal mask) against the same four as rows of 128.
"""

import statistics
import time

import numpy as np
import tensorflow as tf

import tf_mha
import tf_mha.data
from tf_mha.ops import segments

DIM, HEADS, FEED_FORWARD, BLOCKS, LENGTH, VOCAB = 512, 8, 2048, 4, 512, 1000
IMPLEMENTATIONS = ("tf_mha packed, segment ids", "tf_mha packed, dense mask",
                   "tf_mha padded", "tf_keras padded", "Keras 3 padded")


def example_lengths(count, seed=0):
  """Lengths from a Wikipedia-like histogram: log-normal around 200 tokens,
  cut to [16, 512] (about half of a row of 512 is padding)."""
  rng = np.random.default_rng(seed)
  return np.clip(rng.lognormal(np.log(200), 0.7, count), 16, LENGTH).astype(int)


def batches(rows, seed=0):
  """`(padded, packed)` batches of `rows` rows each, dicts of `ids` and
  `segment_ids`: `rows` examples drawn from the histogram, one per padded
  row; and `rows` rows drawn from the packing of `16 * rows` examples (its
  first rows hold the longest examples). Each is its pipeline's sample:
  compare them in real tokens per second."""
  lengths = example_lengths(rows * 16, seed)
  rng = np.random.default_rng(seed + 1)
  tokens = [rng.integers(1, VOCAB, n).astype(np.int32) for n in lengths]
  dataset = tf.data.Dataset.from_tensor_slices({"ids": tf.ragged.constant(tokens)})
  packed = next(iter(tf_mha.data.pack(dataset, LENGTH, buffer_size=len(tokens))
                     .batch(len(tokens))))
  chosen = np.sort(rng.choice(len(packed["ids"]), rows, replace=False))
  packed = {k: v.numpy()[chosen] for k, v in packed.items()}
  ids = np.zeros([rows, LENGTH], np.int32)
  for row in range(rows):
    ids[row, :lengths[row]] = tokens[row]
  padded = {"ids": ids, "segment_ids": (ids != 0).astype(np.int32)}
  return padded, {k: packed[k] for k in ("ids", "segment_ids")}


def _attention_layer(impl):
  if impl == "tf_keras padded":
    import tf_keras  # pylint: disable=g-import-not-at-top
    return tf_keras.layers.MultiHeadAttention(HEADS, DIM // HEADS)
  if impl == "Keras 3 padded":
    import keras  # pylint: disable=g-import-not-at-top
    return keras.layers.MultiHeadAttention(HEADS, DIM // HEADS)
  return tf_mha.MultiHeadAttention(HEADS, DIM // HEADS)


class Encoder(tf.Module):
  """Embeddings, `BLOCKS` post-norm blocks of attention and feed-forward,
  per-token logits; the attention layers are the implementation's."""

  def __init__(self, impl, seed=0):
    super().__init__()
    self.impl = impl
    init = tf.random.stateless_normal
    self.embed = tf.Variable(init([VOCAB, DIM], [seed, 0]) * 0.02)
    self.position = tf.Variable(init([LENGTH, DIM], [seed, 1]) * 0.02)
    self.attention = [_attention_layer(impl) for _ in range(BLOCKS)]
    self.ff = [(tf.Variable(init([DIM, FEED_FORWARD], [seed, 2 + i]) * 0.02),
                tf.Variable(init([FEED_FORWARD, DIM], [seed, 9 + i]) * 0.02))
               for i in range(BLOCKS)]

  def __call__(self, ids, segment_ids):
    packed = self.impl.startswith("tf_mha packed")
    positions = (tf_mha.segment_positions(segment_ids) if packed else
                 tf.broadcast_to(tf.range(LENGTH), tf.shape(ids)))
    x = tf.gather(self.embed, ids) + tf.gather(self.position, positions)
    options = {}
    if self.impl == "tf_mha packed, segment ids":
      options["segment_ids"] = segment_ids
    elif self.impl == "tf_mha packed, dense mask":
      options["attention_mask"] = segments.mask(segment_ids, segment_ids)[:, 0]
    else:  # BERT's padding mask: every query sees the row's real keys
      options["attention_mask"] = (segment_ids != 0)[:, None, :]
    for attention, (w1, w2) in zip(self.attention, self.ff):
      x = _norm(x + attention(x, x, **options))
      x = _norm(x + tf.nn.gelu(x @ w1) @ w2)
    return x @ tf.transpose(self.embed)  # [B, T, VOCAB]

  def weights(self):
    variables = [self.embed, self.position] + [w for pair in self.ff for w in pair]
    for layer in self.attention:
      variables += [v if isinstance(v, tf.Variable) else v.value  # Keras 3
                    for v in layer.trainable_variables]
    return variables


def _norm(x):
  mean, variance = tf.nn.moments(x, [-1], keepdims=True)
  return (x - mean) * tf.math.rsqrt(variance + 1e-6)


def training_step(encoder):
  """A jit-compiled training step (loss on every real token; SGD)."""

  def step(ids, segment_ids):
    with tf.GradientTape() as tape:
      logits = encoder(ids, segment_ids)
      loss = tf.nn.sparse_softmax_cross_entropy_with_logits(ids, logits)
      real = tf.cast(segment_ids != 0, loss.dtype)
      loss = tf.reduce_sum(loss * real) / tf.reduce_sum(real)
    variables = encoder.weights()
    for variable, grad in zip(variables, tape.gradient(loss, variables)):
      variable.assign_sub(1e-3 * tf.convert_to_tensor(grad))
    return loss

  return tf.function(step, jit_compile=True)


def time_training(rows=4, repeats=5, impls=IMPLEMENTATIONS, log=print):
  """`({impl: (real tokens/s, seconds per step, real tokens)}, padding)`:
  `padding` the fraction of padding in the padded and the packed batch."""
  padded, packed = batches(rows)
  data = {impl: packed if impl.startswith("tf_mha packed") else padded
          for impl in impls}
  steps = {}
  for impl in impls:
    step = training_step(Encoder(impl))
    args = (tf.constant(data[impl]["ids"]), tf.constant(data[impl]["segment_ids"]))
    start = time.perf_counter()
    step(*args).numpy()
    log(f"  {impl}: compiled in {time.perf_counter() - start:.1f} s, "
        f"{len(data[impl]['ids'])} rows")
    steps[impl] = (step, args)
  samples = {impl: [] for impl in impls}
  for _ in range(repeats):
    for impl, (step, args) in steps.items():
      start = time.perf_counter()
      step(*args).numpy()
      samples[impl].append(time.perf_counter() - start)
  out = {}
  for impl in impls:
    seconds = statistics.median(samples[impl])
    tokens = int(np.count_nonzero(data[impl]["segment_ids"]))
    out[impl] = (tokens / seconds, seconds, tokens)
  padding = {name: 1.0 - np.count_nonzero(batch["segment_ids"]) / batch["ids"].size
             for name, batch in (("padded", padded), ("packed", packed))}
  return out, padding


def time_op(repeats=30):
  """The op alone, fwd+bwd under jit, 8 heads of 64: four 128-token examples
  as rows of 128, and as one packed row (segment ids; dense mask)."""
  rng = np.random.default_rng(0)
  rows = [tf.constant(rng.standard_normal([4, 128, HEADS, 64]), tf.float32)
          for _ in range(3)]
  packed = [tf.reshape(x, [1, 512, HEADS, 64]) for x in rows]
  ids = tf.constant(np.repeat(np.arange(1, 5), 128)[None], tf.int32)
  dense = segments.mask(ids, ids)

  def fwd_bwd(**options):
    def run(q, k, v):
      with tf.GradientTape() as tape:
        tape.watch([q, k, v])
        loss = tf.reduce_sum(tf_mha.dot_product_attention(q, k, v, **options))
      return tape.gradient(loss, [q, k, v])
    return tf.function(run, jit_compile=True)

  cases = {"four rows of 128": (fwd_bwd(), rows),
           "one packed row, segment ids": (fwd_bwd(segment_ids=ids), packed),
           "one packed row, dense mask": (fwd_bwd(mask=dense), packed)}
  samples = {name: [] for name in cases}
  for fn, args in cases.values():
    fn(*args)
  for _ in range(repeats):
    for name, (fn, args) in cases.items():
      start = time.perf_counter()
      fn(*args)[0].numpy()
      samples[name].append(time.perf_counter() - start)
  return {name: statistics.median(s) for name, s in samples.items()}


def table(training, padding, op_times):
  """Both measurements as Markdown lines."""
  base = training["tf_keras padded"][0]
  lines = [f"Encoder training step (4 blocks, D=512, 8 heads, T=512, jit, "
           f"4 rows); padding: {padding['padded']:.0%} of the padded rows, "
           f"{padding['packed']:.0%} of the packed rows.", "",
           "| implementation | real tokens/s | ms/step | real tokens/step | "
           "vs tf_keras padded |", "|---|---|---|---|---|"]
  for impl, (rate, seconds, tokens) in training.items():
    lines.append(f"| {impl} | {rate:.0f} | {seconds * 1e3:.0f} | {tokens} | "
                 f"{rate / base:.2f}x |")
  rows = op_times["four rows of 128"]
  lines += ["", "| op, fwd+bwd, jit, 8 heads of 64 | ms | vs four rows |",
            "|---|---|---|"]
  lines += [f"| {name} | {t * 1e3:.2f} | {t / rows:.2f}x |"
            for name, t in op_times.items()]
  return "\n".join(lines)
