"""The main job as a library: train the demo, export it, convert, compare.

`tf_mha.cli.export_saved_model` (`tf_mha_export`) is a thin command line
over `export_demo`.
"""

import dataclasses
import os
import time

import numpy as np
import tensorflow as tf
import tf_keras
from absl import logging

from tf_mha.demo import data
from tf_mha.demo import model as model_lib
from tf_mha.export import converter
from tf_mha.export import serving
from tf_mha.export import tflite

TRAIN_EXAMPLES, TEST_EXAMPLES = 6000, 1000
SAMPLE_TEXTS = ("the movie was good but the acting was not great",
                "the movie was not good but the acting was great",
                "the story was dull")


@dataclasses.dataclass
class Demo:
  vocab: list
  classifier: tf_keras.Model
  text_model: tf_keras.Model
  test_texts: list
  test_labels: np.ndarray
  accuracy: float


class ServingModule(tf.Module):
  """What TF Serving runs: strings in; probabilities, class id, label out."""

  def __init__(self, demo):
    super().__init__()
    self.text_model = demo.text_model
    self.classifier = demo.classifier
    self.tokenizer = demo.text_model.get_layer("tokenizer")
    self.labels = tf.constant(data.LABELS)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
  def serve(self, text):
    probabilities = self.text_model(text)
    class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    return {"probabilities": probabilities, "class_id": class_id,
            "label": tf.gather(self.labels, class_id)}

  @tf.function(input_signature=[
      tf.TensorSpec([None, None], tf.int32, name="token_ids")])
  def classify_ids(self, token_ids):
    return {"probabilities": self.classifier(token_ids)}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
  def tokenize(self, text):
    """The text front end alone: strings -> padded token ids (0 pads)."""
    return {"token_ids": self.tokenizer(text)}

  def signatures(self):
    return {"serving_default": self.serve, "classify_ids": self.classify_ids,
            "tokenize": self.tokenize}


@dataclasses.dataclass
class DemoData:
  """The generated corpus, its vocabulary and its token ids `[n, MAX_LENGTH]`."""
  vocab: list
  texts: list
  ids: np.ndarray
  labels: np.ndarray
  test_texts: list
  test_ids: np.ndarray
  test_labels: np.ndarray


def demo_data(seed=0):
  """Generates the data and builds the vocabulary, all offline."""
  texts, labels = data.make_examples(TRAIN_EXAMPLES, seed=seed)
  test_texts, test_labels = data.make_examples(TEST_EXAMPLES, seed=seed + 1)
  vocab = data.vocabulary(texts)
  tokenizer = model_lib.Tokenizer(vocab)

  def ids(batch):  # padded to the static length TPUs and XLA like
    out = tokenizer(tf.constant(batch)).numpy()
    return np.pad(out, [[0, 0], [0, model_lib.MAX_LENGTH - out.shape[1]]])

  return DemoData(vocab, texts, ids(texts), labels, test_texts,
                  ids(test_texts), test_labels)


def train_demo(epochs=6, seed=0):
  """Generates the data, builds the vocabulary and trains the model,
  logging one progress line per epoch."""
  tf_keras.utils.set_random_seed(seed)
  corpus = demo_data(seed)
  classifier = model_lib.build_classifier(len(corpus.vocab))
  text_model = model_lib.build_text_model(corpus.vocab, classifier)
  classifier.compile(tf_keras.optimizers.Adam(3e-3),
                     "sparse_categorical_crossentropy", metrics=["accuracy"])
  classifier.fit(corpus.ids, corpus.labels, batch_size=64, epochs=epochs,
                 validation_data=(corpus.test_ids, corpus.test_labels),
                 verbose=0, callbacks=[EpochLog(epochs)])
  _, accuracy = classifier.evaluate(corpus.test_ids, corpus.test_labels, verbose=0)
  return Demo(corpus.vocab, classifier, text_model, corpus.test_texts,
              corpus.test_labels, float(accuracy))


class EpochLog(tf_keras.callbacks.Callback):
  """One INFO line per epoch with the logged metrics (Keras' own progress
  bars go to stdout)."""

  _NAMES = {"val_accuracy": "held-out accuracy"}

  def __init__(self, epochs):
    super().__init__()
    self._epochs = epochs

  def on_epoch_end(self, epoch, logs=None):
    metrics = ", ".join(f"{self._NAMES.get(k, k)} {v:.4f}"
                        for k, v in (logs or {}).items())
    logging.info("  epoch %d/%d: %s", epoch + 1, self._epochs, metrics)


def id_samples(ids, lengths=(1, 5, 11, 20)):
  """`classify_ids` inputs of several batch sizes and lengths."""
  samples = []
  for i, length in enumerate(lengths):
    batch = ids[i * 8:(i + 1) * 8, :length]
    if batch.shape[1] < length:
      batch = np.pad(batch, [[0, 0], [0, length - batch.shape[1]]])
    samples.append({"token_ids": batch.astype(np.int32)})
  return samples


