"""The demo model: raw strings -> tensorflow-text tokenizer -> a small
Transformer encoder built from `tf_mha.MultiHeadAttention` -> 2 classes.

Two Keras models share weights: `classifier` maps token ids `[B, T]` to class
probabilities (this is what converts to TFLite builtins), and `text_model`
puts the tokenizer in front of it (this is what TF Serving runs).
"""

import tensorflow as tf
import tensorflow_text as tf_text
import tf_keras

import tf_mha

layers = tf_keras.layers
MAX_LENGTH = 32


class Tokenizer(layers.Layer):
  """Strings `[B]` -> padded ids `[B, T]` (0 pads, T <= max_length).

  Lower-cases with `FastBertNormalizer` and splits with
  `FastWordpieceTokenizer`: both have TFLite kernels in tensorflow-text, so
  this layer also converts to a small TFLite model of its own.

  Args:
    vocab: list of tokens; index 0 is the pad, "[UNK]" must be present.
    max_length: tokens kept per text; None keeps them all.
  """

  def __init__(self, vocab, max_length=MAX_LENGTH, **kwargs):
    super().__init__(trainable=False, **kwargs)
    self.vocab = list(vocab)
    self.max_length = max_length
    self._normalizer = tf_text.FastBertNormalizer(lower_case_nfd_strip_accents=True)
    self._tokenizer = tf_text.FastWordpieceTokenizer(
        vocab=self.vocab, unknown_token="[UNK]", token_out_type=tf.int32,
        no_pretokenization=False)

  def call(self, texts):
    ids = self._tokenizer.tokenize(self._normalizer.normalize(texts))  # ragged [B, (T)]
    # Cut after padding: slicing the ragged tensor needs RaggedRange, which
    # has no TFLite kernel.
    ids = ids.to_tensor(default_value=0)
    return ids if self.max_length is None else ids[:, :self.max_length]

  def get_config(self):
    return {**super().get_config(), "vocab": self.vocab,
            "max_length": self.max_length}


class PositionEmbedding(layers.Layer):
  """Learned position embeddings added to `[B, T, D]` (T <= max_length)."""

  def __init__(self, max_length, **kwargs):
    super().__init__(**kwargs)
    self.max_length = max_length
    self.supports_masking = True

  def build(self, input_shape):
    self.positions = self.add_weight(
        "positions", shape=(self.max_length, input_shape[-1]),
        initializer=tf_keras.initializers.RandomNormal(stddev=0.02))
    super().build(input_shape)

  def call(self, x, positions=None):
    """`positions` `[B, T]`: each token's position (packed rows restart at
    every sentence); None: 0 to T - 1."""
    if positions is not None:
      return x + tf.gather(self.positions, positions)
    length = tf.shape(x)[1]
    return x + tf.expand_dims(self.positions[:length], 0)

  def get_config(self):
    return {**super().get_config(), "max_length": self.max_length}


def encoder_block(x, mask, *, num_heads, key_dim, ff_dim, dropout, name):
  """Pre-norm Transformer block: self-attention then a feed-forward net."""
  h = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln1")(x)
  h = tf_mha.MultiHeadAttention(num_heads, key_dim, dropout=dropout,
                                name=f"{name}_mha")(h, h, attention_mask=mask)
  x = layers.Add(name=f"{name}_add1")([x, h])
  h = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln2")(x)
  h = layers.Dense(ff_dim, activation="gelu", name=f"{name}_ff1")(h)
  h = layers.Dense(x.shape[-1], name=f"{name}_ff2")(h)
  return layers.Add(name=f"{name}_add2")([x, h])


def build_classifier(vocab_size, *, dim=32, num_heads=2, num_layers=2,
                     num_classes=2, dropout=0.0):
  """Token ids `[B, T]` (0 pads) -> class probabilities `[B, num_classes]`."""
  ids = tf_keras.Input((None,), dtype="int32", name="token_ids")
  valid = layers.Lambda(lambda t: tf.cast(tf.not_equal(t, 0), tf.float32),
                        name="valid")(ids)  # [B, T]
  # [B, 1, S]: every query attends to the real tokens only.
  mask = layers.Lambda(lambda v: tf.expand_dims(v, 1), name="key_mask")(valid)
  x = layers.Embedding(vocab_size, dim, name="embed")(ids)
  x = PositionEmbedding(MAX_LENGTH, name="positions")(x)
  for i in range(num_layers):
    x = encoder_block(x, mask, num_heads=num_heads, key_dim=dim // num_heads,
                      ff_dim=2 * dim, dropout=dropout, name=f"block{i}")
  x = layers.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
  pooled = layers.Lambda(_masked_mean, name="pool")([x, valid])
  probs = layers.Dense(num_classes, activation="softmax", name="probs",
                       dtype="float32")(pooled)  # float32 under mixed precision
  return tf_keras.Model(ids, probs, name="classifier")


def _masked_mean(inputs):
  x, valid = inputs
  weights = tf.expand_dims(valid, -1)
  return tf.reduce_sum(x * weights, 1) / tf.maximum(tf.reduce_sum(weights, 1), 1.0)


def build_text_model(vocab, classifier):
  """Strings `[B]` -> class probabilities, sharing `classifier`'s weights."""
  texts = tf_keras.Input((), dtype="string", name="text")
  ids = Tokenizer(vocab, name="tokenizer")(texts)
  return tf_keras.Model(texts, classifier(ids), name="text_classifier")
