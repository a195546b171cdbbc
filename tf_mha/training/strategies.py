"""The `tf.distribute` strategies and mixed-precision policies the trainer
runs under, by name: default, mirrored, multi-worker (from `TF_CONFIG`) and
TPU (a jit-compiled replica step).
"""

import json
import os
import socket
import urllib.parse

import tensorflow as tf
import tf_keras


STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


class TpuUnavailable(RuntimeError):
  """No TPU can be reached from this host."""


def logical_cpus(count):
  """Splits the host CPU into `count` logical devices and returns their names.

  Must run before TensorFlow initializes its devices (before the first op).
  """
  cpu = tf.config.list_physical_devices("CPU")[0]
  wanted = [tf.config.LogicalDeviceConfiguration()] * count
  try:
    tf.config.set_logical_device_configuration(cpu, wanted)
  except RuntimeError as e:
    have = tf.config.list_logical_devices("CPU")
    if len(have) < count:
      raise RuntimeError(
          f"Need {count} logical CPU devices but TensorFlow is already "
          f"initialized with {len(have)}; choose the strategy before running "
          f"any TensorFlow op. ({e})") from e
  return [d.name for d in tf.config.list_logical_devices("CPU")[:count]]


def make_strategy(name, tpu=""):
  """The `tf.distribute` strategy called `name` (one of `STRATEGIES`).

  `mirrored` uses the GPUs when there are any, else two logical CPU devices;
  `multi_worker` reads the cluster from `TF_CONFIG`; `tpu` connects through
  `TPUClusterResolver(tpu=tpu)` and raises `TpuUnavailable` when it cannot.
  """
  if name not in STRATEGIES:
    raise ValueError(f"`strategy` must be one of {STRATEGIES}. Received: "
                     f"strategy={name!r}")
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    if tf.config.list_physical_devices("GPU"):
      return tf.distribute.MirroredStrategy()
    return tf.distribute.MirroredStrategy(logical_cpus(2))
  if name == "multi_worker":
    _check_tf_config(os.environ.get("TF_CONFIG"))
    return tf.distribute.MultiWorkerMirroredStrategy()
  return _tpu_strategy(tpu)


def _check_tf_config(raw):
  example = ('{"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:23456"]}, '
             '"task": {"type": "worker", "index": 0}}')
  if not raw:
    raise ValueError("strategy=multi_worker reads the cluster from the TF_CONFIG "
                     f"environment variable, which is not set. Example: {example}")
  try:
    config = json.loads(raw)
    config["cluster"], config["task"]["type"], config["task"]["index"]  # pylint: disable=pointless-statement
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"TF_CONFIG must be JSON with 'cluster' and 'task' "
                     f"(type, index), e.g. {example}. Received: "
                     f"TF_CONFIG={raw!r}") from e


def _tpu_strategy(tpu, connect_timeout=10.0):
  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
  except (ValueError, RuntimeError) as e:
    raise TpuUnavailable(
        f"No TPU found (tpu={tpu!r}): {e} Pass --tpu=<name or grpc://host:port> "
        "on a Cloud TPU VM or a host that can reach one.") from e
  master = resolver.master()
  if master.startswith("grpc://"):
    # Connecting to an address where nothing listens blocks forever; probe it.
    address = urllib.parse.urlparse(master)
    try:
      socket.create_connection((address.hostname, address.port),
                               timeout=connect_timeout).close()
    except OSError as e:
      raise TpuUnavailable(f"No TPU reachable at {master} (tpu={tpu!r}): {e}") from e
  tf.config.experimental_connect_to_cluster(resolver)
  tf.tpu.experimental.initialize_tpu_system(resolver)
  return tf.distribute.TPUStrategy(resolver)


def set_policy(name):
  """Sets the global Keras dtype policy (one of `POLICIES`)."""
  if name not in POLICIES:
    raise ValueError(f"`mixed_precision` must be one of {POLICIES}. Received: "
                     f"mixed_precision={name!r}")
  tf_keras.mixed_precision.set_global_policy(name)


def is_chief(strategy):
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return True
  return resolver.task_type == "chief" or (
      resolver.task_type == "worker" and resolver.task_id == 0 and
      "chief" not in resolver.cluster_spec().as_dict())
