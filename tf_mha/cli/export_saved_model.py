"""The main job: train the demo model, export it for TF Serving, convert it
to TFLite, and report sizes, accuracy and the differences between them.

Installed as `tf_mha_export`; from a checkout, `python -m tools.export_saved_model`.
TensorFlow's own logs are hidden unless --verbosity is given.

  python -m tools.export_saved_model                      # the demo
  python -m tools.export_saved_model --keras_model=m.keras --model_name=mine
"""

import sys

from absl import app
from absl import flags

from tf_mha.cli import _console

_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", "saved_models",
    "TF Serving base directory; the export goes to <output_dir>/<model_name>/<version>/.")
_MODEL_NAME = flags.DEFINE_string(
    "model_name", "tf_mha_demo", "Directory name of the model under --output_dir.")
_VERSION = flags.DEFINE_integer(
    "version", None, "Version number; default: one more than the highest present.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace an existing version instead of refusing.")
_KERAS_MODEL = flags.DEFINE_string(
    "keras_model", None,
    "Export this saved Keras model (.keras, .h5 or SavedModel directory) "
    "instead of training the demo.")
_EPOCHS = flags.DEFINE_integer("epochs", 6, "Training epochs for the demo.")
_QUANTIZE = flags.DEFINE_list(
    "quantize", ["none", "float16", "dynamic_range", "int8"],
    "TFLite variants to convert the demo to (none, float16, dynamic_range, int8); "
    "empty for none.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  _console.check_positive(_VERSION, _EPOCHS)
  from tf_mha.export import serving
  from tf_mha.export import tflite
  try:
    try:  # Flags first: a bad one fails before a minute of training.
      for quantize in _QUANTIZE.value:
        tflite.check_quantization(quantize)
      serving.check_destination(_OUTPUT_DIR.value, _MODEL_NAME.value,
                                _VERSION.value, _OVERWRITE.value)
    except ValueError as e:
      raise app.UsageError(str(e)) from e
    if _KERAS_MODEL.value:
      from tf_mha.export import keras_export
      try:
        path = keras_export.export_keras_model(
            _KERAS_MODEL.value, output_dir=_OUTPUT_DIR.value,
            model_name=_MODEL_NAME.value, version=_VERSION.value,
            overwrite=_OVERWRITE.value)
      except ValueError as e:  # --keras_model does not load
        raise app.UsageError(str(e)) from e
      print(f"SavedModel: {path} ({serving.directory_size(path) / 1e6:.2f} MB)")
      return 0
    from tf_mha.demo import pipeline
    report = pipeline.export_demo(
        output_dir=_OUTPUT_DIR.value, model_name=_MODEL_NAME.value,
        version=_VERSION.value, overwrite=_OVERWRITE.value,
        epochs=_EPOCHS.value, quantizations=tuple(_QUANTIZE.value))
  except serving.ExportRefused as e:
    print(f"Refused: {e}", file=sys.stderr)
    return 1
  print("\n".join(report.lines()))
  return 0


def run():
  """Console-script entry point."""
  _console.run(main, __name__)


if __name__ == "__main__":
  run()
