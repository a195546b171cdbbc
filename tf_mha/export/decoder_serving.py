"""A decoder with a tokenizer as the `tf.Module` TF Serving runs.

Shapes: `B` batch, `P` prompt tokens, `M` new tokens, `S` cache slots, `K`
key/value heads, `H` head size, `V` vocabulary.

`DecoderModule` serves a model with the step interface
(`decoder_signatures`: `step`, `cache_shape`, `num_layers`, and here also
`max_length`, the cache slots `S`) through a tokenizer it is given. Its
SavedModel signatures:
  * `generate`: `prompt` strings `[B]`, `max_new_tokens` and, optional
    (TF Serving fills them from the SignatureDef's defaults; Python's
    `loaded.signatures` needs them all, `loaded.generate(...)` does not):
    `temperature`, `top_k`, `top_p`, `seed`, each a scalar or one per row,
    greedy by default -> `text` `[B]` (the continuation), `token_ids`
    `[B, M]` (new tokens; 0 after the end token, which is kept),
    `num_tokens` `[B]` (those before the end token) and `status` `[B]`
    (`STATUSES`: "ok", or why a row was not generated, which fails no
    other row). The whole loop is one XLA-compiled function over
    fixed-size caches;
  * `serving_default`: `generate` greedy, with `prompt` and
    `max_new_tokens` only;
  * `prefill` and `decode`: `token_ids`, `positions`, `cache_index` and one
    cache per layer (`kv_cache_0`, ...) -> `logits` and the caches, for
    clients that run the loop themselves (`decode` takes one token per row);
  * `tokenize`: prompt strings -> `token_ids` `[B, P]` (0 after a row's
    tokens) and `num_tokens` `[B]`, as `generate` reads them.
"""

import tensorflow as tf

from tf_mha import generation

# `generate`'s optional inputs and their defaults (greedy): TF Serving fills
# an input a request leaves out from the SignatureDef's defaults.
GREEDY = {"temperature": tf.constant(0.0), "top_k": tf.constant(0),
          "top_p": tf.constant(1.0), "seed": tf.constant(0)}
_SAMPLING_SPECS = [tf.TensorSpec(None, v.dtype, name=k) for k, v in GREEDY.items()]
_REQUEST_SPECS = [tf.TensorSpec([None], tf.string, name="prompt"),
                  tf.TensorSpec([], tf.int32, name="max_new_tokens")]
# A row's `status`: generated ("ok", or "cache_full" when the batch's cache
# ran out before its end token or `max_new_tokens`), or why it was not.
STATUSES = ("ok", "cache_full", "empty_prompt", "prompt_too_long",
            "invalid_sampling")


def step_functions(model, batch=None):
  """`(prefill, decode)`: `model.step` as `tf.function`s with named inputs
  (`token_ids`, `positions`, `cache_index`, `kv_cache_<i>`) and outputs
  (`logits`, `kv_cache_<i>`), to export as signatures. `decode` takes one
  token per row. `batch`: a static batch size, or None for any."""
  caches = [tf.TensorSpec(model.cache_shape(batch), tf.float32, name=f"kv_cache_{i}")
            for i in range(model.num_layers)]

  def step(token_ids, positions, cache_index, *caches):
    logits, caches = model.step(token_ids, positions, cache_index, list(caches))
    return {"logits": logits,
            **{f"kv_cache_{i}": cache for i, cache in enumerate(caches)}}

  def specs(length):
    return [tf.TensorSpec([batch, length], tf.int32, name="token_ids"),
            tf.TensorSpec([batch, length], tf.int32, name="positions"),
            tf.TensorSpec([], tf.int32, name="cache_index")] + caches

  return (tf.function(step, input_signature=specs(None)),
          tf.function(step, input_signature=specs(1)))


