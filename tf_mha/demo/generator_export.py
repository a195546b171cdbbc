"""The generator half of the main job: train the decoder, export it for TF
Serving, convert `prefill`/`decode` to TFLite, and compare them all.

Files, beside the classifier's, for `<name>` and version `<v>`:
  * `<output_dir>/<name>/<v>/`: the SavedModel (`generator.GeneratorModule`);
  * `<output_dir>/<name>_<v>_{none,float16,dynamic_range,int8}.tflite`:
    `prefill` and `decode`, builtin operators only;
  * `<output_dir>/<name>_<v>_tokenizer.tflite`: prompt strings -> ids
    (tensorflow-text's TFLite kernels), and `<name>_<v>_vocab.txt`, one
    token per line, to turn ids back into words;
  * `<output_dir>/<name>.litertlm` (float32) and
    `<name>_dynamic_range.litertlm`: the decoder, its SentencePiece
    tokenizer (`sequences.sentencepiece_model`: the SavedModel's ids), `[BOS]`
    prepended, `[END]` to stop and " [SEP]" after the prompt, for LiteRT-LM:
    `litert-lm run saved_models/tf_mha_generator.litertlm --prompt "red fox sun"`.
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
from tf_mha.export import decoder_signatures
from tf_mha.export import litert_generation
from tf_mha.export import litertlm
from tf_mha.export import litertlm_file
from tf_mha.export import serving
from tf_mha.export import tflite

SIGNATURES = ("generate", "prefill", "decode", "tokenize")
# New tokens asked for when measuring: more than any answer needs.
MAX_NEW_TOKENS = sequences.MAX_WORDS + 2
# The .litertlm files: their quantizations, prefill lengths (each divides
# the cache's 48 slots) and the prompt template's text after a prompt.
LITERTLM_QUANTIZATIONS = ("none", "dynamic_range")
LITERTLM_PREFILLS = (8, 16)
USER_SUFFIX = " " + sequences.SEPARATOR


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
  # quantization -> (path, bytes, exact-match, decode tokens/s in LiteRT-LM)
  litertlm: dict = dataclasses.field(default_factory=dict)
  same_ids: int = 0  # prompts the SentencePiece model tokenizes as the SavedModel
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
    for name, (path, size, accuracy, speed) in self.litertlm.items():
      out.append(f"LiteRT-LM ({name}): {path} ({size / 1e3:.1f} kB), exact-match "
                 f"{accuracy:.4f}, decode {speed:.0f} tokens/s")
    if self.litertlm:
      out.append(f"  its SentencePiece tokenizer gives the SavedModel's ids on "
                 f"{self.same_ids} prompts")
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
  litertlm_files, same_ids = export_litertlm(
      demo.model, output_dir, model_name, loaded, demo.held_out)
  warmup = os.path.join(path, serving.WARMUP_FILE)
  return GeneratorReport(path, serving.directory_size(path),
                         warmup if os.path.exists(warmup) else "", accuracy,
                         results, len(demo.held_out), train_seconds, tokenizer,
                         vocab_file, litertlm_files, same_ids, demo.model)


def export_litertlm(model, output_dir, model_name, loaded, prompts):
  """Writes `<output_dir>/<model_name>.litertlm` and its dynamic-range twin
  (`LITERTLM_QUANTIZATIONS`), each checked by `litertlm.convert`, then run
  in LiteRT-LM on `prompts`.

  Returns:
    `({quantization: (path, bytes, exact-match, decode tokens/s)}, the
    number of prompts, also capitalised, that the SentencePiece model
    tokenizes as the SavedModel's `tokenize`)`.

  Raises:
    ValueError: the SentencePiece model gives other ids than the SavedModel.
  """
  same = _check_sentencepiece_ids(loaded, prompts + [p.title() for p in prompts])
  results = {}
  with tempfile.TemporaryDirectory() as scratch:
    tokenizer = os.path.join(scratch, "tokenizer.model")
    with open(tokenizer, "wb") as f:
      f.write(sequences.sentencepiece_model())
    saved = decoder_signatures.save_decoder(
        model, os.path.join(scratch, "litertlm"),
        prefill_lengths=LITERTLM_PREFILLS, tokenizer=tokenizer,
        start_token=generator.BEGIN_ID, stop_tokens=[generator.END_ID],
        user_suffix=USER_SUFFIX)
    for quantize in LITERTLM_QUANTIZATIONS:
      logging.info("Packing the generator for LiteRT-LM (%s)...", quantize)
      suffix = "" if quantize == "none" else f"_{quantize}"
      path = os.path.join(output_dir, f"{model_name}{suffix}.litertlm")
      conversion = litertlm.convert(saved, path, quantize=quantize,
                                    prompt=prompts[0])
      texts, speeds = run_litertlm(path, prompts)
      results[quantize] = (path, conversion.size,
                           generator.exact_match(prompts, texts),
                           float(np.median(speeds)))
  return results, same


def run_litertlm(path, prompts):
  """Greedy answers of the `.litertlm` file in LiteRT-LM, one session per
  prompt (the template's " [SEP]" added, the runtime prepending `[BOS]`),
  and each prompt's decode tokens/s."""
  engine = litertlm_file.engine(path)
  texts, speeds = [], []
  try:
    for prompt in prompts:
      generated = litertlm_file.run_greedy(engine, prompt + USER_SUFFIX,
                                           MAX_NEW_TOKENS)
      texts.append(generated.text)
      speeds.append(generated.decode_tokens_per_second)
  finally:
    engine.close()
  return texts, speeds


def _check_sentencepiece_ids(loaded, prompts):
  """The number of `prompts` checked: the SentencePiece model's ids (after
  `[BOS]`, with the template's " [SEP]") equal the SavedModel's `tokenize`."""
  import sentencepiece  # pylint: disable=g-import-not-at-top
  model = sentencepiece.SentencePieceProcessor(
      model_proto=sequences.sentencepiece_model())
  ids = loaded.signatures["tokenize"](prompt=tf.constant(prompts))["token_ids"].numpy()
  for prompt, row in zip(prompts, ids):
    want = row[row != 0].tolist()
    got = [generator.BEGIN_ID] + model.encode(prompt + USER_SUFFIX)
    if got != want:
      raise ValueError(f"The SentencePiece tokenizer gives {got} for "
                       f"{prompt!r}, the SavedModel {want}.")
  return len(prompts)


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
