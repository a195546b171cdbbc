"""Quantized weights for a TFLite model: ai-edge-quantizer's recipes by
litert-torch's names, applied to a float32 model, and each set of identical
constant buffers stored once (a tied embedding's lookup table and output
matrix among them)."""

from tf_mha.export import tflite

# ai-edge-quantizer's recipes, applied to the float32 TFLite model, named as
# litert-torch names them (`int4`: tf_mha's first name for the channelwise
# one): name -> (kind, bits, granularity), a dynamic configuration (int
# weights, activations quantized at run time) or a weight-only one (weights
# dequantized before each op) for every op it supports.
RECIPES = {
    "int4": ("dynamic", 4, "CHANNELWISE"),
    "dynamic_int4_block32": ("dynamic", 4, "BLOCKWISE_32"),
    "dynamic_int4_block128": ("dynamic", 4, "BLOCKWISE_128"),
    "dynamic_int8": ("dynamic", 8, "CHANNELWISE"),
    "weight_only_int8": ("weight_only", 8, "CHANNELWISE"),
}


def weights(model, quantize):
  """A float32 TFLite model (bytes) with its weights quantized by
  ai-edge-quantizer's recipe `RECIPES[quantize]` (every op it supports:
  FULLY_CONNECTED, EMBEDDING_LOOKUP, CONV_2D, ...); "int4" is its
  `dynamic_wi4_afp32`, the recipe litert-torch uses for int4 LLMs."""
  from ai_edge_quantizer import qtyping  # pylint: disable=g-import-not-at-top
  from ai_edge_quantizer import quantizer  # pylint: disable=g-import-not-at-top
  from ai_edge_quantizer import recipe_manager  # pylint: disable=g-import-not-at-top
  model = _lookups_for_gathers(model)
  kind, bits, granularity = RECIPES[quantize]
  recipes = recipe_manager.RecipeManager()
  add = (recipes.add_dynamic_config if kind == "dynamic" else
         recipes.add_weight_only_config)
  add(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
      num_bits=bits, granularity=qtyping.QuantGranularity[granularity])
  try:
    result = quantizer.Quantizer(bytes(model), recipes.get_quantization_recipe()).quantize(
        enable_progress_bar=False, enable_progress_report=False)
  except ValueError as error:  # e.g. a width its blocks do not divide
    raise ValueError(f"`quantize`={quantize!r} does not apply to this model: "
                     f"{error}") from error
  return _share_identical_buffers(bytes(result.quantized_model))


def _lookups_for_gathers(model):
  """`model` (TFLite bytes) with each GATHER of rows of a constant table by
  a vector of ids made an EMBEDDING_LOOKUP (the same rows). ai-edge-quantizer
  quantizes an EMBEDDING_LOOKUP's table and leaves a GATHER's float: with a
  tied embedding, the file held the float table for the lookup beside the
  quantized one of the output matmul; quantized alike (channelwise, rows),
  the two are the same bytes, which `_share_identical_buffers` stores once."""
  from tensorflow.lite.python import schema_py_generated as schema  # pylint: disable=g-import-not-at-top
  from tensorflow.lite.tools import flatbuffer_utils  # pylint: disable=g-import-not-at-top
  parsed = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
  names = [tflite.operator_name(code) for code in parsed.operatorCodes]
  lookup_code = None
  for subgraph in parsed.subgraphs:
    for op in subgraph.operators:
      if names[op.opcodeIndex] != "GATHER":
        continue
      table, ids = (subgraph.tensors[i] for i in op.inputs)
      options = op.builtinOptions
      constant = parsed.buffers[table.buffer].data
      if (len(table.shape) != 2 or table.type != schema.TensorType.FLOAT32 or
          constant is None or not len(constant) or len(ids.shape) != 1 or
          options.axis != 0 or options.batchDims != 0):
        continue
      if lookup_code is None:
        if "EMBEDDING_LOOKUP" not in names:
          code = schema.OperatorCodeT()
          code.builtinCode = code.deprecatedBuiltinCode = (
              schema.BuiltinOperator.EMBEDDING_LOOKUP)
          code.version = 1
          parsed.operatorCodes.append(code)
          names.append("EMBEDDING_LOOKUP")
        lookup_code = names.index("EMBEDDING_LOOKUP")
      op.opcodeIndex = lookup_code
      op.inputs = [op.inputs[1], op.inputs[0]]  # ids, then the table
      op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.NONE, None
  if lookup_code is None:
    return model
  return bytes(flatbuffer_utils.convert_object_to_bytearray(parsed))


def _share_identical_buffers(model):
  """`model` (TFLite bytes) with each set of identical constant buffers
  stored once. ai-edge-quantizer 0.10.0 gives every signature its own copy
  of a float table it leaves unquantized (a GATHER's embedding table; its
  int4 recipe covers FULLY_CONNECTED, EMBEDDING_LOOKUP and CONV_2D): the
  D=512 benchmark decoder's file held four 8.4 MB copies, 41.0 MB in all."""
  from tensorflow.lite.tools import flatbuffer_utils  # pylint: disable=g-import-not-at-top
  parsed = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
  first = {}  # contents -> the buffer index that keeps them
  remap = {}
  for index, buffer in enumerate(parsed.buffers):
    if buffer.data is None or len(buffer.data) == 0:
      continue
    key = bytes(buffer.data)
    if key in first:
      remap[index] = first[key]
      buffer.data = None
    else:
      first[key] = index
  if not remap:
    return model
  for subgraph in parsed.subgraphs:
    for tensor in subgraph.tensors:
      tensor.buffer = remap.get(tensor.buffer, tensor.buffer)
  return bytes(flatbuffer_utils.convert_object_to_bytearray(parsed))
