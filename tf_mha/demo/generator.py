"""The generator demo: a decoder trained to reverse lists of words, and the
`tf.Module` that TF Serving runs.

Shapes: `B` batch, `P` prompt tokens, `L` new tokens of a step, `M` new
tokens, `S` cache slots, `V` vocabulary.

A prompt's tokens are `[BOS] words... [SEP]`; the answer follows, then
`[END]`. The SavedModel's signatures are `decoder_serving.DecoderModule`'s
(`generate`, `serving_default`, `prefill`, `decode`, `tokenize`), but
`tokenize` gives `token_ids` `[B, P]` only, 0-padded on the right (the TFLite
tokenizer is converted from it).
"""

import dataclasses

import numpy as np
import tensorflow as tf
import tf_keras

from tf_mha.demo import decoder as decoder_lib
from tf_mha.demo import model as model_lib
from tf_mha.demo import sequences
from tf_mha.export import decoder_serving
from tf_mha.models import transformer

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
  model: transformer.CausalLM  # `tf_mha.models.demo`'s decoder
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


GREEDY, STATUSES = decoder_serving.GREEDY, decoder_serving.STATUSES


class GeneratorModule(decoder_serving.DecoderModule):
  """What TF Serving runs (see the module doc for the signatures): the
  decoder with the demo's word tokenizer; a prompt is "empty" without a
  word between `[BOS]` and `[SEP]`, and the text joins the answer's words."""

  def __init__(self, model, tokenizer):
    self.tokenizer = tokenizer
    self.vocab = tf.constant(tokenizer.vocab)
    super().__init__(model, encode=self._encode_prompts,
                     detokenize=self._join_words, end_id=END_ID,
                     min_prompt_tokens=3)

  def _encode_prompts(self, prompt):
    ids = self.tokenizer(prompt)  # [B, P]
    return ids, tf.reduce_sum(tf.cast(tf.not_equal(ids, 0), tf.int32), 1)

  def _join_words(self, token_ids, num_tokens):
    words = tf.gather(self.vocab, token_ids)
    return tf.strings.reduce_join(
        tf.RaggedTensor.from_tensor(words, lengths=num_tokens), axis=1,
        separator=" ")

  def _tokenize(self, prompt):
    return {"token_ids": self.tokenizer(prompt)}
