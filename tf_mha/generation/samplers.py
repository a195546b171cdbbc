"""Samplers: the next token from the last position's logits, `[B, V]` ->
`[B]` int32, as small pure functions composed in Model Garden's order
(`ops/sampling_module.py`): temperature, then top-k, then top-p (nucleus),
then a categorical draw; softmax in float32.

Every parameter is a scalar or one value per row (`[B]`), so one batch can
mix greedy and sampled rows. Static shapes and stateless draws from a seed
and the step: the same seed gives the same tokens eagerly and compiled
(`jit_compile=True`), with no host round trip.
"""

import dataclasses
from typing import Any

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How to pick each token.

  Attributes:
    temperature: divides the logits; 0 (or less) picks greedily.
    top_k: keep the `k` largest logits (ties kept); 0 or None keeps all.
    top_p: keep the smallest set of tokens, most likely first, whose
      probability reaches `p` (the first token is always kept); 1.0 or None
      keeps all.
    seed: int seed of the draws: `[2]` for the batch (row `r` draws with
      `(seed[0], seed[1] + r)`), or `[B, 2]`, one per row (a row then
      draws the same whichever batch it is in).
  """
  temperature: Any = 1.0
  top_k: Any = None
  top_p: Any = None
  seed: Any = (0, 0)


def greedy(logits):
  """The most likely token of each row, `[B]` int32."""
  return tf.argmax(logits, axis=-1, output_type=tf.int32)


def filtered_logits(logits, temperature=1.0, top_k=None, top_p=None):
  """`logits` `[B, V]` scaled by `temperature` (rows with 0 are left as they
  are) and with the tokens outside top-k / top-p set to -inf (float32)."""
  logits = tf.cast(logits, tf.float32)
  batch = tf.shape(logits)[0]
  row = lambda x, dtype: tf.broadcast_to(tf.cast(x, dtype), [batch])
  temperature = row(temperature, tf.float32)
  scaled = logits / tf.where(temperature > 0, temperature, 1.0)[:, None]
  ranked = tf.sort(scaled, axis=-1, direction="DESCENDING")  # [B, V]
  vocab = tf.shape(logits)[-1]
  floor = tf.fill([batch], tf.constant(float("-inf")))  # the smallest kept logit
  if top_k is not None:
    k = row(top_k, tf.int32)
    k = tf.where(k > 0, tf.minimum(k, vocab), vocab)
    floor = tf.maximum(floor, tf.gather(ranked, k - 1, batch_dims=1))
  if top_p is not None:
    p = row(top_p, tf.float32)
    kept = tf.where(ranked >= floor[:, None], ranked, float("-inf"))
    probs = tf.nn.softmax(kept, axis=-1)
    # A token stays while the mass before it is below p: the first always.
    before = tf.cumsum(probs, axis=-1, exclusive=True)
    last = tf.reduce_sum(tf.cast(before < p[:, None], tf.int32), axis=-1)
    floor = tf.maximum(floor, tf.gather(ranked, tf.maximum(last, 1) - 1,
                                        batch_dims=1))
  return tf.where(scaled >= floor[:, None], scaled, float("-inf"))


def sample(logits, sampling, step=0):
  """The next tokens `[B]` int32 for `sampling` (a `Sampling`) at decoding
  step `step` (each step draws afresh): the Gumbel-max draw over the
  filtered logits; rows with temperature 0 greedy (and no filtering or
  draws at all when every row is)."""
  temperature = tf.broadcast_to(tf.cast(sampling.temperature, tf.float32),
                                tf.shape(logits)[:1])

  def draw():
    filtered = filtered_logits(logits, temperature, sampling.top_k,
                               sampling.top_p)
    u = uniform(tf.shape(filtered), sampling.seed, step)
    drawn = greedy(filtered - tf.math.log(-tf.math.log(u)))
    return tf.where(temperature > 0, drawn, greedy(logits))

  return tf.cond(tf.reduce_any(temperature > 0), draw, lambda: greedy(logits))


MASK = 0xFFFFFFFF  # the low 32 bits
MIX = 0x45D9F3B  # below 2**31: products of 32-bit values fit an int64


def _hash(x):
  """A 32-bit integer hash in int64 arithmetic (exact on every device)."""
  for _ in range(2):
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = tf.bitwise.bitwise_and(x * MIX, MASK)
  return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def row_seeds(seed, batch):
  """Each row's seed `[B, 2]` int64: `seed` `[B, 2]` as given, or one `[2]`
  for the batch, giving row `r` the seed `(seed[0], seed[1] + r)` (so row 0
  draws as a lone row with that seed would)."""
  seed = tf.cast(seed, tf.int64)
  if seed.shape.rank == 2:
    return seed
  rows = tf.range(tf.cast(batch, tf.int64))
  return tf.stack([tf.broadcast_to(seed[0], tf.shape(rows)), seed[1] + rows], 1)


def uniform(shape, seed, step):
  """Uniform draws in (0, 1), `[B, V]`, from the rows' seeds (`seed`, see
  `row_seeds`), the step and each column, by an integer hash: the same
  numbers eagerly and under XLA (TensorFlow's stateless random ops differ
  between them), and a row with its own seed draws the same wherever it
  sits in the batch."""
  seeds = row_seeds(seed, shape[0])
  low = lambda x: tf.bitwise.bitwise_and(x, MASK)
  key = _hash(tf.bitwise.bitwise_xor(_hash(low(seeds[:, 0])), low(seeds[:, 1])))
  key = _hash(tf.bitwise.bitwise_xor(key, tf.cast(step, tf.int64)))  # [B]
  columns = tf.range(tf.cast(shape[1], tf.int64))[None, :]
  bits = _hash(tf.bitwise.bitwise_xor(_hash(columns), key[:, None]))
  top = tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32)  # 24 bits
  return (top + 0.5) * (1.0 / (1 << 24))
