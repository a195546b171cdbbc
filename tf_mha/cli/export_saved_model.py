"""The main job: train the two demos (a text classifier and a generator),
export them for TF Serving, convert them to TFLite, and report sizes,
accuracy, the differences between them and the generator's decoding speed.

Installed as `tf_mha_export`; from a checkout, `python -m tools.export_saved_model`.
TensorFlow's own logs are hidden unless --verbosity is given.

  python -m tools.export_saved_model                      # the demos
  python -m tools.export_saved_model --keras_model=m.keras --model_name=mine \
      --sample_data=sample.npz     # your own model (tf_keras or Keras 3)
  python -m tools.export_saved_model --keras_hub_preset=my_llama \
      --model_name=my_llama        # a KerasHub Llama, Mistral or Qwen2
"""

import os

from absl import app
from absl import flags

from tf_mha.cli import _console

_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", "saved_models",
    "TF Serving base directory; the export goes to <output_dir>/<model_name>/<version>/.")
_MODEL_NAME = flags.DEFINE_string(
    "model_name", "tf_mha_demo",
    "Directory name of the classifier (or --keras_model) under --output_dir; "
    "with --keras_hub_preset, default the preset directory's name.")
_GENERATOR_NAME = flags.DEFINE_string(
    "generator_name", "tf_mha_generator",
    "Directory name of the generator demo under --output_dir.")
_DEMOS = flags.DEFINE_list(
    "demos", ["classifier", "generator"],
    "Which demos to train and export: classifier, generator.")
_VERSION = flags.DEFINE_integer(
    "version", None, "Version number; default: one more than the highest present.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace an existing version instead of refusing.")
_KERAS_MODEL = flags.DEFINE_string(
    "keras_model", None,
    "Export this saved Keras model (.keras, .h5 or SavedModel directory) "
    "instead of training the demo.")
_KERAS_HUB_PRESET = flags.DEFINE_string(
    "keras_hub_preset", None,
    "Export this KerasHub causal LM preset directory (what save_to_preset "
    "writes: Llama, Llama 3, Mistral, Qwen2) on tf_mha, with a `generate` "
    "signature and LiteRT-LM's signatures for tf_mha_convert_litertlm.")
_MAX_LENGTH = flags.DEFINE_integer(
    "max_length", None,
    "With --keras_hub_preset: the cache slots (start token, prompt and new "
    "tokens); default the preset preprocessor's sequence_length. The "
    ".litertlm carries it as its maximum.")
_SAMPLE_DATA = flags.DEFINE_string(
    "sample_data", None,
    "With --keras_model: an .npz of arrays named after the model's inputs "
    "(a batch each: rows are examples). Its first example becomes the TF "
    "Serving warmup request, and the export is checked against the Keras "
    "model on it (else on inputs drawn from the input specs).")
_IMPORTS = flags.DEFINE_list(
    "imports", [], "With --keras_model: Python modules to import before "
    "loading it, which register its own layer classes (Model Garden's "
    "models: official.nlp.modeling).")
_PATCH_TF_KERAS = flags.DEFINE_bool(
    "patch_tf_keras", False, "With --keras_model: run tf_mha.patch_tf_keras() "
    "before --imports, so that libraries subclassing tf.keras' "
    "MultiHeadAttention (Model Garden) load on tf_mha's.")
_SAFE_MODE = flags.DEFINE_bool(
    "safe_mode", True, "With --keras_model: Keras' safe_mode for .keras "
    "files; --nosafe_mode loads Python lambdas saved in the file (Model "
    "Garden's default activation is one). Only for files you trust.")
_EPOCHS = flags.DEFINE_integer(
    "epochs", None, "Training epochs for each demo; default: 6 for the "
    "classifier, 5 for the generator.")
