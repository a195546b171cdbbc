"""The generator demo: a decoder trained to reverse lists of words, and the
`tf.Module` that TF Serving runs.

Shapes: `B` batch, `P` prompt tokens, `L` new tokens of a step, `M` new
tokens, `S` cache slots, `V` vocabulary.

A prompt's tokens are `[BOS] words... [SEP]`; the answer follows, then
`[END]`. The SavedModel's signatures:
  * `generate`: `prompt` strings `[B]`, `max_new_tokens` and, optional
    (TF Serving fills them from the SignatureDef's defaults; Python's
    `loaded.signatures` needs them all, `loaded.generate(...)` does not):
    `temperature`, `top_k`, `top_p`, `seed`, each a scalar or one per row,
    greedy by default -> `text` `[B]`, `token_ids` `[B, M]` (0 after the
    end token), `num_tokens` `[B]` and `status` `[B]` (`STATUSES`: "ok",
    or why a row was not generated, which fails no other row). The whole
    loop is one XLA-compiled function over fixed-size caches;
  * `serving_default`: `generate` greedy, with `prompt` and
    `max_new_tokens` only;
  * `prefill` and `decode`: `token_ids`, `positions`, `cache_index` and one
    cache per block (`kv_cache_0`, ...) -> `logits` and the caches, for clients
    that run the loop themselves (`decode` takes one token per row);
  * `tokenize`: prompt strings -> `token_ids` `[B, P]`, 0-padded on the
    right (the TFLite tokenizer is converted from it).
"""

import dataclasses

import numpy as np
import tensorflow as tf
import tf_keras

from tf_mha import generation
from tf_mha.demo import decoder as decoder_lib
from tf_mha.demo import model as model_lib
from tf_mha.demo import sequences

TRAIN_PROMPTS, HELD_OUT_PROMPTS = 20000, 300
MAX_LENGTH = 48  # cache slots: the longest prompt and answer with room
VOCAB = sequences.vocabulary()
BEGIN_ID, SEPARATOR_ID, END_ID = (VOCAB.index(t) for t in (
    sequences.BEGIN, sequences.SEPARATOR, sequences.END))


class PromptTokenizer(tf_keras.layers.Layer):
  """Prompt strings `[B]` -> `[BOS] words [SEP]` ids `[B, P]`, 0-padded on
  the right (builtins plus tensorflow-text's TFLite kernels)."""

  def __init__(self, vocab, **kwargs):
    super().__init__(trainable=False, **kwargs)
    self.vocab = list(vocab)
    self._words = model_lib.Tokenizer(self.vocab, max_length=None)

  def call(self, texts):
    words = self._words(texts)  # [B, W]
    count = tf.reduce_sum(tf.cast(tf.not_equal(words, 0), tf.int32), 1)
    batch = tf.shape(words)[0]
    ids = tf.concat([tf.fill([batch, 1], BEGIN_ID), words,
                     tf.zeros([batch, 1], tf.int32)], 1)
    at_end = tf.equal(tf.range(tf.shape(ids)[1])[None], count[:, None] + 1)
    return tf.where(at_end, SEPARATOR_ID, ids)

  def get_config(self):
    return {**super().get_config(), "vocab": self.vocab}


def training_sequences(tokenizer, prompts):
  """Whole sequences `[BOS] words [SEP] reversed [END]` `[n, T]` (0-padded)
  and their loss weights `[n, T]` (1 where the next token is the answer's)."""
  ids = tokenizer(tf.constant(prompts)).numpy()
  length = 2 * sequences.MAX_WORDS + 3
  out = np.zeros([len(prompts), length], np.int32)
  weights = np.zeros([len(prompts), length], np.float32)
  for row, prompt_ids in enumerate(ids):
    words = prompt_ids[1:np.argmax(prompt_ids == SEPARATOR_ID)]
    sequence = np.concatenate([prompt_ids[:len(words) + 2], words[::-1], [END_ID]])
    out[row, :len(sequence)] = sequence
    weights[row, len(words) + 1:len(sequence) - 1] = 1.0
  return out, weights


@dataclasses.dataclass
class GeneratorDemo:
  model: decoder_lib.Decoder
  tokenizer: PromptTokenizer
  held_out: list  # prompt strings never trained on (3 words or more)
  accuracy: float  # exact-match on `held_out`, generated in Keras


