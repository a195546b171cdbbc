"""Any SavedModel -> one `.tflite` file holding its signatures, checked in
LiteRT against the SavedModel before it is written.

`convert_saved_model` is what `tf_mha_convert_tflite` runs: on a user's own
export, on Keras 3's `model.export`, on the demos'. By default it converts
every signature whose inputs are all numbers; signatures with string inputs
(a text front end, which needs tensorflow-text's custom kernels) are named
as skipped. The file is written only when every signature's outputs in
LiteRT are finite where the SavedModel's are and, for float32, within
`tflite.FLOAT32_TOLERANCE` of their scale.
"""

import collections
import dataclasses

import numpy as np
import tensorflow as tf

from tf_mha.export import arrays as arrays_lib
from tf_mha.export import tflite

# Examples compared between LiteRT and the SavedModel, per signature.
_CHECKED_EXAMPLES = 16
# Calibration examples used, per signature.
_CALIBRATION_EXAMPLES = 512


class SelectOpsRefused(ValueError):
  """The model needs TensorFlow ops that TFLite has no builtin for."""


class LiteRTFailed(ValueError):
  """LiteRT failed to run the converted model on the check's inputs."""


@dataclasses.dataclass
class Conversion:
  """What `convert_saved_model` wrote and measured."""
  output_file: str
  size: int
  quantize: str
  signatures: list
  skipped: dict  # signature -> why it was left out
  operators: dict  # operator name -> count, over every signature
  # signature -> {output: max |TFLite - SavedModel|}, or None where LiteRT
  # cannot run it here (Select TF ops need the Flex delegate).
  differences: dict
  checked_on: dict  # signature -> what the inputs were

  def lines(self):
    out = [f"TFLite ({self.quantize}): {self.output_file} "
           f"({self.size / 1e3:.1f} kB), signatures: {', '.join(self.signatures)}"]
    out += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
    out.append("operators: " + ", ".join(
        f"{name} x{count}" for name, count in sorted(self.operators.items())))
    for name, outputs in self.differences.items():
      if outputs is None:
        out.append(f"{name}: not checked in LiteRT ({self.checked_on[name]})")
        continue
      for output, diff in outputs.items():
        out.append(f"max |TFLite - SavedModel| {name}/{output}: {diff:.3g} "
                   f"({self.checked_on[name]})")
    return out


def convert_saved_model(saved_model_dir, output_file, *, signatures=None,
                        quantize="none", calibration_data=None,
                        sample_data=None, allow_select_tf_ops=False,
                        loaded=None):
  """Converts a SavedModel's signatures to one TFLite model and checks it.

  Args:
    saved_model_dir: a SavedModel directory (a TF Serving version directory).
    output_file: where to write the `.tflite` file (atomically, and only
      after the checks pass).
    signatures: signature keys to convert; `None`: every signature whose
      inputs are all numeric.
    quantize: one of `tflite.QUANTIZATIONS`.
    calibration_data: for "int8" (required there): an `.npz` path whose
      arrays are named after the signatures' inputs, or `{signature: path}`
      (one `.npz` per signature), or `{signature: [{input: array}, ...]}`
      (examples in memory, used as given). See `tf_mha.export.arrays`.
    sample_data: inputs for the LiteRT check, in the same forms; by default
      the calibration data, else inputs drawn from the signatures' specs
      (integer inputs that index a table of the model stay inside it, and
      the draw is one the SavedModel runs on).
    allow_select_tf_ops: let TensorFlow ops without a TFLite builtin run as
      Select TF ops (Flex); refused, naming them, otherwise. Such a model
      is written unchecked: no Python interpreter here has the Flex
      delegate to run it.
    loaded: `saved_model_dir` already loaded, if the caller has it.

  Returns:
    A `Conversion`.

  Raises:
    ValueError: an argument that does not fit (named), a SavedModel that
      does not load or convert, data that do not match the inputs.
    SelectOpsRefused: the model needs Select TF ops and they are not allowed.
    LiteRTFailed: LiteRT cannot run the model on the check's inputs.
    tflite.ConversionMismatch: LiteRT's outputs disagree with the SavedModel.
  """
  tflite.check_quantization(quantize)
  tflite.check_output_file(output_file)
  loaded = loaded or load(saved_model_dir)
  specs = {name: arrays_lib.signature_inputs(fn)
           for name, fn in loaded.signatures.items()}
  names, skipped = choose_signatures(specs, signatures)
  specs = {name: specs[name] for name in names}
  calibration = _data(calibration_data, specs, "calibration_data")
  if quantize == "int8" and calibration is None:
    raise ValueError(
        "`calibration_data` is required for quantize='int8': an .npz of "
        f"inputs named after {_input_names(specs)}. Received: "
        "calibration_data=None")
  samples = _data(sample_data, specs, "sample_data") or calibration or {}
  representative = None
  if calibration:
    representative = [(name, example) for name in names
                      for example in calibration[name][:_CALIBRATION_EXAMPLES]]
  model = to_tflite(saved_model_dir, names, quantize, representative,
                   allow_select_tf_ops)
  differences, checked_on = {}, {}
  tables = tflite.index_bounds(model)  # ids LiteRT accepts, per input
  flex = [op for op in tflite.operator_counts(model) if op.startswith("CUSTOM:Flex")]
  for name in names:
    if flex:  # LiteRT's wheel (and TF's) has no Flex delegate to run them
      differences[name] = None
      checked_on[name] = (f"Select TF ops {flex} need the Flex delegate, "
                          "which this Python does not have")
      continue
    function = loaded.signatures[name]
    examples = samples.get(name)
    checked_on[name] = ("the given examples" if examples else
                        "inputs drawn from its specs")
    if not examples:
      examples = arrays_lib.draw_accepted(
          specs[name], lambda example, f=function: run_saved(f, example),
          signature=name, int_bounds=tables.get(name))
    differences[name] = _compare(model, name, function,
                                 examples[:_CHECKED_EXAMPLES], quantize)
  tflite.atomic_write(output_file, model)
  return Conversion(output_file, len(model), quantize, names, skipped,
                    tflite.operator_counts(model), differences, checked_on)


