"""SavedModel signature -> TFLite builtins, run in LiteRT, checked against TF.

The attention model converts to TFLite builtin operators only (no Flex, no
custom ops), with dynamic batch and sequence length.
"""

import os
import warnings

import tensorflow as tf

QUANTIZATIONS = ("none", "float16", "dynamic_range", "int8")
# A float32 TFLite file may differ from its SavedModel by this fraction of
# the outputs' scale (their largest magnitude, at least 1): about 840 units of
# float32 rounding, for kernels that sum in another order than TF's on any
# x86-64 or ARM CPU; a wrong conversion differs by far more.
FLOAT32_TOLERANCE = 1e-4


class ConversionMismatch(Exception):
  """The float32 TFLite model disagrees with the SavedModel."""


def check_quantization(quantize):
  """Raises a ValueError unless `quantize` is one of `QUANTIZATIONS`."""
  if quantize not in QUANTIZATIONS:
    raise ValueError(f"`quantize` must be one of {list(QUANTIZATIONS)}. "
                     f"Received: quantize={quantize!r}")


def convert(saved_model_dir, *, signature, quantize="none",
            representative_inputs=None, text_ops=False, select_tf_ops=False):
  """Converts signatures of a SavedModel to a TFLite flatbuffer.

  "int8" runs the projections, feed-forward layers and embeddings in int8
  and keeps the attention core (`_FLOAT_OPS`: its two products, the mask,
  the softmax and the reshapes between them, which hold no weights) in
  float32.

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
    select_tf_ops: let ops without a builtin run as Select TF ops (Flex).

  Returns:
    The model as bytes.
  """
  check_quantization(quantize)
  keys = [signature] if isinstance(signature, str) else list(signature)
  converter = tf.lite.TFLiteConverter.from_saved_model(
      saved_model_dir, signature_keys=keys)
  extra = [tf.lite.OpsSet.SELECT_TF_OPS] if select_tf_ops else []
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, *extra]
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
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS,
        *extra]
    return _int8_keeping_attention_float(converter)
  return converter.convert()


# Operator types an int8 model keeps in float: the attention core and the
# layout ops around it, none of which holds weights. Its masked logits hold
# the mask's fill (about -1.7e38), which no int8 scale can share with real
# logits; its products multiply two activations (keys and values read from
# a cache, in a decoder); the logits are reshaped and transposed on their
# way to the mask and the softmax. Measured on the generator demo (60
# held-out prompts): exact-match 0.0 with the products, mask and softmax in
# float but the reshapes and transposes in int8; 1.0 with all five in float.
_FLOAT_OPS = ("BATCH_MATMUL", "SELECT_V2", "SOFTMAX", "RESHAPE", "TRANSPOSE")
# And in a model with rotary embeddings (SIN and COS of angles), MUL: it
# multiplies positions by frequencies (angles up to the cache length, in
# radians, which one int8 scale cannot resolve), then rotates by their
# cosines. With MUL in int8 the rotary generator demo fell to exact-match
# 0.73 (300 prompts), with MUL in float 1.0; the classifier demo, with no
# rotary embeddings, keeps MUL in int8 (its max |int8 - float| went from
# 1.2e-3 to 1.2e-2 with MUL in float).
_ROTARY_OPS, _ROTARY_FLOAT_OPS = {"SIN", "COS"}, ("MUL",)


def _int8_keeping_attention_float(converter):
  """Full-int8 conversion with `_FLOAT_OPS` left in float32.

  Calibrates first, then quantizes with a denylist (TensorFlow's own
  two-step path, which its QuantizationDebugger also takes; this one works
  for any number of signatures).
  """
  from tensorflow.lite.python import convert as lite_convert
  converter.experimental_new_quantizer = True
  converter._experimental_calibrate_only = True  # pylint: disable=protected-access
  with warnings.catch_warnings():
    # The calibrator runs the deprecated tf.lite.Interpreter inside;
    # tf_mha itself runs models in LiteRT (`interpreter`).
    warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
    calibrated = converter.convert()
  float_ops = list(_FLOAT_OPS)
  if _ROTARY_OPS & set(operators(calibrated)):
    float_ops += _ROTARY_FLOAT_OPS
  return lite_convert.mlir_quantize(calibrated, fully_quantize=False,
                                    denylisted_ops=float_ops)


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
  return sorted(operator_counts(model))


def operator_counts(model):
  """`{operator name: count}` over every subgraph (signature) of a TFLite
  model (bytes or a path); custom operators as `CUSTOM:<name>`."""
  parsed = _parse(model)
  names = [operator_name(code) for code in parsed.operatorCodes]
  counts = {}
  for subgraph in parsed.subgraphs:
    for op in subgraph.operators or []:
      counts[names[op.opcodeIndex]] = counts.get(names[op.opcodeIndex], 0) + 1
  return counts


