"""SavedModel signature -> TFLite builtins, run in LiteRT, checked against TF.

The attention model converts to TFLite builtin operators only (no Flex, no
custom ops), with dynamic batch and sequence length.
"""

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
  """Converts signatures of a SavedModel to a TFLite flatbuffer.

  "int8" quantizes every tensor whose calibrated range allows it. Masked
  attention logits do not: the mask's fill value (about -1.7e38) would set
  their int8 step to ~1e36 and flatten every real logit to zero. Calibration
  finds such tensors, and they and the softmax stay in float32 (a few ops of
  the attention core); everything else, the projections and feed-forward
  layers included, runs in int8.

  Args:
    saved_model_dir: the SavedModel version directory.
    signature: the signature key to convert (its inputs become the model's),
      or a list of keys for a model with several signatures.
    quantize: one of `QUANTIZATIONS`.
    representative_inputs: for "int8", a list of `{input_name: array}`
      covering the lengths the model will see (calibrating at one length is
      inaccurate at others); with several signatures, of
      `(signature_key, {input_name: array})`.
    text_ops: allow tensorflow-text's TFLite custom ops (a text front end);
      run the result with `interpreter(model, text_ops=True)`.

  Returns:
    The model as bytes.
  """
  check_quantization(quantize)
  keys = [signature] if isinstance(signature, str) else list(signature)
  converter = tf.lite.TFLiteConverter.from_saved_model(
      saved_model_dir, signature_keys=keys)
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
    return _int8_keeping_wide_ranges_float(converter)
  return converter.convert()


# An int8 tensor calibrated to a wider range than this holds a mask fill.
_MAX_INT8_RANGE = 1e6


def _int8_keeping_wide_ranges_float(converter):
  """Full-int8 conversion, with masked-logit tensors and softmax in float.

  Calibrates first (TensorFlow's own two-step path, which its
  QuantizationDebugger also takes, for any number of signatures), then
  quantizes with the tensors whose calibrated range is too wide for int8,
  and the softmax outputs, left in float.
  """
  from tensorflow.lite.python import convert as lite_convert
  converter.experimental_new_quantizer = True
  converter._experimental_calibrate_only = True  # pylint: disable=protected-access
  with warnings.catch_warnings():
    # The calibrator runs the deprecated tf.lite.Interpreter inside;
    # tf_mha itself runs models in LiteRT (`interpreter`).
    warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
    calibrated = converter.convert()
  return lite_convert.mlir_quantize(
      calibrated, fully_quantize=False,
      denylisted_nodes=_wide_or_softmax_tensors(calibrated) or None)


def _wide_or_softmax_tensors(model):
  """Names of a calibrated model's tensors that must stay float."""
  schema = _schema()
  parsed = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytes(model), 0))
  softmax = {i for i, code in enumerate(parsed.operatorCodes)
             if max(code.builtinCode, code.deprecatedBuiltinCode) ==
             schema.BuiltinOperator.SOFTMAX}
  names = set()
  for graph in parsed.subgraphs:
    for op in graph.operators:
      if op.opcodeIndex in softmax:
        names.update(graph.tensors[i].name.decode() for i in op.outputs)
    for tensor in graph.tensors:
      q = tensor.quantization
      if q is not None and q.min is not None and len(q.min) and (
          float(np.max(q.max) - np.min(q.min)) > _MAX_INT8_RANGE):
        names.add(tensor.name.decode())
  return sorted(names)


def _schema():
  from tensorflow.lite.python import schema_py_generated as schema
  return schema


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
  schema = _schema()
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
  schema = _schema()
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