def calibration_samples(tokenize, count=512, batch_size=16, seed=7):
  """int8 calibration inputs: fresh generated sentences (not the test set)
  in batches cut to each batch's own longest sentence, so the lengths vary
  as they do in use. `tokenize`: strings -> padded ids."""
  texts, _ = data.make_examples(count, seed=seed)
  samples = []
  for start in range(0, count, batch_size):
    ids = tokenize(texts[start:start + batch_size])
    length = max(1, int(np.max(np.sum(ids != 0, axis=1))))
    samples.append({"token_ids": ids[:, :length].astype(np.int32)})
  return samples


@dataclasses.dataclass
class Report:
  saved_model_dir: str
  saved_model_bytes: int
  warmup_file: str
  tflite: dict  # quantization -> (path, bytes, max diff, accuracy)
  accuracy: float
  keras_vs_saved_model: float
  train_seconds: float
  tokenizer: tuple = ()  # (path, bytes, texts checked) of the tokenizer model

  def lines(self):
    out = [f"demo accuracy (held-out, Keras): {self.accuracy:.4f}",
           f"training time: {self.train_seconds:.1f} s",
           f"SavedModel: {self.saved_model_dir} "
           f"({self.saved_model_bytes / 1e6:.2f} MB)",
           f"  warmup requests: {self.warmup_file or 'not written (install tensorflow-serving-api)'}",
           f"  max |Keras - reloaded SavedModel|: {self.keras_vs_saved_model:.3g}"]
    for name, (path, size, diff, acc) in self.tflite.items():
      out.append(f"TFLite ({name}): {path} ({size / 1e3:.1f} kB), "
                 f"max |TFLite - SavedModel| {diff:.3g}, accuracy {acc:.4f}")
    if self.tokenizer:
      path, size, count = self.tokenizer
      out.append(f"TFLite tokenizer (tensorflow-text ops): {path} ({size / 1e3:.1f} kB), "
                 f"same ids as the SavedModel on {count} texts")
    return out


def export_demo(output_dir="saved_models", model_name="tf_mha_demo",
                version=None, overwrite=False, epochs=6,
                quantizations=("none",)):
  """Trains, exports for Serving, converts to TFLite and compares all three."""
  check_export(output_dir, model_name, version, overwrite, quantizations)
  start = time.time()
  logging.info("Training the demo model (%d examples, %d epochs)...",
               TRAIN_EXAMPLES, epochs)
  demo = train_demo(epochs=epochs)
  train_seconds = time.time() - start
  module = ServingModule(demo)
  logging.info("Exporting the SavedModel under %s ...", output_dir)
  path = serving.export(
      module, output_dir, model_name, version, signatures=module.signatures(),
      overwrite=overwrite,
      warmup_inputs={"text": np.array(SAMPLE_TEXTS, dtype=object)})
  warmup = os.path.join(path, serving.WARMUP_FILE)
  loaded = tf.saved_model.load(path)
  served = loaded.signatures["serving_default"](text=tf.constant(demo.test_texts))
  keras_probs = demo.text_model(tf.constant(demo.test_texts)).numpy()
  keras_vs_saved = float(np.max(np.abs(served["probabilities"].numpy() - keras_probs)))
  artifact = lambda kind: artifact_path(path, model_name, f"{kind}.tflite")
  tflite_results = {}
  for quantize in quantizations:
    logging.info("Converting to TFLite (%s)...", quantize)
    tflite_results[quantize] = convert_and_check(
        path, quantize, artifact(quantize), loaded=loaded)
  logging.info("Converting the tokenizer to TFLite...")
  tokenizer = convert_tokenizer(path, artifact("tokenizer"), loaded=loaded)
  return Report(path, serving.directory_size(path),
                warmup if os.path.exists(warmup) else "", tflite_results,
                demo.accuracy, keras_vs_saved, train_seconds, tokenizer)


def check_export(output_dir, model_name, version, overwrite, quantizations):
  """Checks a demo export's arguments before a minute is spent training:
  `tflite.check_quantization` and `serving.check_destination`."""
  for quantize in quantizations:
    tflite.check_quantization(quantize)
  serving.check_destination(output_dir, model_name, version, overwrite)


def artifact_path(version_dir, model_name, suffix):
  """`<output_dir>/<model_name>_<version>_<suffix>`: a file exported beside
  the SavedModel version `version_dir` (`<output_dir>/<model_name>/<v>`)."""
  output_dir = os.path.dirname(os.path.dirname(os.path.normpath(version_dir)))
  return os.path.join(output_dir,
                      f"{model_name}_{os.path.basename(version_dir)}_{suffix}")


