"""The generator half of the main job: train the decoder, export it for TF
Serving, convert `prefill`/`decode` to TFLite, and compare them all.

Files, beside the classifier's, for `<name>` and version `<v>`:
  * `<output_dir>/<name>/<v>/`: the SavedModel (`generator.GeneratorModule`);
  * `<output_dir>/<name>_<v>_{none,float16,dynamic_range,int8}.tflite`:
    `prefill` and `decode`, builtin operators only;
  * `<output_dir>/<name>_<v>_tokenizer.tflite`: prompt strings -> ids
    (tensorflow-text's TFLite kernels), and `<name>_<v>_vocab.txt`, one
    token per line, to turn ids back into words.
"""

import dataclasses
import os
import re
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import logging

from tf_mha.demo import decoder as decoder_lib
from tf_mha.demo import generator
from tf_mha.demo import pipeline
from tf_mha.demo import sequences
from tf_mha.demo import text_generation
from tf_mha.export import litert_generation
from tf_mha.export import serving
from tf_mha.export import tflite

SIGNATURES = ("generate", "prefill", "decode", "tokenize")
# New tokens asked for when measuring: more than any answer needs.
MAX_NEW_TOKENS = sequences.MAX_WORDS + 2


@dataclasses.dataclass
class GeneratorReport:
  saved_model_dir: str
  saved_model_bytes: int
  warmup_file: str
  accuracy: dict  # "Keras", "SavedModel" -> exact-match on held-out prompts
  tflite: dict  # quantization -> (path, bytes, exact-match, decode tokens/s)
  prompts: int
  train_seconds: float
  tokenizer: tuple  # (path, bytes, prompts checked)
  vocab_file: str
  model: object = None  # the trained Keras decoder

  def lines(self):
    out = [f"generator exact-match ({self.prompts} held-out prompts): " + ", ".join(
               f"{k} {v:.4f}" for k, v in self.accuracy.items()),
           f"generator training time: {self.train_seconds:.1f} s",
           f"SavedModel: {self.saved_model_dir} ({self.saved_model_bytes / 1e6:.2f}"
           f" MB), signatures {', '.join(SIGNATURES)}",
           f"  warmup requests: {self.warmup_file or 'not written (install tensorflow-serving-api)'}"]
    for name, (path, size, accuracy, speed) in self.tflite.items():
      out.append(f"TFLite prefill/decode ({name}): {path} ({size / 1e3:.1f} kB), "
                 f"exact-match {accuracy:.4f}, decode {speed:.0f} tokens/s in LiteRT")
    path, size, count = self.tokenizer
    out.append(f"TFLite tokenizer: {path} ({size / 1e3:.1f} kB), same ids as the "
               f"SavedModel on {count} prompts; vocabulary: {self.vocab_file}")
    return out


def export_generator(output_dir="saved_models", model_name="tf_mha_generator",
                     version=None, overwrite=False, epochs=5,
                     quantizations=("none",)):
  """Trains, exports for Serving, converts to TFLite and compares all three."""
  pipeline.check_export(output_dir, model_name, version, overwrite, quantizations)
  start = time.time()
  logging.info("Training the generator (%d prompts, %d epochs)...",
               generator.TRAIN_PROMPTS, epochs)
  demo = generator.train_generator(epochs=epochs, log=pipeline.EpochLog(epochs))
  train_seconds = time.time() - start
  module = generator.GeneratorModule(demo.model, demo.tokenizer)
  logging.info("Exporting the generator's SavedModel under %s ...", output_dir)
  path = serving.export(
      module, output_dir, model_name, version, signatures=module.signatures(),
      overwrite=overwrite, warmup_inputs={
          "prompt": np.array(demo.held_out[:2], dtype=object),
          "max_new_tokens": np.array(MAX_NEW_TOKENS, np.int32)})
  loaded = tf.saved_model.load(path)
  served = generate(loaded, demo.held_out)
  accuracy = {"Keras": demo.accuracy, "SavedModel": generator.exact_match(
      demo.held_out, served["text"])}
  artifact = lambda suffix: pipeline.artifact_path(path, model_name, suffix)
  results = {}
  with tempfile.TemporaryDirectory() as litert_dir:
    decoder_lib.save_for_litert(demo.model, litert_dir)
    for quantize in quantizations:
      logging.info("Converting the generator to TFLite (%s)...", quantize)
      results[quantize] = convert_and_check(
          litert_dir, quantize, artifact(f"{quantize}.tflite"), loaded,
          demo.held_out, served)
  tokenizer = pipeline.convert_tokenizer(
      path, artifact("tokenizer.tflite"), loaded=loaded, texts=demo.held_out)
  vocab_file = artifact("vocab.txt")
  tflite.atomic_write(vocab_file, "".join(
      f"{token}\n" for token in demo.tokenizer.vocab).encode())
  warmup = os.path.join(path, serving.WARMUP_FILE)
  return GeneratorReport(path, serving.directory_size(path),
                         warmup if os.path.exists(warmup) else "", accuracy,
                         results, len(demo.held_out), train_seconds, tokenizer,
                         vocab_file, demo.model)


