"""Convert a decoder's SavedModel to a `.litertlm` file that LiteRT-LM runs.

Installed as `tf_mha_convert_litertlm`; from a checkout,
`python -m tools.convert_litertlm`. TensorFlow's own logs are hidden unless
--verbosity is given.

The SavedModel has LiteRT-LM's signatures (`decode` and `prefill_<T>`:
`tokens`, `input_pos`, `kv_cache_k_<i>`/`kv_cache_v_<i>` in and out, `logits`
from decode; `tf_mha.export.decoder_signatures.save_decoder` writes them
from a decoder's step). The file packs the TFLite model (builtin operators
only), the tokenizer, the start and stop tokens and the prompt template.
Flags left unset take what the export recorded. Before the file is written,
LiteRT-LM loads it and generates greedily from --prompt; the SavedModel's
own greedy loop, fed as the runtime feeds it (the quantized TFLite model's,
for --quantize), must give the same text, or nothing is written.

  python -m tools.convert_litertlm --saved_model_dir=saved_models/mine/1 \\
      --tokenizer=tokenizer.model --output_file=mine.litertlm \\
      --start_token=2 --stop_tokens='</s>' --quantize=dynamic_range
  litert-lm run mine.litertlm --prompt "Hello" --backend cpu
"""

from absl import app
from absl import flags

from tf_mha.cli import _console

_SAVED_MODEL_DIR = flags.DEFINE_string(
    "saved_model_dir", None, "SavedModel (version) directory with LiteRT-LM's "
    "decode and prefill_<T> signatures.", required=True)
_OUTPUT_FILE = flags.DEFINE_string("output_file", None,
                                   "Where to write the .litertlm file.",
                                   required=True)
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", None, "A SentencePiece .model or a Hugging Face "
    "tokenizer.json (default: the one the export recorded).")
_QUANTIZE = flags.DEFINE_enum(
    "quantize", "none", ["none", "float16", "dynamic_range", "int4",
                         "dynamic_int4_block32", "dynamic_int4_block128",
                         "dynamic_int8", "weight_only_int8"],
    "Post-training quantization of the weights: float16 and dynamic_range "
    "(int8 weights) the TFLite converter's; int4 (channelwise), "
    "dynamic_int4_block32, dynamic_int4_block128 and dynamic_int8 "
    "(channelwise) weights with activations quantized at run time, and "
    "weight_only_int8, ai-edge-quantizer's recipes as litert-torch names them.")
_START_TOKEN = flags.DEFINE_string(
    "start_token", None, "The token the runtime prepends to a prompt: an id "
    "or a token string (default: recorded, else none).")
_STOP_TOKENS = flags.DEFINE_list(
    "stop_tokens", None, "Tokens that end generation: ids or token strings "
    "(default: recorded).")
_USER_PREFIX = flags.DEFINE_string("user_prefix", None,
                                   "Prompt template: text before a user turn.")
_USER_SUFFIX = flags.DEFINE_string("user_suffix", None,
                                   "Prompt template: text after a user turn.")
_MODEL_PREFIX = flags.DEFINE_string(
    "model_prefix", None, "Prompt template: text before the model's turn.")
_MAX_TOKENS = flags.DEFINE_integer(
    "max_tokens", None, "The most tokens (prompt and answer) the runtime "
    "allows (default: the model's cache slots; a smaller value makes the "
    "runtime refuse longer prompts).")
_PROMPT = flags.DEFINE_string("prompt", None,
                              "The check's prompt (default: 'Hello').")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  _console.check_positive(_MAX_TOKENS)
  from tf_mha.export import converter
  from tf_mha.export import litertlm
  try:
    conversion = litertlm.convert(
        _SAVED_MODEL_DIR.value, _OUTPUT_FILE.value, tokenizer=_TOKENIZER.value,
        quantize=_QUANTIZE.value, start_token=_START_TOKEN.value,
        stop_tokens=_STOP_TOKENS.value, user_prefix=_USER_PREFIX.value,
        user_suffix=_USER_SUFFIX.value, model_prefix=_MODEL_PREFIX.value,
        max_tokens=_MAX_TOKENS.value, prompt=_PROMPT.value)
  except (ValueError, OSError, converter.SelectOpsRefused) as e:
    return _console.fail(f"FAILED: {e}")
  print("\n".join(conversion.lines()))
  return 0


def run():
  """Console-script entry point."""
  _console.run(main, __name__)


if __name__ == "__main__":
  run()
