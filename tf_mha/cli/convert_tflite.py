"""Convert a SavedModel's signatures to one TFLite model, checked in LiteRT.

Installed as `tf_mha_convert_tflite`; from a checkout, `python -m tools.convert_tflite`.
TensorFlow's own logs are hidden unless --verbosity is given.

Any SavedModel: your own export (tf_mha_export --keras_model), Keras 3's
model.export, the demos'. Every signature with numeric inputs is converted
(or those named in --signatures) into one .tflite file; it runs in LiteRT
beside the SavedModel (on --calibration_data, --sample_data, or inputs drawn
from the signatures' specs) and is written only if float32 matches within
1e-4 of the outputs' scale (at least 1) and every output is finite. The
classifier demo also reports accuracy.

  python -m tools.convert_tflite --saved_model_dir=saved_models/mine/1 \\
      --output_file=saved_models/mine.tflite --quantize=dynamic_range
  python -m tools.convert_tflite --saved_model_dir=saved_models/mine/1 \\
      --output_file=mine_int8.tflite --quantize=int8 --calibration_data=calib.npz
  python -m tools.convert_tflite --saved_model_dir=saved_models/tf_mha_generator/1 \\
      --output_file=gen.tflite --signatures=prefill,decode \\
      --quantize=int8 --calibration_data=prefill=p.npz,decode=d.npz
"""

from absl import app
from absl import flags

from tf_mha.cli import _console

_SAVED_MODEL_DIR = flags.DEFINE_string(
    "saved_model_dir", None, "SavedModel (version) directory to convert.",
    required=True)
_OUTPUT_FILE = flags.DEFINE_string("output_file", None, "Where to write the .tflite file.",
                                   required=True)
_QUANTIZE = flags.DEFINE_enum("quantize", "none",
                              ["none", "float16", "dynamic_range", "int8"],
                              "Post-training quantization.")
_SIGNATURES = flags.DEFINE_list(
    "signatures", None, "Signatures to convert (default: every signature "
    "whose inputs are all numeric).")
_CALIBRATION_DATA = flags.DEFINE_string(
    "calibration_data", None,
    "int8 calibration inputs: an .npz of arrays named after the signatures' "
    "inputs (rows are examples), or one .npz per signature as "
    "sig=path.npz,sig2=path2.npz. Required for int8 (the classifier demo "
    "makes its own).")
_SAMPLE_DATA = flags.DEFINE_string(
    "sample_data", None, "Inputs for the LiteRT-vs-SavedModel check, in the "
    "same forms as --calibration_data (default: the calibration data, else "
    "inputs drawn from the signatures' specs).")
_ALLOW_SELECT_TF_OPS = flags.DEFINE_bool(
    "allow_select_tf_ops", False, "Convert ops that TFLite has no builtin for "
    "as Select TF ops (the app then needs the Flex delegate); refused by "
    "default, naming them.")


def _data_flag(flag):
  """A data flag's value: None, a path, or `{signature: path}`."""
  if not flag.value:
    return None
  parts = flag.value.split(",")
  if len(parts) == 1 and "=" not in parts[0]:
    return parts[0]
  pairs = [part.split("=", 1) for part in parts]
  if any(len(pair) != 2 or not pair[0] or not pair[1] for pair in pairs):
    raise app.UsageError(f"--{flag.name} takes one path, or sig=path pairs "
                         f"separated by commas. Received: {flag.value!r}")
  return dict(pairs)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  calibration = _data_flag(_CALIBRATION_DATA)
  samples = _data_flag(_SAMPLE_DATA)
  from tf_mha.demo import pipeline
  from tf_mha.export import converter
  from tf_mha.export import tflite
  try:
    if (pipeline.is_classifier_export(_SAVED_MODEL_DIR.value) and
        not (_SIGNATURES.value or calibration or samples)):
      path, size, diff, accuracy = pipeline.convert_and_check(
          _SAVED_MODEL_DIR.value, _QUANTIZE.value, _OUTPUT_FILE.value)
      print(f"TFLite ({_QUANTIZE.value}): {path} ({size / 1e3:.1f} kB)")
      print(f"max |TFLite - SavedModel| on samples: {diff:.3g}")
      print(f"demo accuracy: {accuracy:.4f}")
      return 0
    conversion = converter.convert_saved_model(
        _SAVED_MODEL_DIR.value, _OUTPUT_FILE.value,
        signatures=_SIGNATURES.value, quantize=_QUANTIZE.value,
        calibration_data=calibration, sample_data=samples,
        allow_select_tf_ops=_ALLOW_SELECT_TF_OPS.value)
  except (ValueError, OSError, tflite.ConversionMismatch) as e:
    return _console.fail(f"FAILED: {e}")
  print("\n".join(conversion.lines()))
  return 0


def run():
  """Console-script entry point."""
  _console.run(main, __name__)


if __name__ == "__main__":
  run()
