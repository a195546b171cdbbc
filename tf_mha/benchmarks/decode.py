"""Cached decode steps of one attention layer (`tools/benchmark.py --decode`):
tf_mha's MHA and GQA, with tensor and variable caches, against KerasHub's
`CachedMultiHeadAttention`, interleaved in one process.
"""

import statistics
import time

import tensorflow as tf

from tf_mha.benchmarks import attention


# Decode benchmark (B=1, D=512, 8 query heads of 64, jit): implementation ->
# (key/value heads, cache held in a variable).
DECODE_IMPLS = {"tf_mha MHA": (8, False), "tf_mha MHA, variable cache": (8, True),
                "tf_mha GQA K=2": (2, False),
                "tf_mha GQA K=2, variable cache": (2, True),
                "KerasHub CachedMultiHeadAttention": (8, False)}


KERAS_HUB = "KerasHub CachedMultiHeadAttention"


def _decode_layer(impl, heads=8, head_dim=64):
  import tf_mha  # pylint: disable=g-import-not-at-top
  if impl == KERAS_HUB:
    from keras_hub.src.layers.modeling import cached_multi_head_attention  # pylint: disable=g-import-not-at-top
    return cached_multi_head_attention.CachedMultiHeadAttention(
        num_heads=heads, key_dim=head_dim)
  kv_heads = DECODE_IMPLS[impl][0]
  if kv_heads == heads:
    return tf_mha.MultiHeadAttention(heads, head_dim)
  return tf_mha.GroupedQueryAttention(head_dim=head_dim, num_query_heads=heads,
                                      num_key_value_heads=kv_heads)


def make_decode_step(impl, slots, tokens, dim=512, heads=8, head_dim=64):
  """A jit-compiled call of one attention layer with a cache of `slots`:
  `tokens` new tokens projected, written at an index and attended to.

  Returns `(step, args)`: `step(*args)` is timed; `args[-1]` is the index.
  KerasHub's layer gets the causal mask over the cache that its decoders
  build; tf_mha's layers apply it themselves.
  """
  kv_heads, in_place = DECODE_IMPLS[impl]
  layer = _decode_layer(impl, heads, head_dim)
  x = tf.random.stateless_normal([1, tokens, dim], seed=[tokens, 5])
  cache = tf.zeros([1, 2, slots, kv_heads, head_dim])
  if impl == KERAS_HUB:
    def step(x, cache, index):
      rows = index + tf.range(tokens)[:, None]
      mask = (tf.range(slots)[None, :] <= rows)[None]  # [1, L, S]
      return layer(x, x, attention_mask=mask, cache=cache,
                   cache_update_index=index)
  elif in_place:
    variable = tf.Variable(cache)
    def step(x, cache, index):
      del cache
      return layer(x, x, cache=variable, cache_update_index=index)[0]
  else:
    def step(x, cache, index):
      return layer(x, x, cache=cache, cache_update_index=index)
  return tf.function(step, jit_compile=True), (x, cache)


def time_decode(points, impls=tuple(DECODE_IMPLS), repeats=20, log=print):
  """`points`: `[(label, slots, tokens, index)]`. Median seconds per call,
  every implementation interleaved, as `[(label, {impl: seconds})]`."""
  rows = []
  for label, slots, tokens, index in points:
    steps = {}
    for impl in impls:
      fn, args = make_decode_step(impl, slots, tokens)
      call = lambda args=args, fn=fn: fn(*args, tf.constant(index))
      start = time.perf_counter()
      call()
      log(f"  {label}, {impl}: compiled in {time.perf_counter() - start:.1f} s")
      steps[impl] = call
    samples = {impl: [] for impl in impls}
    for _ in range(repeats):
      for impl, call in steps.items():
        samples[impl].append(attention.timed(lambda _: call(), None))
    rows.append((label, {k: statistics.median(v) for k, v in samples.items()}))
  return rows


def decode_table(rows):
  """The decode rows as Markdown, with ratios against KerasHub."""
  lines = ["| point (B=1, D=512, 8 query heads of 64, jit) | implementation | "
           "ms | KerasHub / this |", "|---|---|---|---|"]
  for label, times in rows:
    for impl, seconds in times.items():
      ratio = (f"{times[KERAS_HUB] / seconds:.2f}x" if KERAS_HUB in times
               else "n/a")
      lines.append(f"| {label} | {impl} | {seconds * 1e3:.3f} | {ratio} |")
  return "\n".join(lines)
