"""Convert a SavedModel signature to TFLite builtins and check it in LiteRT.

Installed as `tf_mha_convert_tflite`; from a checkout, `python -m tools.convert_tflite`.
TensorFlow's own logs are hidden unless --verbosity is given.

  python -m tools.convert_tflite --saved_model_dir=saved_models/tf_mha_demo/1 \
      --output_file=saved_models/demo.tflite --quantize=float16
"""

import os
from absl import app
from absl import flags

from tf_mha.cli import _console

_SAVED_MODEL_DIR = flags.DEFINE_string(
    "saved_model_dir", None, "SavedModel version directory to convert.", required=True)
_OUTPUT_FILE = flags.DEFINE_string("output_file", None, "Where to write the .tflite file.",
                                   required=True)
_QUANTIZE = flags.DEFINE_enum("quantize", "none",
                              ["none", "float16", "dynamic_range", "int8"],
                              "Post-training quantization.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not os.path.isfile(os.path.join(_SAVED_MODEL_DIR.value, "saved_model.pb")):
    raise app.UsageError(
        f"--saved_model_dir={_SAVED_MODEL_DIR.value!r} holds no saved_model.pb")
  from tf_mha.demo import pipeline
  from tf_mha.export import tflite
  try:
    path, size, diff, accuracy = pipeline.convert_and_check(
        _SAVED_MODEL_DIR.value, _QUANTIZE.value, _OUTPUT_FILE.value)
  except (ValueError, OSError, tflite.ConversionMismatch) as e:
    return _console.fail(f"FAILED: {e}")
  print(f"TFLite ({_QUANTIZE.value}): {path} ({size / 1e3:.1f} kB)")
  print(f"max |TFLite - SavedModel| on samples: {diff:.3g}")
  print(f"demo accuracy: {accuracy:.4f}")
  return 0


def run():
  """Console-script entry point."""
  _console.run(main, __name__)


if __name__ == "__main__":
  run()
