"""SavedModels for TF Serving: `<output_dir>/<model_name>/<version>/`.

Publishing is one atomic step, and no step makes a version disappear. The
export is written to a hidden staging directory beside the versions
(`.tmp-<version>-<pid>-<hex>`, which TF Serving ignores), then:
  * a new version is renamed into place with Linux's
    `renameat2(RENAME_NOREPLACE)`, which fails, at the moment of the rename,
    if the version appeared meanwhile (someone else's export): refused
    unless `overwrite`;
  * an existing version is replaced with `renameat2(RENAME_EXCHANGE)`, which
    swaps the two directories in one step (a server sees the old version or
    the new one, never none); the old one, now in staging, is deleted after.
Where `renameat2` is unavailable (not Linux, or a filesystem without those
flags), a plain `rename` publishes a new version (it still fails on a
non-empty existing version), and replacing falls back to two renames, with a
moment between them in which the version is absent.
A killed export leaves only its staging directory; the next export of the
same model removes those whose process is gone.
"""

import ctypes
import errno
import os
import re
import shutil
import tempfile
import uuid

from absl import logging

import tensorflow as tf

from tf_mha.ops import checks

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
  and makes the model directory `<output_dir>/<model_name>` if it is
  missing (writing a probe into it: permission bits say nothing for root).

  Returns:
    The version directory `<output_dir>/<model_name>/<version>` (`version`
    defaults to `next_version`).

  Raises:
    ExportRefused: the version exists and `overwrite` is False, or the
      model directory is a file or cannot be created or written to (nothing
      is changed).
    ValueError: `model_name` or `version` are not usable.
  """
  if (not isinstance(model_name, str) or not model_name or os.sep in model_name
      or model_name.startswith(".")):
    raise ValueError("`model_name` must be a plain directory name. "
                     f"Received: model_name={model_name!r}")
  name_max = _name_max(output_dir)
  if len(os.fsencode(model_name)) > name_max:
    raise ValueError(f"`model_name` is longer than this filesystem's {name_max}"
                     f" bytes. Received: model_name={model_name[:40]!r}... "
                     f"({len(os.fsencode(model_name))} bytes)")
  model_dir = os.path.join(output_dir, model_name)
  if version is None:
    version = next_version(model_dir)
  version = checks.positive_int("version", version)
  final = os.path.join(model_dir, str(version))
  if os.path.exists(final) and not overwrite:
    raise ExportRefused(f"{final} already exists; pass --overwrite to replace "
                        "it. Nothing was written.")
  if os.path.exists(model_dir) and not os.path.isdir(model_dir):
    raise ExportRefused(f"`output_dir`={output_dir!r}, `model_name`="
                        f"{model_name!r}: the model directory {model_dir} is a "
                        "file. Nothing was written.")
  try:  # Made now, and written to, so that a bad destination fails early
    # (`os.access` is always true for root, even on /proc).
    os.makedirs(model_dir, exist_ok=True)
    os.rmdir(tempfile.mkdtemp(prefix=".tmp-probe-", dir=model_dir))
  except OSError as e:
    raise ExportRefused(
        f"`output_dir`={output_dir!r}, `model_name`={model_name!r}: the model "
        f"directory {model_dir} cannot be written ({e.strerror}). Nothing was "
        "written.") from e
  return final


def _name_max(directory):
  """The longest file name, in bytes, that `directory` (or the nearest
  existing parent) allows."""
  directory = os.path.abspath(directory)
  while not os.path.exists(directory):
    directory = os.path.dirname(directory)
  try:
    return os.pathconf(directory, "PC_NAME_MAX")
  except (OSError, ValueError):
    return 255


def export(obj, output_dir, model_name, version=None, *, signatures=None,
           overwrite=False, warmup_inputs=None, verify=None):
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
    verify: called with the written (not yet published) export directory;
      what it raises aborts the export, leaving nothing published.

  Returns:
    The path of the version directory.

  Raises:
    ExportRefused: as `check_destination`, or the version appeared while
      this export was being written and `overwrite` is False (nothing of
      theirs is changed).
    ValueError: `model_name` or `version` are not usable.
  """
  final = check_destination(output_dir, model_name, version, overwrite)
  model_dir, version = os.path.split(final)
  os.makedirs(model_dir, exist_ok=True)
  remove_stale_staging(model_dir)
  staging = os.path.join(
      model_dir, f".tmp-{version}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
  try:
    tf.saved_model.save(obj, staging, signatures=signatures)
    _step("saved")
    if verify is not None:
      verify(staging)
    if warmup_inputs is not None:
      write_warmup(staging, warmup_inputs)
    _step("complete")
    _publish(staging, final, overwrite)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return final


# Called with each step's name; tests inject faults (a SIGKILL) through it.
_step_hook = None


def _step(name):
  if _step_hook is not None:
    _step_hook(name)


_STAGING = re.compile(r"\.tmp-\d+-(\d+)-[0-9a-f]+(-old)?")


def remove_stale_staging(model_dir):
  """Deletes staging directories of exports whose process is gone (killed
  mid-export); returns their paths. Live exports' staging is kept."""
  removed = []
  for name in os.listdir(model_dir):
    match = _STAGING.fullmatch(name)
    if not name.startswith(".tmp-"):
      continue
    if match and _alive(int(match.group(1))):
      continue
    path = os.path.join(model_dir, name)
    shutil.rmtree(path, ignore_errors=True)
    logging.info("Removed %s, left by an interrupted export", path)
    removed.append(path)
  return removed


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _publish(staging, final, overwrite):
  """Moves the complete `staging` to `final` in one atomic step."""
  try:
    _renameat2(staging, final, _RENAME_NOREPLACE)
  except FileExistsError:
    if not overwrite:
      raise ExportRefused(
          f"{final} appeared while this export was being written (another "
          "export?); pass --overwrite to replace it. It was left as it is.")
    _replace(staging, final)
  except _Unsupported:
    try:
      os.rename(staging, final)  # fails on a non-empty `final`
    except OSError as e:
      if e.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not overwrite:
        raise ExportRefused(f"{final} exists; pass --overwrite to replace "
                            f"it. It was left as it is. ({e.strerror})") from e
      _replace(staging, final)
  _step("published")


def _replace(staging, final):
  """Swaps `staging` and the existing `final`, then deletes the old one."""
  try:
    _renameat2(staging, final, _RENAME_EXCHANGE)
  except _Unsupported:  # two renames: `final` is absent between them
    os.rename(final, staging + "-old")
    os.rename(staging, final)
    shutil.rmtree(staging + "-old", ignore_errors=True)
  _step("exchanged")
  shutil.rmtree(staging, ignore_errors=True)  # the old version, now here


class _Unsupported(Exception):
  """`renameat2` with these flags is not available here."""


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _renameat2(source, target, flags):
  """Linux `renameat2(source, target, flags)`.

  Raises:
    _Unsupported: no `renameat2` in the C library, or not for these flags
      on this filesystem.
    FileExistsError: `RENAME_NOREPLACE` and `target` exists.
    OSError: any other failure.
  """
  function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
  if function is None:
    raise _Unsupported()
  if function(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target),
              flags) == 0:
    return
  code = ctypes.get_errno()
  if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
    raise _Unsupported()
  raise OSError(code, os.strerror(code), target)


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