def load(saved_model_dir):
  """The SavedModel at `saved_model_dir`; a ValueError naming the flag."""
  if not tf.saved_model.contains_saved_model(saved_model_dir):
    raise ValueError("`saved_model_dir` holds no SavedModel (no "
                     f"saved_model.pb). Received: saved_model_dir={saved_model_dir!r}")
  try:
    return tf.saved_model.load(saved_model_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"`saved_model_dir`={saved_model_dir!r} does not load as "
                     f"a SavedModel: {type(e).__name__}: {str(e)[:300]}") from e


def choose_signatures(specs, requested):
  """`(names to convert, {skipped name: reason})` from the signatures'
  input specs and the requested names (`None`: every numeric one)."""
  if not specs:
    raise ValueError("The SavedModel has no signatures to convert.")
  if requested:
    unknown = [name for name in requested if name not in specs]
    if unknown:
      raise ValueError(f"`signatures` names {unknown}, which the SavedModel "
                       f"does not have; it has {sorted(specs)}. Received: "
                       f"signatures={list(requested)}")
    return list(dict.fromkeys(requested)), {}
  names, skipped = [], {}
  for name, inputs in sorted(specs.items()):
    strings = [i for i, spec in inputs.items() if spec.dtype == tf.string]
    if strings:
      skipped[name] = (f"string inputs {strings} (a text front end; name it "
                       "in `signatures` to try)")
    else:
      names.append(name)
  if not names:
    raise ValueError(f"No signature of the SavedModel has numeric inputs only "
                     f"({skipped}); name the ones to convert in `signatures`.")
  return names, skipped


def _input_names(specs):
  return {name: sorted(inputs) for name, inputs in specs.items()}


def _data(source, specs, flag):
  """`{signature: [example, ...]}` from `source` (a path, or `{signature:
  path}`), checked against each signature's inputs; None without source."""
  if source is None:
    return None
  if isinstance(source, str):
    arrays = arrays_lib.load_npz(source, flag)
    used = set().union(*(set(inputs) for inputs in specs.values()))
    unexpected = sorted(set(arrays) - used)
    if unexpected:
      raise ValueError(
          f"`{flag}` holds arrays {unexpected} that are no input of the "
          f"signatures converted; their inputs are {_input_names(specs)}. "
          f"Received: {flag}={source!r}")
    sources = {name: arrays for name in specs}
    allow_unexpected = True
  else:
    unknown = sorted(set(source) - set(specs))
    missing = sorted(set(specs) - set(source))
    if unknown or missing:
      raise ValueError(
          f"`{flag}` must give one .npz per signature converted "
          f"({sorted(specs)}). Received: unknown signatures {unknown}, "
          f"missing signatures {missing}")
    if all(isinstance(v, list) for v in source.values()):
      return dict(source)  # examples in memory, from library callers
    sources = {name: arrays_lib.load_npz(path, flag)
               for name, path in source.items()}
    allow_unexpected = False
  out = {}
  for name, arrays in sources.items():
    checked = arrays_lib.check_arrays(
        arrays, specs[name], flag=flag, signature=name,
        allow_unexpected=allow_unexpected)
    out[name] = arrays_lib.examples(checked, specs[name])
  return out