def convert_tokenizer(saved_model_dir, output_file, count=300, loaded=None,
                      texts=None):
  """The `tokenize` signature as its own TFLite model: builtins plus
  tensorflow-text's TFLite kernels (run it with `tflite.interpreter(path,
  text_ops=True)`). Checked id for id against the SavedModel, then written
  atomically.

  Args:
    saved_model_dir: a demo export's version directory.
    output_file: where the `.tflite` goes.
    count: how many generated texts to compare on, when `texts` is None.
    loaded: `saved_model_dir` already loaded, if the caller has it.
    texts: the strings to compare on; None: `count` of the classifier's
      generated sentences, a third of them upper-cased.

  Returns:
    `(output_file, size in bytes, texts checked)`.
  """
  loaded = loaded or _load_demo(saved_model_dir)
  if texts is None:
    texts, _ = data.make_examples(count, seed=3)
    texts = [t.upper() if i % 3 == 0 else t for i, t in enumerate(texts)]
  signature = loaded.signatures["tokenize"]
  (name,) = signature.structured_input_signature[1]
  model = tflite.convert(saved_model_dir, signature="tokenize", text_ops=True)
  flex = [op for op in tflite.operators(model) if op.startswith("CUSTOM:Flex")]
  if flex:
    raise tflite.ConversionMismatch(f"the tokenizer needs select TF ops: {flex}")
  want = signature(**{name: tf.constant(texts)})["token_ids"].numpy()
  got = tflite.run(model, "tokenize", {name: np.array(texts)},
                   text_ops=True)["token_ids"]
  if got.shape != want.shape or np.any(got != want):
    raise tflite.ConversionMismatch(
        "the TFLite tokenizer's ids differ from the SavedModel's")
  tflite.atomic_write(output_file, model)
  return output_file, len(model), len(texts)


def convert_and_check(saved_model_dir, quantize, output_file, loaded=None):
  """Converts a demo export's `classify_ids` to TFLite and checks it.

  Compares the TFLite model with the SavedModel on samples of several
  lengths, measures its accuracy on the held-out demo data, and only then
  writes `output_file` (atomically). `loaded`: `saved_model_dir` already
  loaded, if the caller has it.

  Returns:
    `(output_file, size in bytes, max |TFLite - SavedModel|, accuracy)`.

  Raises:
    ValueError: the SavedModel is not a tf_mha demo export, or
      `output_file` cannot be written (checked before converting).
    tflite.ConversionMismatch: float32 differs by more than 1e-4.
  """
  tflite.check_quantization(quantize)
  tflite.check_output_file(output_file)
  loaded = loaded or _load_demo(saved_model_dir)
  texts, labels = data.make_examples(TEST_EXAMPLES, seed=1)
  tokenize = lambda batch: loaded.signatures["tokenize"](
      text=tf.constant(batch))["token_ids"].numpy()
  ids = tokenize(texts)
  calibration = None
  if quantize == "int8":
    calibration = {"classify_ids": calibration_samples(tokenize)}
  conversion = converter.convert_saved_model(
      saved_model_dir, output_file, signatures=["classify_ids"],
      quantize=quantize, calibration_data=calibration,
      sample_data={"classify_ids": id_samples(ids)}, loaded=loaded)
  probs = tflite.run(output_file, "classify_ids",
                     {"token_ids": ids.astype(np.int32)})
  accuracy = float(np.mean(np.argmax(probs["probabilities"], -1) == labels))
  diff = max(conversion.differences["classify_ids"].values())
  return output_file, conversion.size, diff, accuracy


def is_classifier_export(saved_model_dir):
  """Whether `saved_model_dir` is the classifier demo's export (its
  signatures read from saved_model.pb, without loading the model)."""
  path = os.path.join(saved_model_dir, "saved_model.pb")
  if not os.path.isfile(path):
    return False
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
  proto = saved_model_pb2.SavedModel()
  try:
    with open(path, "rb") as f:
      proto.ParseFromString(f.read())
  except Exception:  # pylint: disable=broad-except  (not a SavedModel: the caller says so)
    return False
  keys = {key for graph in proto.meta_graphs for key in graph.signature_def}
  return {"tokenize", "classify_ids"} <= keys


def _load_demo(saved_model_dir):
  """Loads a demo export, refusing SavedModels without its signatures."""
  loaded = tf.saved_model.load(saved_model_dir)
  if not {"tokenize", "classify_ids"} <= set(loaded.signatures):
    raise ValueError(
        f"`saved_model_dir`={saved_model_dir!r} is not a tf_mha demo export "
        f"(signatures: {sorted(loaded.signatures)}; need tokenize, classify_ids)")
  return loaded