class DecoderModule(tf.Module):
  """What TF Serving runs (see the module doc for the signatures).

  Args:
    model: a decoder with the step interface and `max_length`, whose step
      also takes cache pairs (`(keys, values)`, each `[B, S, K, H]`, as
      tf_mha's attention layers do): the `generate` loop keeps its caches
      so.
    encode: prompt strings `[B]` -> `(ids [B, P] int32, lengths [B])`, each
      row's tokens first (a start token included), anything after them.
    detokenize: `(token_ids [B, M], num_tokens [B])` -> text `[B]` of each
      row's first `num_tokens` tokens.
    end_id: the token that ends a row, or a list of them (the first also
      stops the loop early once every row has made it).
    min_prompt_tokens: a prompt with fewer tokens is an "empty_prompt".
  """

  def __init__(self, model, *, encode, detokenize, end_id, min_prompt_tokens=1):
    super().__init__()
    self.model = model
    self._encode, self._detokenize = encode, detokenize
    self.end_ids = [int(i) for i in (end_id if isinstance(end_id, (list, tuple))
                                     else [end_id])]
    self.min_prompt_tokens = int(min_prompt_tokens)
    self.prefill, self.decode = step_functions(model)
    self.generate = tf.function(self._generate,
                                input_signature=_REQUEST_SPECS + _SAMPLING_SPECS)
    self.generate_greedy = tf.function(
        lambda prompt, max_new_tokens: self._generate(prompt, max_new_tokens),
        input_signature=_REQUEST_SPECS)
    self.tokenize = tf.function(
        self._tokenize, input_signature=[tf.TensorSpec([None], tf.string,
                                                       name="prompt")])
    self._generate_ids = tf.function(self._left_aligned_ids, jit_compile=True)

  def signatures(self):
    return {"serving_default": self.generate_greedy, "generate": self.generate,
            "prefill": self.prefill, "decode": self.decode,
            "tokenize": self.tokenize}

  def _tokenize(self, prompt):
    ids, lengths = self._encode(prompt)
    return {"token_ids": ids, "num_tokens": lengths}

  def _generate(self, prompt, max_new_tokens, temperature=GREEDY["temperature"],
                top_k=GREEDY["top_k"], top_p=GREEDY["top_p"],
                seed=GREEDY["seed"]):
    ids, lengths = self._encode(prompt)  # [B, P], [B]
    batch, slots = tf.shape(ids)[0], self.model.max_length
    most = slots - max(1, self.min_prompt_tokens - 1)
    with tf.control_dependencies(_request_checks(
        batch, max_new_tokens, most, temperature=temperature, top_k=top_k,
        top_p=top_p, seed=seed)):
      sampling = _per_row_sampling(batch, temperature, top_k, top_p, seed)
    status = _row_status(lengths, self.min_prompt_tokens, slots, sampling)
    ok = tf.equal(status, 0)
    # Rows that are not generated run as one token 0 and are blanked after.
    lengths = tf.where(ok, lengths, 1)
    width = tf.reduce_max(tf.concat([lengths, [1]], 0))
    ids = tf.where(ok[:, None], ids, 0)[:, :width]
    room = slots - width + 1  # new tokens the batch has room for
    tokens = self._generate_ids(
        ids, lengths, tf.minimum(max_new_tokens, room), sampling.temperature,
        sampling.top_k, sampling.top_p, sampling.seed)[:, :max_new_tokens]
    fits = tf.range(tf.shape(tokens)[1])[None] < room  # [1, M]
    tokens = tf.where(fits, tokens, 0)
    is_end = tf.cast(tf.reduce_any(
        tf.equal(tokens[..., None], self.end_ids), -1), tf.int32)
    ended = tf.cumsum(is_end, 1)
    # The end token itself is kept in `token_ids`; nothing after it.
    token_ids = tf.where((ended - is_end > 0) | ~ok[:, None], 0, tokens)
    num_tokens = tf.reduce_sum(tf.cast(tf.equal(ended, 0) & fits, tf.int32), 1)
    num_tokens = tf.where(ok, num_tokens, 0)
    full = ok & (room < max_new_tokens) & (ended[:, -1] == 0)
    status = tf.where(full, 1, status)
    return {"text": self._detokenize(token_ids, num_tokens),
            "token_ids": token_ids, "num_tokens": num_tokens,
            "status": tf.gather(tf.constant(STATUSES), status)}

  def _left_aligned_ids(self, ids, lengths, max_new_tokens, temperature, top_k,
                        top_p, seed):
    """Tokens `[B, S]` for right-padded prompts `ids` `[B, P]`, each row
    sampled by its own parameters (`generation.Sampling`)."""
    width = tf.shape(ids)[1]
    pads = width - lengths  # [B]
    columns = tf.range(width)[None] - pads[:, None]  # [B, P]
    left = tf.where(columns >= 0, tf.gather(ids, tf.maximum(columns, 0),
                                            batch_dims=1), 0)

    def step(token_ids, caches, index):
      positions = index + tf.range(tf.shape(token_ids)[1])[None] - pads[:, None]
      return self.model.step(token_ids, positions, index, caches)

    slots = self.model.max_length  # the most tokens any prompt leaves room for
    capacity = slots if ids.shape[1] is None else max(1, slots - ids.shape[1] + 1)
    # Keys and values in buffers of their own (a cache pair per layer): each
    # written in place of a slice, none stacked or split per step; a decode
    # loop ran 17% faster so than over [B, 2, S, K, H] caches (D=512, 4
    # blocks, 384 slots, XLA on 2 cores: 454 against 388 tokens/s).
    shape = tf.concat([[tf.shape(ids)[0]], self.model.cache_shape(1)[2:]], 0)
    caches = [(tf.zeros(shape), tf.zeros(shape))
              for _ in range(self.model.num_layers)]
    tokens, _ = generation.generate(
        step, left, capacity, caches,
        sampling=generation.Sampling(temperature, top_k, top_p, seed),
        end_id=self.end_ids[0], limit=max_new_tokens)
    return tokens


