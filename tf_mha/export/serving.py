"""SavedModels for TF Serving: `<output_dir>/<model_name>/<version>/`.

Writing is atomic: the export goes to a hidden sibling directory and is
renamed into place only when complete, so a server polling the model
directory never sees half a model and an interrupted export leaves nothing.
"""

import os
import re
import shutil
import uuid

import tensorflow as tf

from tf_mha import _checks

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


class ExportRefused(Exception):
  """An export that would overwrite an existing version without consent, or
  write where it cannot."""


def next_version(model_dir):
  """One more than the highest numeric version under `model_dir` (1 if none)."""
  if not tf.io.gfile.isdir(model_dir):
    return 1
  versions = [int(name.rstrip("/")) for name in tf.io.gfile.listdir(model_dir)
              if re.fullmatch(r"\d+/?", name)]
  return max(versions, default=0) + 1


def check_destination(output_dir, model_name, version=None, overwrite=False):
  """Checks where `export` would write, before any work is spent on it,
  and makes `output_dir` if it is missing.

  Returns:
    The version directory `<output_dir>/<model_name>/<version>` (`version`
    defaults to `next_version`).

  Raises:
    ExportRefused: the version exists and `overwrite` is False, or
      `output_dir` cannot be created or written to (nothing is changed).
    ValueError: `model_name` or `version` are not usable.
  """
  if (not isinstance(model_name, str) or not model_name or os.sep in model_name
      or model_name.startswith(".")):
    raise ValueError("`model_name` must be a plain directory name. "
                     f"Received: model_name={model_name!r}")
  model_dir = os.path.join(output_dir, model_name)
  if version is None:
    version = next_version(model_dir)
  version = _checks.positive_int("version", version)
  final = os.path.join(model_dir, str(version))
  if os.path.exists(final) and not overwrite:
    raise ExportRefused(f"{final} already exists; pass --overwrite to replace "
                        "it. Nothing was written.")
  try:  # The base directory is made now, so that a bad one fails early.
    os.makedirs(output_dir, exist_ok=True)
    writable = os.access(output_dir, os.W_OK | os.X_OK)
  except OSError as e:
    writable, why = False, f": {e.strerror}"
  else:
    why = " (no write permission)"
  if not writable:
    raise ExportRefused(f"`output_dir`={output_dir!r} cannot be written{why}. "
                        "Nothing was written.")
  return final


def export(obj, output_dir, model_name, version=None, *, signatures=None,
           overwrite=False, warmup_inputs=None):
  """Saves `obj` as `<output_dir>/<model_name>/<version>/`, atomically.

  Args:
    obj: a trackable (tf.Module or Keras model) to save.
    output_dir: the TF Serving base directory.
    model_name: the model's directory name.
    version: positive int; defaults to `next_version`.
    signatures: passed to `tf.saved_model.save`.
    overwrite: replace an existing version instead of refusing.
    warmup_inputs: `{input_name: np.ndarray}` for the `serving_default`
      warmup request, written when the serving API protos are available.

  Returns:
    The path of the version directory.

  Raises:
    ExportRefused: as `check_destination` (nothing is changed).
    ValueError: `model_name` or `version` are not usable.
  """
  final = check_destination(output_dir, model_name, version, overwrite)
  model_dir, version = os.path.split(final)
  os.makedirs(model_dir, exist_ok=True)
  staging = os.path.join(model_dir, f".tmp-{version}-{uuid.uuid4().hex[:8]}")
  try:
    tf.saved_model.save(obj, staging, signatures=signatures)
    if warmup_inputs is not None:
      write_warmup(staging, warmup_inputs)
    _replace(staging, final)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return final


def _replace(staging, final):
  """Renames `staging` to `final`; an old `final` is moved aside first."""
  if os.path.exists(final):
    retired = f"{staging}-old"
    os.rename(final, retired)
    os.rename(staging, final)
    shutil.rmtree(retired, ignore_errors=True)
  else:
    os.rename(staging, final)


def write_warmup(export_dir, inputs, signature="serving_default"):
  """Writes one PredictRequest as `assets.extra/tf_serving_warmup_requests`.

  Returns:
    The file's path, or None when tensorflow-serving-api is not installed.
  """
  try:
    from tensorflow_serving.apis import model_pb2
    from tensorflow_serving.apis import predict_pb2
    from tensorflow_serving.apis import prediction_log_pb2
  except ImportError:
    return None
  request = predict_pb2.PredictRequest(
      model_spec=model_pb2.ModelSpec(signature_name=signature))
  for name, value in inputs.items():
    request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
  log = prediction_log_pb2.PredictionLog(
      predict_log=prediction_log_pb2.PredictLog(request=request))
  path = os.path.join(export_dir, WARMUP_FILE)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(log.SerializeToString())
  return path


def directory_size(path):
  """Total bytes of the files under `path`."""
  total = 0
  for root, _, files in os.walk(path):
    total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
  return total
