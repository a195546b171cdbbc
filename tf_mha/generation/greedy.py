"""Greedy generation with a key/value cache, in one `tf.function`.

Shapes: `B` batch, `P` prompt length, `M` new tokens, `S` cache slots,
`K` key/value heads, `H` head size, `V` vocabulary.

A causal model exposes one step, `step(token_ids [B, L], caches, index) ->
(logits [B, L, V], caches)`, whose attention layers take `cache` and
`cache_update_index=index` (`tf_mha.MultiHeadAttention`,
`tf_mha.GroupedQueryAttention`). `greedy_generate` runs the prompt through
it once (prefill), then one token at a time in a `tf.while_loop` over the
fixed-size caches: static shapes, so the whole loop compiles with
`jit_compile=True` (the TPU path).

Caches are tensors passed in and returned (KerasHub's convention, and what
an exported `decode` signature takes), or `KVCache` variables, which the
layers write in place: under XLA a tensor cache is copied on every step
(O(S)), a variable is not.
"""

import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla

from tf_mha.generation import samplers
from tf_mha.ops import checks


def cache_shape(batch, max_length, num_key_value_heads, head_dim):
  """The shape of one layer's cache: `[B, 2, S, K, H]`."""
  return [batch, 2, max_length, num_key_value_heads, head_dim]


class KVCache(tf.Module):
  """One cache variable per attention layer, for in-place decoding.

  Examples:
    >>> cache = KVCache(num_layers=2, batch=1, max_length=8,
    ...                 num_key_value_heads=2, head_dim=4)
    >>> [v.shape.as_list() for v in cache.layers]  # [B, 2, S, K, H] each
    [[1, 2, 8, 2, 4], [1, 2, 8, 2, 4]]
  """

  def __init__(self, num_layers, batch, max_length, num_key_value_heads,
               head_dim, dtype=tf.float32, name=None):
    super().__init__(name=name)
    shape = cache_shape(
        checks.positive_int("batch", batch),
        checks.positive_int("max_length", max_length),
        checks.positive_int("num_key_value_heads", num_key_value_heads),
        checks.positive_int("head_dim", head_dim))
    self.layers = [tf.Variable(tf.zeros(shape, dtype), trainable=False,
                               name=f"layer_{i}")
                   for i in range(checks.positive_int("num_layers", num_layers))]

  def reset(self):
    for variable in self.layers:
      variable.assign(tf.zeros_like(variable))


def greedy_generate(step, prompt_ids, max_new_tokens, caches, *, end_id=None,
                    limit=None):
  """Greedy decoding: `generate` with `sampling=None` (same arguments)."""
  return generate(step, prompt_ids, max_new_tokens, caches, end_id=end_id,
                  limit=limit)


