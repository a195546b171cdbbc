"""Export a user's saved Keras model for TF Serving: a tf_keras `.keras`,
`.h5` or SavedModel directory, or a Keras 3 `.keras` file (models on
`tf_mha.keras3`), holding tf_mha layers or not.

The `serving_default` signature takes the model's inputs by their names
(an input dict's keys, else the `Input` layers' names), with the shapes the
model declares (batch and any length left dynamic stay dynamic), and returns
its outputs by name. Before publishing, the exported signature is run beside
the Keras model on sample inputs (the user's, or drawn from the specs).
"""

import dataclasses
import importlib
import json
import os
import zipfile

import numpy as np
import tensorflow as tf
import tf_keras

from tf_mha import layers  # (also registers the layers as Keras serializables)
from tf_mha.export import arrays as arrays_lib
from tf_mha.export import serving


@dataclasses.dataclass
class KerasExport:
  """What `export_keras_model` wrote and measured."""
  path: str
  framework: str  # "tf_keras" or "keras3"
  inputs: dict  # name -> tf.TensorSpec
  outputs: list
  difference: float  # max |SavedModel - Keras| on the checked inputs
  checked_on: str
  warmup: bool

  def lines(self):
    size = serving.directory_size(self.path) / 1e6
    inputs = ", ".join(f"{name} {spec.dtype.name}{spec.shape.as_list()}"
                       for name, spec in self.inputs.items())
    return [f"SavedModel: {self.path} ({size:.2f} MB, {self.framework} model)",
            f"serving_default: inputs {inputs}; outputs {', '.join(self.outputs)}",
            f"max |SavedModel - Keras|: {self.difference:.3g} ({self.checked_on})",
            "warmup request: " + ("written (first sample)" if self.warmup else
                                  "none (give --sample_data)")]


def export_keras_model(model_path, *, output_dir, model_name, version=None,
                       overwrite=False, sample_data=None, imports=(),
                       patch_tf_keras=False, safe_mode=True):
  """Loads a saved Keras model and exports it for TF Serving, atomically.

  Args:
    model_path: a tf_keras `.keras`/`.h5`/SavedModel directory, or a Keras 3
      `.keras` file.
    output_dir, model_name, version, overwrite: as `serving.export`.
    sample_data: an `.npz` of arrays named after the inputs (see
      `tf_mha.export.arrays`): its first example becomes the TF Serving
      warmup request, and its examples the SavedModel-vs-Keras check.
    imports, patch_tf_keras, safe_mode: as `load_keras_model`.

  Returns:
    A `KerasExport`.

  Raises:
    ValueError: `model_path` does not load as a Keras model, the model has
      no input specs, or `sample_data` does not match its inputs.
    serving.ExportRefused: as `serving.export`.
  """
  serving.check_destination(output_dir, model_name, version, overwrite)
  model, framework = load_keras_model(model_path, imports, patch_tf_keras,
                                      safe_mode)
  specs, serve = serving_function(model, framework)
  examples, checked_on, warmup = None, "inputs drawn from the specs", None
  if sample_data is not None:
    arrays = arrays_lib.check_arrays(
        arrays_lib.load_npz(sample_data, "sample_data"), specs,
        flag="sample_data", signature="serving_default")
    examples = arrays_lib.examples(arrays, specs, limit=16)
    checked_on, warmup = "the sample data", examples[0]
  elif not any(spec.dtype == tf.string for spec in specs.values()):
    examples = arrays_lib.draw_accepted(
        specs, lambda example: serve(*[tf.constant(example[name])
                                       for name in specs]),
        signature="serving_default")
  result = {}

  def verify(staging):
    result["difference"] = _max_difference(staging, serve, list(specs),
                                           examples or [])

  path = serving.export(_tracking_module(model), output_dir, model_name,
                        version, signatures={"serving_default": serve},
                        overwrite=overwrite, warmup_inputs=warmup,
                        verify=verify)
  if examples is None:
    checked_on = "not checked: string inputs cannot be drawn"
  outputs = list(serve.get_concrete_function().structured_outputs)
  return KerasExport(path, framework, specs, outputs, result["difference"],
                     checked_on, warmup is not None)


def _tracking_module(model):
  """A `tf.Module` that tracks what the serving function reads of `model`:
  its variables and its resources (lookup tables) and assets (their vocabulary
  files), not the model object itself.

  A tf_keras model loaded from a SavedModel directory carries the functions
  restored with it, which capture the variables as first loaded; saving the
  model object saves those too and fails ("captures tensor ... not reachable
  from root"). Keras' own `ExportArchive` tracks lists the same way. For a
  Keras 3 model the lists hold the tf.Variables under its variables, which
  tf.saved_model does not see through the model (untracked, the TFLite
  converter did not freeze them and LiteRT read them uninitialised: NaN).
  """
  module = tf.Module()
  module.model_variables = [v if isinstance(v, tf.Variable) else v.value
                            for v in model.weights]
  module.model_resources = [
      t for t in tf.train.TrackableView(model).descendants()
      if isinstance(t, (tf.saved_model.experimental.TrackableResource,
                        tf.saved_model.Asset))]
  return module


