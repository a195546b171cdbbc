"""Generate text from a generator export: its SavedModel, or its `.tflite`
files run entirely in LiteRT (tokenizer, prefill, decode loop).

What `tools/generate.py` (`tf_mha_generate`) calls.
"""

import dataclasses
import os
import re
import time

import numpy as np

from tf_mha.demo import sequences
from tf_mha.generation import samplers

_GREEDY = samplers.Sampling(temperature=0.0, top_k=0, top_p=1.0, seed=0)


@dataclasses.dataclass
class Result:
  texts: list  # one generated string per prompt
  new_tokens: int  # tokens generated, end tokens included
  seconds: float  # generating them (the SavedModel: the whole `generate`)
  prompt_tokens: int = 0
  prefill_seconds: float = 0.0  # LiteRT only
  status: list = None  # one per prompt: "ok", or why it was not generated

  @property
  def tokens_per_second(self):
    return self.new_tokens / max(self.seconds, 1e-12)


def check_prompts(prompts):
  """Raises a ValueError naming `prompt` unless every prompt has a word."""
  if not prompts:
    raise ValueError("`prompt`: give at least one prompt.")
  for prompt in prompts:
    if not isinstance(prompt, str) or not prompt.split():
      raise ValueError("`prompt` must be non-empty text (a prompt needs at "
                       f"least one word). Received: prompt={prompt!r}")


def from_saved_model(model_dir, prompts, max_new_tokens, sampling=None):
  """Runs the SavedModel's `generate` signature (once to compile, then
  timed), greedy or with `sampling` (a `generation.Sampling` of scalars).

  Raises:
    ValueError: `model_dir` is not a SavedModel with `generate` (taking
      the sampling inputs when `sampling` is given), or the prompts or
      `max_new_tokens` are refused by it (its message).
  """
  import tensorflow as tf
  import tensorflow_text  # noqa: F401  (the tokenizer's ops)
  check_prompts(prompts)
  model_dir = _latest_version(model_dir)
  if not os.path.isfile(os.path.join(model_dir, "saved_model.pb")):
    raise ValueError(f"`model`={model_dir!r} is neither a SavedModel "
                     "directory (no saved_model.pb) nor a .tflite file")
  loaded = tf.saved_model.load(model_dir)
  if "generate" not in loaded.signatures:
    raise ValueError(f"`model`={model_dir!r} is not a generator: it has no "
                     f"generate signature (signatures: {sorted(loaded.signatures)})")
  signature = loaded.signatures["generate"]
  inputs = {"prompt": tf.constant(prompts),
            "max_new_tokens": tf.constant(max_new_tokens)}
  expected = signature.structured_input_signature[1]
  if set(expected) != set(inputs):  # the sampling inputs
    sampling = sampling or _GREEDY
    inputs.update({name: tf.constant(getattr(sampling, name), expected[name].dtype)
                   for name in set(expected) - set(inputs)})
  elif sampling is not None and sampling != _GREEDY:
    raise ValueError(f"`model`={model_dir!r} generates greedily only (its "
                     "generate signature takes no temperature, top_k, top_p, seed)")
  try:
    signature(**inputs)
    start = time.perf_counter()
    out = signature(**inputs)
    seconds = time.perf_counter() - start
  except tf.errors.InvalidArgumentError as e:
    raise ValueError(_assertion(e.message)) from None
  texts = [t.decode() for t in out["text"].numpy().tolist()]
  new = int(np.sum(np.count_nonzero(out["token_ids"].numpy(), axis=1)))
  status = ([s.decode() for s in out["status"].numpy().tolist()]
            if "status" in out else ["ok"] * len(texts))
  return Result(texts, new, seconds, status=status)


def _latest_version(model_dir):
  """`model_dir` itself, or its highest numeric version when it is a TF
  Serving model directory (`<output_dir>/<name>`)."""
  if os.path.isfile(os.path.join(model_dir, "saved_model.pb")) or (
      not os.path.isdir(model_dir)):
    return model_dir
  versions = [int(n) for n in os.listdir(model_dir) if n.isdigit() and
              os.path.isfile(os.path.join(model_dir, n, "saved_model.pb"))]
  return os.path.join(model_dir, str(max(versions))) if versions else model_dir


def _assertion(message):
  """A failed assertion's own message, without TensorFlow's graph details."""
  found = re.search(r"assertion failed: \[(.*?)\] \[", message, re.S)
  return found.group(1).replace("\\'", "'") if found else message


def companion_files(model_file):
  """The tokenizer model and vocabulary the main job writes beside
  `<name>_<version>_<quantization>.tflite`."""
  stem = re.sub(r"_[a-z0-9]+\.tflite$", "", model_file)
  return f"{stem}_tokenizer.tflite", f"{stem}_vocab.txt"


def from_tflite(model_file, prompts, max_new_tokens, tokenizer=None, vocab=None,
                sampling=None):
  """Tokenizes, prefills and decodes each prompt in LiteRT (batch 1, as a
  phone does), greedy or with `sampling` (a `generation.Sampling` of
  scalars; prompt `i` draws with the seed `(seed, i)`, as row `i` of the
  SavedModel's `generate` does).

  Raises:
    ValueError: a file is missing or not what it should be, or a prompt or
      `max_new_tokens` does not fit the model's caches.
  """
  from tf_mha.export import litert_generation
  from tf_mha.export import tflite
  check_prompts(prompts)
  if not os.path.isfile(model_file):
    raise ValueError(f"`model`={model_file!r} does not exist.")
  generator = litert_generation.Generator(model_file)  # refuses non-decoders
  default_tokenizer, default_vocab = companion_files(model_file)
  tokenizer, vocab = tokenizer or default_tokenizer, vocab or default_vocab
  for flag, path in (("tokenizer", tokenizer), ("vocab", vocab)):
    if not os.path.isfile(path):
      raise ValueError(f"`{flag}`={path!r} does not exist.")
  with open(vocab, encoding="utf-8") as f:
    words = f.read().split("\n")[:-1]
  if sequences.END not in words:
    raise ValueError(f"`vocab`={vocab!r} has no {sequences.END} token.")
  tokenize = tflite.interpreter(tokenizer, text_ops=True).get_signature_runner(
      "tokenize")
  texts, new, seconds, prompt_tokens, prefill = [], 0, 0.0, 0, 0.0
  for row, prompt in enumerate(prompts):
    ids = tokenize(prompt=np.array([prompt]))["token_ids"][0]
    ids = ids[ids != 0].tolist()
    result = generator.generate(
        ids, max_new_tokens, end_id=words.index(sequences.END),
        sampling=sampling and dataclasses.replace(sampling, seed=(sampling.seed, row)))
    texts.append(detokenize(result.token_ids, words))
    new += len(result.step_seconds)
    seconds += sum(result.step_seconds)
    prompt_tokens += len(ids)
    prefill += result.prefill_seconds
  return Result(texts, new, seconds, prompt_tokens, prefill, ["ok"] * len(texts))


def detokenize(token_ids, vocab, end_token=sequences.END):
  """The words of `token_ids` up to the end token, joined by spaces."""
  words = []
  for token in token_ids:
    if vocab[token] == end_token:
      break
    words.append(vocab[token])
  return " ".join(words)