def generate(step, prompt_ids, max_new_tokens, caches, *, sampling=None,
             end_id=None, limit=None):
  """Decoding: prefill `prompt_ids`, then `max_new_tokens` steps, each token
  picked greedily or by `sampling`, in one loop that compiles with XLA.

  Args:
    step: `(token_ids [B, L] int32, caches, index) -> (logits [B, L, V],
      caches)`, writing the tokens' keys and values at `[index, index + L)`.
    prompt_ids: `[B, P]` int32, `P >= 1` (every row the same length).
    max_new_tokens: `M`, a positive int (static: the output's shape).
    caches: the nest of caches `step` takes (tensors, or `KVCache.layers`),
      with `S >= P + M - 1` slots.
    sampling: `None` (greedy), or a `samplers.Sampling` (temperature, top-k,
      top-p, seed; scalars or per row): token `t` is drawn with the seed
      folded with `t`.
    end_id: a token that ends a row: once a row emits it, the rest of that
      row is `end_id`. `None`: every row runs `M` tokens.
    limit: an int32 scalar tensor, or one per row `[B]`, in `[1, M]`: a
      row's tokens after this many are `end_id`, or 0 without one (a
      run-time `max_new_tokens` under a static `M`, as an XLA-compiled
      serving signature needs). `None`: `M`. The caller checks the range
      (`limit` past `M` stops at `M`).

  Returns:
    `(tokens [B, M] int32, caches)`.

  Raises:
    ValueError: `max_new_tokens` is not a positive int, or the prompt and
      new tokens do not fit the caches (when the lengths are static).
  """
  max_new_tokens = checks.positive_int("max_new_tokens", max_new_tokens)
  prompt_ids = tf.convert_to_tensor(prompt_ids)
  if prompt_ids.shape.rank != 2:
    raise ValueError("`prompt_ids` must be [batch, length] token ids. "
                     f"Received: prompt_ids with shape {prompt_ids.shape}")
  prompt_ids = tf.cast(prompt_ids, tf.int32)
  slots = tf.nest.flatten(caches)[0].shape[2]
  length = prompt_ids.shape[1]
  if length is not None and slots is not None and length + max_new_tokens - 1 > slots:
    raise ValueError(
        f"The prompt ({length} tokens) and `max_new_tokens`={max_new_tokens} "
        f"need {length + max_new_tokens - 1} cache slots; the caches have "
        f"{slots}.")
  batch = tf.shape(prompt_ids)[0]
  row_count = tf.broadcast_to(
      tf.constant(max_new_tokens) if limit is None else
      tf.minimum(tf.cast(limit, tf.int32), max_new_tokens), [batch])  # [B]
  count = tf.reduce_max(row_count)
  pick = lambda logits, t: samplers.greedy(logits)
  if sampling is not None:
    pick = lambda logits, t: samplers.sample(logits, sampling, t)
  logits, caches = step(prompt_ids, caches, tf.constant(0))
  first = pick(logits[:, -1], 0)
  end = tf.constant(-1 if end_id is None else end_id, tf.int32)
  tokens = tf.zeros([batch, max_new_tokens], tf.int32)
  position = tf.shape(prompt_ids)[1]

  # Variables are written in place and stay out of the loop's state (a
  # loop variable would be read into a tensor).
  in_place = all(isinstance(c, tf.Variable) for c in tf.nest.flatten(caches))
  state_caches = () if in_place else caches

  def body(t, tokens, token, done, state):
    token = tf.where(done, end, token)
    tokens = xla.dynamic_update_slice(tokens, token[:, None], tf.stack([0, t]))
    done = tf.logical_or(done, tf.equal(token, end))
    logits, state = step(token[:, None], caches if in_place else state,
                         position + t)
    return (t + 1, tokens, pick(logits[:, -1], t + 1), done,
            () if in_place else state)

  def more(t, tokens, token, done, state):
    del tokens, token, state
    # Steps run for tokens 0 .. M - 2; the last is written after the loop.
    return tf.logical_and(t < count - 1,
                          tf.logical_not(tf.reduce_all(done)))

  _, tokens, last, done, state = tf.while_loop(
      more, body, (tf.constant(0), tokens, first, tf.zeros([batch], tf.bool),
                   state_caches))
  return (_finish(tokens, last, done, end, count, row_count,
                  end_id is not None), caches if in_place else state)


def _finish(tokens, last, done, end, count, row_count, has_end):
  """Writes the last token into column `count - 1`, `end` after a row's end
  token (the loop may stop early once every row has ended), and `end` (or
  0) from each row's `row_count` on."""
  last = tf.where(done, end, last)
  tokens = xla.dynamic_update_slice(tokens, last[:, None],
                                    tf.stack([0, count - 1]))
  ended = tf.cumsum(tf.cast(tf.equal(tokens, end), tf.int32), axis=1) > 0
  tokens = tf.where(ended, end, tokens)
  beyond = tf.range(tf.shape(tokens)[1])[None] >= row_count[:, None]
  return tf.where(beyond, end if has_end else 0, tokens)