def run_saved(function, example):
  """A SavedModel signature's outputs on one example of arrays."""
  return function(**{k: tf.constant(v) for k, v in example.items()})


def to_tflite(saved_model_dir, names, quantize, representative, allow_select):
  """The signatures `names` as a TFLite model of builtin operators; a
  ValueError when they do not convert, `SelectOpsRefused` (naming the ops)
  when they need Select TF ops and `allow_select` is False."""
  try:
    return tflite.convert(saved_model_dir, signature=names, quantize=quantize,
                          representative_inputs=representative)
  except Exception as builtins_error:  # pylint: disable=broad-except
    # The converter's errors are of several internal types; tell whether
    # Select TF ops would convert it, and which.
    try:
      model = tflite.convert(saved_model_dir, signature=names,
                             quantize=quantize,
                             representative_inputs=representative,
                             select_tf_ops=True)
    except Exception:  # pylint: disable=broad-except
      raise ValueError(
          f"The signatures {names} do not convert to TFLite: "
          f"{_first_lines(builtins_error)}") from builtins_error
  flex = sorted(name for name in tflite.operator_counts(model)
                if name.startswith("CUSTOM:Flex"))
  if not allow_select:
    raise SelectOpsRefused(
        f"The model needs TensorFlow ops that TFLite has no builtin for: "
        f"{[name.split(':Flex', 1)[1] for name in flex]}. Pass "
        "--allow_select_tf_ops (allow_select_tf_ops=True) to convert them as "
        "Select TF ops; the app then needs the Flex delegate.")
  return model


def _first_lines(error, count=6):
  lines = [line for line in str(error).splitlines() if line.strip()]
  return " | ".join(lines[:count])[:800]


def _compare(model, name, function, examples, quantize):
  """`{output: max |TFLite - SavedModel|}` over `examples`; raises a
  `ConversionMismatch` for non-finite outputs, and for float32 beyond the
  tolerance."""
  worst = collections.defaultdict(float)
  scale = collections.defaultdict(lambda: 1.0)  # max |SavedModel|, at least 1
  for example in examples:
    want = run_saved(function, example)
    try:
      got = tflite.run(model, name, example)
    except (RuntimeError, ValueError) as e:
      raise LiteRTFailed(
          f"LiteRT could not run signature {name!r} of the converted model "
          f"(quantize={quantize!r}) on inputs {arrays_lib.describe(example)}: "
          f"{arrays_lib.reason(e)}. Nothing written. If those inputs are "
          "outside what the model takes, give inputs it accepts with "
          "`sample_data` (--sample_data).") from e
    for output, value in want.items():
      value = np.asarray(value)
      mine = np.asarray(got[output])
      if not np.all(np.isfinite(mine) | ~np.isfinite(value)):
        raise tflite.ConversionMismatch(
            f"{quantize} TFLite gives non-finite values in {name}/{output} "
            "where the SavedModel's are finite")
      diff = float(np.max(np.abs(mine.astype(np.float64) - value), initial=0.0))
      worst[output] = max(worst[output], diff)
      if np.issubdtype(value.dtype, np.number):
        finite = np.abs(value[np.isfinite(value)])
        scale[output] = max(scale[output], float(np.max(finite, initial=0.0)))
  if quantize == "none":
    for output, diff in worst.items():
      limit = tflite.FLOAT32_TOLERANCE * scale[output]
      if diff > limit:
        raise tflite.ConversionMismatch(
            f"float32 TFLite differs from the SavedModel by {diff:.3g} in "
            f"{name}/{output} (> {limit:.3g}: {tflite.FLOAT32_TOLERANCE} of "
            "the outputs' scale); nothing written")
  return dict(worst)
