"""SavedModel signature -> TFLite builtins, run in LiteRT, checked against TF.

The attention model converts to TFLite builtin operators only (no Flex, no
custom ops), with dynamic batch and sequence length.
"""

import csv
import io
import warnings

import numpy as np
import tensorflow as tf

QUANTIZATIONS = ("none", "float16", "dynamic_range", "int8")
FLOAT32_TOLERANCE = 1e-4


class ConversionMismatch(Exception):
  """The float32 TFLite model disagrees with the SavedModel."""


def check_quantization(quantize):
  """Raises a ValueError unless `quantize` is one of `QUANTIZATIONS`."""
  if quantize not in QUANTIZATIONS:
    raise ValueError(f"`quantize` must be one of {list(QUANTIZATIONS)}. "
                     f"Received: quantize={quantize!r}")


def convert(saved_model_dir, *, signature, quantize="none",
            representative_inputs=None, text_ops=False):
  """Converts one signature of a SavedModel to a TFLite flatbuffer.

  "int8" quantizes every tensor whose calibrated range allows it. Masked
  attention logits do not: the mask's fill value (about -1.7e38) would set
  their int8 step to ~1e36 and flatten every real logit to zero. Calibration
  finds such tensors, and they and the softmax stay in float32 (a few ops of
  the attention core); everything else, the projections and feed-forward
  layers included, runs in int8.

  Args:
    saved_model_dir: the SavedModel version directory.
    signature: the signature key to convert (its inputs become the model's).
    quantize: one of `QUANTIZATIONS`.
    representative_inputs: for "int8", a list of `{input_name: array}`
      covering the lengths the model will see (calibrating at one length is
      inaccurate at others).
    text_ops: allow tensorflow-text's TFLite custom ops (a text front end);
      run the result with `interpreter(model, text_ops=True)`.

  Returns:
    The model as bytes.
  """
  check_quantization(quantize)
  converter = tf.lite.TFLiteConverter.from_saved_model(
      saved_model_dir, signature_keys=[signature])
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  converter.allow_custom_ops = text_ops
  if quantize != "none":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantize == "float16":
    converter.target_spec.supported_types = [tf.float16]
  elif quantize == "int8":
    if not representative_inputs:
      raise ValueError("`representative_inputs` are required for int8.")
    converter.representative_dataset = lambda: iter(representative_inputs)
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    return _int8_keeping_masked_logits_float(converter, representative_inputs)
  return converter.convert()


# An int8 tensor calibrated to a wider range than this holds a mask fill.
_MAX_INT8_RANGE = 1e6


def _int8_keeping_masked_logits_float(converter, samples):
  """Full-int8 conversion, with masked-logit tensors and softmax in float."""
  debug = tf.lite.experimental.QuantizationDebugger(
      converter=converter, debug_dataset=lambda: (
          [np.asarray(v) for _, v in sorted(s.items())] for s in samples[:8]))
  with warnings.catch_warnings():
    # TensorFlow's debugger runs the deprecated tf.lite.Interpreter inside;
    # tf_mha itself runs models in LiteRT (`interpreter`).
    warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
    debug.run()
  buffer = io.StringIO()
  debug.layer_statistics_dump(buffer)
  buffer.seek(0)
  keep_float = [row["tensor_name"] for row in csv.DictReader(buffer)
                if row["op_name"] == "SOFTMAX" or
                float(row["scale"] or 0) * 255 > _MAX_INT8_RANGE]
  if not keep_float:
    return debug.get_nondebug_quantized_model()
  options = tf.lite.experimental.QuantizationDebugOptions(
      denylisted_nodes=keep_float)
  debug = tf.lite.experimental.QuantizationDebugger(
      converter=converter, debug_dataset=lambda: iter([]),
      debug_options=options)
  return debug.get_nondebug_quantized_model()


def interpreter(model, text_ops=False):
  """A LiteRT interpreter for `model` (bytes or a path); `text_ops` registers
  tensorflow-text's TFLite kernels (the demo's tokenizer model needs them)."""
  from ai_edge_litert import interpreter as litert
  source = ({"model_content": bytes(model)} if isinstance(model, (bytes, bytearray))
            else {"model_path": str(model)})
  if not text_ops:
    return litert.Interpreter(**source)
  from tensorflow_text import tflite_registrar
  return litert.InterpreterWithCustomOps(
      custom_op_registerers=tflite_registrar.SELECT_TFTEXT_OPS, **source)


def run(model, signature, inputs, text_ops=False):
  """Runs `signature` of a TFLite model on `{name: array}`; returns outputs."""
  runner = interpreter(model, text_ops).get_signature_runner(signature)
  return runner(**inputs)


def operators(model):
  """The names of the builtin and custom operators a TFLite model uses."""
  from tensorflow.lite.python import schema_py_generated as schema
  parsed = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytes(model), 0))
  names = set()
  for code in parsed.operatorCodes:
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == schema.BuiltinOperator.CUSTOM:
      names.add(f"CUSTOM:{code.customCode.decode()}")
    else:
      names.add(_BUILTIN_NAMES.get(builtin, str(builtin)))
  return sorted(names)


def _builtin_names():
  from tensorflow.lite.python import schema_py_generated as schema
  return {v: k for k, v in vars(schema.BuiltinOperator).items()
          if not k.startswith("_")}


_BUILTIN_NAMES = _builtin_names()


def max_difference(model, signature, reference_fn, samples):
  """Largest |TFLite - reference| over `samples` (a list of input dicts)."""
  worst = 0.0
  for inputs in samples:
    got = run(model, signature, inputs)
    want = reference_fn(**inputs)
    for name, value in got.items():
      worst = max(worst, float(np.max(np.abs(value - np.asarray(want[name])))))
  return worst
