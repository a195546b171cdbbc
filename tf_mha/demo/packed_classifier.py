"""The demo classifier on packed rows: several sentences per row, one
prediction per sentence.

`build_packed` makes a second Keras model over the classifier's own layers
(shared weights): packed `token_ids`, `segment_ids` and `token_positions`
`[B, L]` (the packer's `positions`)
in, class probabilities per segment `[B, M, C]` out. Its attention takes the
segment ids (no token sees another sentence, and the blocks between them are
skipped), its position embeddings read each token's position in its own
sentence, and it pools each segment as the classifier pools a sentence, so
every sentence gets the prediction the classifier gives it alone.
`train_packed` trains through it on rows packed by `tf_mha.data.pack`.
"""

import numpy as np
import tensorflow as tf
import tf_keras

import tf_mha.data
from tf_mha.demo import model as model_lib
from tf_mha.demo import pipeline

ROW_LENGTH = 128
MAX_SEGMENTS = 32


def build_packed(classifier, length=ROW_LENGTH, max_segments=MAX_SEGMENTS):
  """Packed rows -> per-segment probabilities, over `classifier`'s layers."""
  ids = tf_keras.Input((length,), dtype="int32", name="token_ids")
  segment_ids = tf_keras.Input((length,), dtype="int32", name="segment_ids")
  positions = tf_keras.Input((length,), dtype="int32", name="token_positions")
  x = classifier.get_layer("embed")(ids)
  x = classifier.get_layer("positions")(x, positions=positions)
  blocks = sorted({layer.name.split("_")[0] for layer in classifier.layers
                   if layer.name.startswith("block")})
  for name in blocks:
    x = _block(classifier, name, x, segment_ids)
  x = classifier.get_layer("final_ln")(x)
  pooled = tf_keras.layers.Lambda(
      lambda t: _segment_means(*t, max_segments), name="segment_pool")(
          [x, segment_ids])  # [B, M, D]
  probs = classifier.get_layer("probs")(pooled)
  return tf_keras.Model([ids, segment_ids, positions], probs,
                        name="packed_classifier")


def _block(classifier, name, x, segment_ids):
  """The classifier's block `name`, its attention on segment ids."""
  get = lambda part: classifier.get_layer(f"{name}_{part}")
  h = get("ln1")(x)
  h = get("mha")(h, h, segment_ids=segment_ids)
  x = get("add1")([x, h])
  h = get("ff2")(get("ff1")(get("ln2")(x)))
  return get("add2")([x, h])


def _segment_means(x, segment_ids, max_segments):
  """`x` `[B, L, D]` averaged over each segment: `[B, M, D]` (0 where a
  row has fewer segments)."""
  onehot = tf.one_hot(segment_ids - 1, max_segments, dtype=x.dtype)  # [B, L, M]
  sums = tf.einsum("BLM,BLD->BMD", onehot, x)
  counts = tf.reduce_sum(onehot, axis=1)[:, :, None]  # [B, M, 1]
  return sums / tf.maximum(counts, 1.0)


def pack_corpus(ids, labels, length=ROW_LENGTH, max_segments=MAX_SEGMENTS):
  """Padded sentences `[n, T]` and labels -> packed rows (numpy dicts):
  `token_ids`, `segment_ids`, `positions` `[R, L]`; `label` and `index`
  (each segment's sentence in `ids`) `[R, M]`."""
  lengths = np.count_nonzero(ids, axis=1)
  dataset = tf.data.Dataset.from_tensor_slices(
      {"token_ids": tf.RaggedTensor.from_tensor(ids, lengths=lengths),
       "label": labels.astype(np.int32),
       "index": np.arange(len(ids), dtype=np.int32)})
  packed = tf_mha.data.pack(dataset, length, buffer_size=len(ids),
                            max_segments=max_segments)
  rows = next(iter(packed.batch(len(ids))))
  return {name: value.numpy() for name, value in rows.items()}


def train_packed(epochs=6, seed=0, batch_size=16):
  """Trains the demo classifier through its packed model on packed rows.

  Returns:
    `(classifier, packed model, corpus, test accuracy of the classifier,
    fraction of padding in the packed training rows)`.
  """
  tf_keras.utils.set_random_seed(seed)
  corpus = pipeline.demo_data(seed)
  classifier = model_lib.build_classifier(len(corpus.vocab))
  packed = build_packed(classifier)
  rows = pack_corpus(corpus.ids, corpus.labels)
  real = (np.arange(MAX_SEGMENTS)[None] <
          rows["segment_ids"].max(axis=1)[:, None]).astype(np.float32)
  packed.compile(tf_keras.optimizers.Adam(3e-3),
                 "sparse_categorical_crossentropy")
  packed.fit([rows["token_ids"], rows["segment_ids"], rows["positions"]],
             rows["label"], sample_weight=real, batch_size=batch_size,
             epochs=epochs, verbose=0)
  probs = classifier.predict(corpus.test_ids, verbose=0)
  accuracy = float(np.mean(np.argmax(probs, -1) == corpus.test_labels))
  padding = 1.0 - np.count_nonzero(rows["segment_ids"]) / rows["segment_ids"].size
  return classifier, packed, corpus, accuracy, padding