def train_generator(epochs=5, seed=0, log=None):
  """Trains the demo decoder on generated prompts (about 30 s on 2 cores).

  Args:
    epochs: passes over `TRAIN_PROMPTS` prompts.
    seed: seeds the data and the weights.
    log: a Keras callback for progress, or None.
  """
  tf_keras.utils.set_random_seed(seed)
  tokenizer = PromptTokenizer(VOCAB, name="tokenizer")
  train = sequences.make_prompts(TRAIN_PROMPTS, seed=seed)
  held_out = sequences.make_prompts(HELD_OUT_PROMPTS, seed=seed + 1, exclude=train)
  ids, weights = training_sequences(tokenizer, train)
  targets = np.concatenate([ids[:, 1:], np.zeros_like(ids[:, :1])], 1)
  model = decoder_lib.Decoder(len(VOCAB), max_length=MAX_LENGTH, name="decoder")
  model.compile(tf_keras.optimizers.Adam(3e-3),
                tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=True)
  model.fit(ids, targets, sample_weight=weights, batch_size=64, epochs=epochs,
            verbose=0, callbacks=[log] if log else [])
  module = GeneratorModule(model, tokenizer)
  texts = module.generate(tf.constant(held_out), tf.constant(MAX_LENGTH // 2))
  return GeneratorDemo(model, tokenizer, held_out,
                       exact_match(held_out, _strings(texts["text"])))


def exact_match(prompts, generated):
  """The fraction of `generated` texts that are the prompts' answers."""
  return float(np.mean([text == sequences.answer(prompt)
                        for prompt, text in zip(prompts, generated)]))


def _strings(tensor):
  return [t.decode() for t in np.asarray(tensor).tolist()]


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


class GeneratorModule(tf.Module):
  """What TF Serving runs (see the module doc for the signatures)."""

  def __init__(self, model, tokenizer):
    super().__init__()
    self.model, self.tokenizer = model, tokenizer
    self.vocab = tf.constant(tokenizer.vocab)
    self.prefill, self.decode = decoder_lib.step_functions(model)
    self.generate = tf.function(self._generate,
                                input_signature=_REQUEST_SPECS + _SAMPLING_SPECS)
    self.generate_greedy = tf.function(
        lambda prompt, max_new_tokens: self._generate(prompt, max_new_tokens),
        input_signature=_REQUEST_SPECS)
    self.tokenize = tf.function(
        lambda prompt: {"token_ids": self.tokenizer(prompt)},
        input_signature=[tf.TensorSpec([None], tf.string, name="prompt")])
    self._generate_ids = tf.function(self._left_aligned_ids, jit_compile=True)

  def signatures(self):
    return {"serving_default": self.generate_greedy, "generate": self.generate,
            "prefill": self.prefill, "decode": self.decode,
            "tokenize": self.tokenize}

  def _generate(self, prompt, max_new_tokens, temperature=GREEDY["temperature"],
                top_k=GREEDY["top_k"], top_p=GREEDY["top_p"],
                seed=GREEDY["seed"]):
    ids = self.tokenizer(prompt)  # [B, P]
    batch = tf.shape(ids)[0]
    with tf.control_dependencies(_request_checks(
        batch, max_new_tokens, self.model.max_length - 2,
        temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)):
      sampling = _per_row_sampling(batch, temperature, top_k, top_p, seed)
    lengths = tf.reduce_sum(tf.cast(tf.not_equal(ids, 0), tf.int32), 1)
    status = _row_status(lengths, self.model.max_length, sampling)
    ok = tf.equal(status, 0)
    # Rows that are not generated run as `[BOS] [SEP]` and are blanked after.
    lengths = tf.where(ok, lengths, 2)
    width = tf.reduce_max(tf.concat([lengths, [2]], 0))
    columns = tf.range(tf.shape(ids)[1])[None]
    blank = tf.where(columns == 0, BEGIN_ID, tf.where(columns == 1, SEPARATOR_ID, 0))
    ids = tf.where(ok[:, None], ids, blank)[:, :width]
    room = self.model.max_length - width + 1  # new tokens the batch has room for
    tokens = self._generate_ids(
        ids, lengths, tf.minimum(max_new_tokens, room), sampling.temperature,
        sampling.top_k, sampling.top_p, sampling.seed)[:, :max_new_tokens]
    fits = tf.range(tf.shape(tokens)[1])[None] < room  # [1, M]
    tokens = tf.where(fits, tokens, 0)
    ended = tf.cumsum(tf.cast(tf.equal(tokens, END_ID), tf.int32), 1)
    # [END] itself is kept in `token_ids`; nothing after it.
    token_ids = tf.where(ended - tf.cast(tf.equal(tokens, END_ID), tf.int32) > 0,
                         0, tokens)
    token_ids = tf.where(ok[:, None], token_ids, 0)
    num_tokens = tf.reduce_sum(tf.cast(tf.equal(ended, 0) & fits, tf.int32), 1)
    num_tokens = tf.where(ok, num_tokens, 0)
    full = ok & (room < max_new_tokens) & (ended[:, -1] == 0)
    status = tf.where(full, 1, status)
    words = tf.gather(self.vocab, token_ids)
    text = tf.strings.reduce_join(
        tf.RaggedTensor.from_tensor(words, lengths=num_tokens), axis=1,
        separator=" ")
    return {"text": text, "token_ids": token_ids, "num_tokens": num_tokens,
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
    tokens, _ = generation.generate(
        step, left, capacity, self.model.empty_caches(tf.shape(ids)[0]),
        sampling=generation.Sampling(temperature, top_k, top_p, seed),
        end_id=END_ID, limit=max_new_tokens)
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
          f"{most} (the model's cache, less a one-word prompt)")]
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


def _row_status(lengths, slots, sampling):
  """Each row's index in `STATUSES` before generating: 0 (to generate), or
  why not."""
  valid = ((sampling.temperature >= 0) & (sampling.top_k >= 0) &
           (sampling.top_p > 0) & (sampling.top_p <= 1))
  return tf.where(lengths <= 2, 2, tf.where(
      lengths > slots, 3, tf.where(valid, 0, 4)))