def _request_checks(batch, max_new_tokens, most, **sampling):
  """Checks of what is wrong with a whole `generate` request (an
  InvalidArgumentError naming the input): `max_new_tokens` outside
  `[1, most]`, a sampling input neither a scalar nor one value per row."""
  checks = [
      tf.debugging.assert_positive(
          max_new_tokens, message="`max_new_tokens` must be at least 1"),
      tf.debugging.assert_less_equal(
          max_new_tokens, most, message=f"`max_new_tokens` must be at most "
          f"{most} (the model's cache, less the shortest prompt)")]
  for name, value in sampling.items():
    size = tf.size(value)
    checks.append(tf.debugging.Assert(
        (tf.rank(value) == 0) | ((tf.rank(value) == 1) & (size == batch)),
        [f"`{name}` must be a scalar or one value per prompt; received shape",
         tf.shape(value), "for prompts:", batch]))
  return checks


def _per_row_sampling(batch, temperature, top_k, top_p, seed):
  """The request's sampling inputs, one value per row (`generation.Sampling`):
  a scalar `seed` is the batch's (row `r` draws with `(seed, r)`), a seed
  per row is that row's own (`(seed, 0)`: as if it were alone)."""
  row = lambda x: tf.broadcast_to(x, [batch])
  seed = tf.cast(seed, tf.int64)
  seeds = tf.cond(tf.rank(seed) == 0,
                  lambda: tf.stack([row(seed), tf.range(tf.cast(batch, tf.int64))], 1),
                  lambda: tf.stack([row(seed), tf.zeros([batch], tf.int64)], 1))
  return generation.Sampling(temperature=row(temperature), top_k=row(top_k),
                             top_p=row(top_p), seed=tf.reshape(seeds, [-1, 2]))


def _row_status(lengths, min_tokens, slots, sampling):
  """Each row's index in `STATUSES` before generating: 0 (to generate), or
  why not."""
  valid = ((sampling.temperature >= 0) & (sampling.top_k >= 0) &
           (sampling.top_p > 0) & (sampling.top_p <= 1))
  return tf.where(lengths < min_tokens, 2, tf.where(
      lengths > slots, 3, tf.where(valid, 0, 4)))