# Operators whose first input's values reach their output unchanged, only
# moved or retyped: an id input is followed through them to its lookups.
_PASS_THROUGH = frozenset((
    "CAST", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "STRIDED_SLICE", "SLICE",
    "TRANSPOSE", "TILE", "BROADCAST_TO", "REVERSE_V2"))
# Operators that join several inputs' values: any of them reaches the output.
_JOINING = frozenset(("CONCATENATION", "PACK"))


def index_bounds(model):
  """`{signature: {input: n}}`: each integer input of a TFLite model that
  indexes a table (EMBEDDING_LOOKUP's ids, GATHER's indices), directly or
  through operators that only move its values (`_PASS_THROUGH`, `_JOINING`),
  with the smallest table size `n` it indexes; LiteRT refuses an id outside
  `[0, n)` ("index out of bounds"). Inputs that index no table are absent.
  """
  parsed = _parse(model)
  codes = [operator_name(code) for code in parsed.operatorCodes]
  out = {}
  for signature in parsed.signatureDefs:
    subgraph = parsed.subgraphs[signature.subgraphIndex]
    readers = {}  # tensor -> [(operator, input position)]
    for op in subgraph.operators or []:
      for position, tensor in enumerate(op.inputs):
        readers.setdefault(int(tensor), []).append((op, position))
    bounds = {}
    for entry in signature.inputs:
      tensor = subgraph.tensors[entry.tensorIndex]
      if tensor.type not in (_schema().TensorType.INT32, _schema().TensorType.INT64):
        continue
      bound = _smallest_table(subgraph, codes, readers, int(entry.tensorIndex))
      if bound is not None:
        bounds[entry.name.decode()] = bound
    out[signature.signatureKey.decode()] = bounds
  return out


def _smallest_table(subgraph, codes, readers, start):
  """The smallest table size indexed by the values of tensor `start`."""
  sizes, frontier, seen = [], [start], {start}
  while frontier:
    for op, position in readers.get(frontier.pop(), []):
      name = codes[op.opcodeIndex]
      if name == "EMBEDDING_LOOKUP" and position == 0:
        sizes.append(_dimension(subgraph, op.inputs[1], 0))
      elif name == "GATHER" and position == 1:
        sizes.append(_dimension(subgraph, op.inputs[0], op.builtinOptions.axis))
      elif (name in _PASS_THROUGH and position == 0) or name in _JOINING:
        for tensor in map(int, op.outputs):
          if tensor not in seen:
            seen.add(tensor)
            frontier.append(tensor)
  sizes = [size for size in sizes if size is not None and size > 0]
  return min(sizes) if sizes else None


def _dimension(subgraph, tensor, axis):
  """The static size of `tensor`'s `axis`, or None where it is dynamic."""
  tensor = subgraph.tensors[tensor]
  shape = list(tensor.shapeSignature if tensor.shapeSignature is not None
               else tensor.shape)
  size = int(shape[axis]) if -len(shape) <= axis < len(shape) else -1
  return size if size >= 0 else None


def _schema():
  from tensorflow.lite.python import schema_py_generated as schema
  return schema


def _parse(model):
  """The TFLite model (bytes or a path) as a flatbuffer object tree."""
  schema = _schema()
  if not isinstance(model, (bytes, bytearray)):
    with open(model, "rb") as f:
      model = f.read()
  return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytes(model), 0))


def operator_name(code):
  """An operator code's name (`GATHER`, `CUSTOM:<name>`) from a parsed
  model's `operatorCodes`."""
  builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
  if builtin == _schema().BuiltinOperator.CUSTOM:
    return f"CUSTOM:{code.customCode.decode()}"
  return _BUILTIN_NAMES.get(builtin, str(builtin))


def _builtin_names():
  return {v: k for k, v in vars(_schema().BuiltinOperator).items()
          if not k.startswith("_")}


_BUILTIN_NAMES = _builtin_names()


def check_output_file(path):
  """Raises a ValueError naming `output_file` unless a file can be written
  at `path`; makes its missing parent directories."""
  if os.path.isdir(path):
    raise ValueError(f"`output_file`={path!r} is a directory; give a file path.")
  try:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  except OSError as e:
    raise ValueError(f"`output_file`={path!r} cannot be written: {e.strerror} "
                     f"({e.filename})") from e
  probe = f"{path}.probe-{os.getpid()}"
  try:
    with open(probe, "wb"):
      pass
  except OSError as e:
    raise ValueError(f"`output_file`={path!r} cannot be written: {e.strerror}"
                     ) from e
  finally:
    if os.path.exists(probe):
      os.remove(probe)


def atomic_write(path, payload):
  """Writes `payload` (bytes) to `path` whole or not at all."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  staging = f"{path}.tmp-{os.getpid()}"
  try:
    with open(staging, "wb") as f:
      f.write(payload)
    os.replace(staging, path)
  finally:
    if os.path.exists(staging):
      os.remove(staging)