def generate(loaded, prompts, max_new_tokens=MAX_NEW_TOKENS):
  """The SavedModel's `generate` on `prompts`: texts and token ids."""
  out = loaded.signatures["generate"](
      prompt=tf.constant(prompts), max_new_tokens=tf.constant(max_new_tokens),
      **generator.GREEDY)
  return {"text": [t.decode() for t in out["text"].numpy().tolist()],
          "token_ids": out["token_ids"].numpy(),
          "num_tokens": out["num_tokens"].numpy()}


def representative_inputs(loaded, prompts, length=8, count=16):
  """int8 calibration: `prefill` of `count` prompts of `length` tokens (one
  length: TensorFlow 2.21's calibrator fails to resize a model of several
  signatures between lengths), then each `decode` step of their answers,
  with the caches the SavedModel wrote."""
  tokenize = loaded.signatures["tokenize"]
  ids = [row for row in tokenize(prompt=tf.constant(prompts))["token_ids"].numpy()
         if np.count_nonzero(row) == length][:count]
  specs = loaded.signatures["prefill"].structured_input_signature[1]
  caches = {n: np.zeros([1] + spec.shape.as_list()[1:], np.float32)
            for n, spec in specs.items() if re.fullmatch(r"kv_cache_\d+", n)}
  samples = []
  for row in ids:
    key, inputs = "prefill", {
        "token_ids": row[None, :length],
        "positions": np.arange(length, dtype=np.int32)[None],
        "cache_index": np.array(0, np.int32), **caches}
    for index in range(length, length + sequences.MAX_WORDS):
      samples.append((key, inputs))
      out = loaded.signatures[key](**{k: tf.constant(v) for k, v in inputs.items()})
      token = tf.argmax(out["logits"][:, -1], -1, output_type=tf.int32).numpy()
      key, inputs = "decode", {
          "token_ids": token[:, None], "positions": np.array([[index]], np.int32),
          "cache_index": np.array(index, np.int32),
          **{n: out[n].numpy() for n in caches}}
  return samples


def convert_and_check(saved_model_dir, quantize, output_file, loaded, prompts,
                      served):
  """Converts `prefill` and `decode` to TFLite and checks the result.

  `saved_model_dir` holds them for batch 1 (`decoder.save_for_litert`);
  `loaded` is the serving export, the reference.

  Runs the whole generation loop in LiteRT on every prompt; the float32
  model must generate token for token what the SavedModel did (`served`,
  from `generate`), every model builtin operators only. Only then is
  `output_file` written (atomically).

  Returns:
    `(output_file, size in bytes, exact-match, decode tokens/s in LiteRT)`.

  Raises:
    tflite.ConversionMismatch: custom or Flex operators, or float32 tokens
      that differ from the SavedModel's.
  """
  tflite.check_output_file(output_file)
  calibration = (representative_inputs(loaded, prompts) if quantize == "int8"
                 else None)
  model = tflite.convert(saved_model_dir, signature=["prefill", "decode"],
                         quantize=quantize, representative_inputs=calibration)
  custom = [op for op in tflite.operators(model) if op.startswith("CUSTOM")]
  if custom:
    raise tflite.ConversionMismatch(f"prefill/decode need non-builtin ops: {custom}")
  runner = litert_generation.Generator(model)
  ids = loaded.signatures["tokenize"](prompt=tf.constant(prompts))["token_ids"].numpy()
  texts, steps, differ = [], [], 0
  for row, want in zip(ids, served["token_ids"]):
    result = runner.generate(row[row != 0].tolist(), MAX_NEW_TOKENS,
                             end_id=generator.END_ID)
    texts.append(text_generation.detokenize(result.token_ids, generator.VOCAB))
    steps += result.step_seconds
    got = np.zeros_like(want)
    got[:len(result.token_ids)] = result.token_ids
    differ += int(np.any(got != want))
  if quantize == "none" and differ:
    raise tflite.ConversionMismatch(
        f"float32 TFLite generated other tokens than the SavedModel on "
        f"{differ} of {len(prompts)} prompts")
  tflite.atomic_write(output_file, model)
  return (output_file, len(model), generator.exact_match(prompts, texts),
          len(steps) / max(sum(steps), 1e-12))