def load_keras_model(model_path, imports=(), patch_tf_keras=False,
                     safe_mode=True):
  """`(model, "tf_keras" or "keras3")` from a saved model path.

  Args:
    model_path: see `export_keras_model`.
    imports: modules to import first: those that register the model's own
      layer classes (Model Garden's: `official.nlp.modeling`).
    patch_tf_keras: run `tf_mha.patch_tf_keras()` before those imports, so
      that layers subclassing tf.keras' `MultiHeadAttention` (Model
      Garden's) are loaded on tf_mha's.
    safe_mode: Keras' `safe_mode` for `.keras` files: False loads Python
      lambdas saved in the file (Model Garden's default activation is
      one); only for files you trust.
  """
  if not os.path.exists(model_path):
    raise ValueError(f"`keras_model` does not exist. Received: "
                     f"keras_model={model_path!r}")
  if patch_tf_keras:
    layers.patch_tf_keras()
  for module in imports:
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise ValueError(f"`imports` names a module that does not import. "
                       f"Received: {module!r} ({e})") from e
  framework = "keras3" if _is_keras3_file(model_path) else "tf_keras"
  try:
    if framework == "keras3":
      import keras  # pylint: disable=g-import-not-at-top
      importlib.import_module("tf_mha.keras3")  # registers its layers
      return keras.saving.load_model(model_path, compile=False,
                                     safe_mode=safe_mode), framework
    options = {"safe_mode": safe_mode} if zipfile.is_zipfile(model_path) else {}
    return tf_keras.models.load_model(model_path, compile=False,
                                      **options), framework
  except Exception as e:  # pylint: disable=broad-except
    hint = ""
    if "lambda" in str(e):
      hint = ("; it holds a Python lambda, which loads only with "
              "safe_mode=False (--nosafe_mode), for a file you trust" if
              safe_mode else "; it holds a Python lambda saved by name only "
              "(tf_keras cannot restore it): build the model with a named "
              "function or a string such as activation='gelu'")
    elif "Unknown" in str(e):
      hint = ("; its own layer classes must be registered first: name their "
              "module in `imports` (--imports)")
    raise ValueError(
        "`keras_model` does not load as a Keras model (tf_keras .keras, .h5 "
        "or SavedModel directory; Keras 3 .keras). Received: "
        f"keras_model={model_path!r} ({type(e).__name__}: {str(e)[:300]}){hint}"
    ) from e


def _is_keras3_file(path):
  """Whether `path` is a `.keras` archive written by Keras 3."""
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as archive:
    try:
      metadata = json.loads(archive.read("metadata.json"))
    except (KeyError, ValueError):
      return False
  return str(metadata.get("keras_version", "")).startswith("3.")


def serving_function(model, framework):
  """`(specs, function)`: the model's inputs `{name: tf.TensorSpec}` and a
  `tf.function` over them (named as the specs) returning `{name: output}`."""
  structure, flat = _inputs(model, framework)
  if isinstance(structure, dict):
    names = tf.nest.flatten({key: key for key in structure})
  else:
    names = [_input_name(t, framework, i) for i, t in enumerate(flat)]
  specs = {name: tf.TensorSpec(_shape(t), tf.as_dtype(t.dtype), name=name)
           for name, t in zip(names, flat)}
  output_names = _output_names(model, framework)

  def serve(*args):
    inputs = tf.nest.pack_sequence_as(structure, list(args))
    outputs = model(inputs, training=False)
    if isinstance(outputs, dict):
      return dict(outputs)
    outputs = tf.nest.flatten(outputs)
    names = output_names if len(output_names) == len(outputs) else [
        f"output_{i}" for i in range(len(outputs))]
    return dict(zip(names, outputs))

  return specs, tf.function(serve, input_signature=list(specs.values()))


def _inputs(model, framework):
  """The model's input structure and its flat list of symbolic inputs."""
  structure = getattr(model, "_inputs_struct" if framework == "keras3"
                      else "_nested_inputs", None)
  if structure is None and getattr(model, "inputs", None):
    structure = model.inputs if len(model.inputs) > 1 else model.inputs[0]
  if structure is None and framework == "tf_keras":
    # A subclassed model called before saving: the specs of that call.
    spec = model.save_spec(dynamic_batch=True)
    if spec and spec[0] and not spec[1]:
      structure = spec[0][0] if len(spec[0]) == 1 else list(spec[0])
  if structure is None:
    raise ValueError(
        "`keras_model` has no declared inputs (a subclassed model never "
        "called before saving): save a functional model, or call the model "
        "once before saving it.")
  return structure, tf.nest.flatten(structure)


def _input_name(tensor, framework, index):
  if framework == "tf_keras":
    history = getattr(tensor, "_keras_history", None)
    if history is not None:
      return history.layer.name
  return getattr(tensor, "name", None) or f"input_{index}"


def _shape(tensor):
  shape = tf.TensorShape(tensor.shape)
  return shape if shape.rank is None else tf.TensorShape(
      [None] + shape.as_list()[1:])


def _output_names(model, framework):
  structure = getattr(model, "_outputs_struct" if framework == "keras3"
                      else "_nested_outputs", None)
  if isinstance(structure, dict):
    return tf.nest.flatten({key: key for key in structure})
  return list(getattr(model, "output_names", None) or [])


def _max_difference(saved_model_dir, serve, names, examples):
  """Max |SavedModel - Keras| of `serving_default` over `examples`
  (`names`: the function's inputs, in order)."""
  loaded = tf.saved_model.load(saved_model_dir)
  signature = loaded.signatures["serving_default"]
  worst = 0.0
  for example in examples:
    inputs = {k: tf.constant(v) for k, v in example.items()}
    want = serve(*[inputs[name] for name in names])
    got = signature(**inputs)
    for name, value in want.items():
      diff = np.abs(np.asarray(got[name], np.float64) - np.asarray(value))
      worst = max(worst, float(np.max(diff, initial=0.0)))
  return worst
