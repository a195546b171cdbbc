"""Generate text with the generator demo: from its SavedModel, or from a
`.tflite` file run entirely in LiteRT (tokenizer, prefill, decode loop),
printing each answer and the tokens per second.

Installed as `tf_mha_generate`; from a checkout, `python -m tools.generate`.
TensorFlow's own logs are hidden unless --verbosity is given.

  python -m tools.generate --model=saved_models/tf_mha_generator/1 \
      --prompt="red fox sun" --prompt="one two six ten"
  python -m tools.generate --model=saved_models/tf_mha_generator_1_int8.tflite \
      --prompt="red fox sun"

Greedy by default; --temperature (with --top_k, --top_p, --seed) samples,
in the SavedModel's compiled loop or on the logits LiteRT's `decode`
returns, with the same draws for the same seed.

A `.tflite` model uses the tokenizer model and vocabulary the main job
writes beside it (`<name>_<version>_tokenizer.tflite`, `..._vocab.txt`)
unless --tokenizer and --vocab say otherwise.
"""

from absl import app
from absl import flags

from tf_mha.cli import _console

_MODEL = flags.DEFINE_string(
    "model", None, "A generator SavedModel: a version directory "
    "(<output_dir>/<name>/<version>), or the model directory "
    "(<output_dir>/<name>) for its highest version; or its prefill/decode "
    ".tflite file.", required=True)
_PROMPT = flags.DEFINE_multi_string(
    "prompt", None, "A prompt (words to reverse, for the demo); repeat the flag "
    "for several.", required=True)
_MAX_NEW_TOKENS = flags.DEFINE_integer(
    "max_new_tokens", 10, "The most tokens to generate per prompt, the end "
    "token included.")
_TEMPERATURE = flags.DEFINE_float(
    "temperature", 0.0, "Sampling temperature; 0 picks greedily.")
_TOP_K = flags.DEFINE_integer(
    "top_k", 0, "Sample from the k most likely tokens only; 0 keeps all.")
_TOP_P = flags.DEFINE_float(
    "top_p", 1.0, "Sample from the most likely tokens whose probability "
    "reaches p (nucleus); 1 keeps all.")
_SEED = flags.DEFINE_integer(
    "seed", 0, "Seed of the draws: the same seed gives the same text (prompt "
    "i draws with (seed, i), in the SavedModel and in LiteRT alike).")
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", None, "For a .tflite model: the tokenizer model; default: "
    "<name>_<version>_tokenizer.tflite beside it.")
_VOCAB = flags.DEFINE_string(
    "vocab", None, "For a .tflite model: the vocabulary file; default: "
    "<name>_<version>_vocab.txt beside it.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  _console.check_positive(_MAX_NEW_TOKENS)
  sampling = _sampling()
  from tf_mha.demo import text_generation
  try:
    if _MODEL.value.endswith(".tflite"):
      result = text_generation.from_tflite(
          _MODEL.value, _PROMPT.value, _MAX_NEW_TOKENS.value,
          tokenizer=_TOKENIZER.value, vocab=_VOCAB.value, sampling=sampling)
    else:
      result = text_generation.from_saved_model(
          _MODEL.value, _PROMPT.value, _MAX_NEW_TOKENS.value, sampling=sampling)
  except ValueError as e:
    return _console.fail(f"Error: {e}")
  for prompt, text, status in zip(_PROMPT.value, result.texts, result.status):
    print(f"{prompt} -> {text}" + ("" if status == "ok" else f"  [{status}]"))
  if result.prefill_seconds:  # LiteRT: prefill and decode apart
    print(f"LiteRT: prefill {result.prompt_tokens} tokens in "
          f"{result.prefill_seconds * 1e3:.2f} ms, decode {result.new_tokens} "
          f"tokens in {result.seconds * 1e3:.2f} ms "
          f"({result.tokens_per_second:.0f} tokens/s)")
  else:
    print(f"SavedModel: {result.new_tokens} tokens in {result.seconds * 1e3:.1f}"
          f" ms ({result.tokens_per_second:.0f} tokens/s, the whole generate "
          "signature after one warm-up call)")
  return 0


def _sampling():
  """The flags' `generation.Sampling`, or None (greedy); a UsageError naming
  a flag out of range."""
  if _TEMPERATURE.value < 0:
    raise app.UsageError("`temperature` must be at least 0. "
                         f"Received: --temperature={_TEMPERATURE.value}")
  if _TOP_K.value < 0:
    raise app.UsageError("`top_k` must be at least 0. "
                         f"Received: --top_k={_TOP_K.value}")
  if not 0 < _TOP_P.value <= 1:
    raise app.UsageError("`top_p` must be in (0, 1]. "
                         f"Received: --top_p={_TOP_P.value}")
  if _TEMPERATURE.value == 0:
    return None
  from tf_mha.generation import samplers
  return samplers.Sampling(_TEMPERATURE.value, _TOP_K.value, _TOP_P.value,
                           _SEED.value)


def run():
  """Console-script entry point."""
  _console.run(main, __name__)


if __name__ == "__main__":
  run()