_QUANTIZE = flags.DEFINE_list(
    "quantize", ["none", "float16", "dynamic_range", "int8"],
    "TFLite variants to convert the demos to (none, float16, dynamic_range, int8); "
    "empty for none.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  _console.check_positive(_VERSION, _EPOCHS)
  unknown = sorted(set(_DEMOS.value) - {"classifier", "generator"})
  if unknown or not _DEMOS.value:
    raise app.UsageError("`--demos` takes classifier and generator. Received: "
                         f"--demos={','.join(_DEMOS.value)}")
  _check_model_flags()
  if _KERAS_HUB_PRESET.value:
    return _export_preset()
  if _MODEL_NAME.value == _GENERATOR_NAME.value and len(_DEMOS.value) > 1:
    raise app.UsageError("`--model_name` and `--generator_name` must differ. "
                         f"Received: both {_MODEL_NAME.value!r}")
  from tf_mha.export import serving
  from tf_mha.export import tflite
  names = ([_MODEL_NAME.value] if "classifier" in _DEMOS.value or
           _KERAS_MODEL.value else [])
  if "generator" in _DEMOS.value and not _KERAS_MODEL.value:
    names.append(_GENERATOR_NAME.value)
  try:
    try:  # Flags first: a bad one fails before a minute of training.
      for quantize in _QUANTIZE.value:
        tflite.check_quantization(quantize)
      for name in names:
        serving.check_destination(_OUTPUT_DIR.value, name, _VERSION.value,
                                  _OVERWRITE.value)
    except ValueError as e:
      raise app.UsageError(str(e)) from e
    if _KERAS_MODEL.value:
      from tf_mha.export import keras_export
      try:
        exported = keras_export.export_keras_model(
            _KERAS_MODEL.value, output_dir=_OUTPUT_DIR.value,
            model_name=_MODEL_NAME.value, version=_VERSION.value,
            overwrite=_OVERWRITE.value, sample_data=_SAMPLE_DATA.value,
            imports=_IMPORTS.value, patch_tf_keras=_PATCH_TF_KERAS.value,
            safe_mode=_SAFE_MODE.value)
      except ValueError as e:  # --keras_model or --sample_data do not fit
        return _console.fail(f"Refused: {e}")
      print("\n".join(exported.lines()))
      return 0
    reports = []
    common = dict(output_dir=_OUTPUT_DIR.value, version=_VERSION.value,
                  overwrite=_OVERWRITE.value,
                  quantizations=tuple(_QUANTIZE.value))
    if _EPOCHS.value:
      common["epochs"] = _EPOCHS.value
    if "classifier" in _DEMOS.value:
      from tf_mha.demo import pipeline
      reports.append(pipeline.export_demo(model_name=_MODEL_NAME.value, **common))
    if "generator" in _DEMOS.value:
      from tf_mha.demo import generator_export
      reports.append(generator_export.export_generator(
          model_name=_GENERATOR_NAME.value, **common))
  except serving.ExportRefused as e:
    return _console.fail(f"Refused: {e}")
  print("\n\n".join("\n".join(report.lines()) for report in reports))
  return 0


def _check_model_flags():
  """UsageErrors for flags that go with --keras_model or --keras_hub_preset
  given without it."""
  for flag in (_SAMPLE_DATA, _IMPORTS, _PATCH_TF_KERAS):
    if flag.value and not _KERAS_MODEL.value:
      raise app.UsageError(f"--{flag.name} goes with --keras_model")
  if _MAX_LENGTH.value is not None and not _KERAS_HUB_PRESET.value:
    raise app.UsageError("--max_length goes with --keras_hub_preset")
  if _KERAS_HUB_PRESET.value and _KERAS_MODEL.value:
    raise app.UsageError("Give --keras_model or --keras_hub_preset, not both")


def _export_preset():
  from tf_mha.export import keras_hub_export
  from tf_mha.export import serving
  from tf_mha.models import keras_hub
  try:
    exported = keras_hub_export.export_preset(
        _KERAS_HUB_PRESET.value, output_dir=_OUTPUT_DIR.value,
        model_name=(_MODEL_NAME.value if _MODEL_NAME.present else
                    os.path.basename(os.path.normpath(_KERAS_HUB_PRESET.value))),
        version=_VERSION.value,
        overwrite=_OVERWRITE.value, max_length=_MAX_LENGTH.value)
  except (keras_hub.PresetError, serving.ExportRefused) as e:
    return _console.fail(f"Refused: {e}")
  print("\n".join(exported.lines()))
  return 0


def run():
  """Console-script entry point."""
  _console.run(main, __name__)


if __name__ == "__main__":
  run()
