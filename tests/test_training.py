"""tf.distribute training: Mirrored and multi-worker equal one device, a
killed run resumes to the same weights, the TPU-style step compiles in
bfloat16, mixed_float16 converges, and tools/train.py's errors."""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import portpicker
import tensorflow as tf
import tf_keras

import tf_mha
from tf_mha.demo import tasks
from tf_mha import training
from tf_mha.demo import model as model_lib

from tests import bounds

training.logical_cpus(2)  # before any op (tests/conftest.py does it under pytest)

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_VOCAB = 50


def _examples(count=96, length=12, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.integers(1, _VOCAB, (count, length)).astype(np.int32)
  x[:, length - 3:] *= rng.random((count, 1)) < 0.5  # some padded rows
  return training.Examples(x, (x[:, 0] > x[:, 1]).astype(np.int32))


def _build():
  tf_keras.utils.set_random_seed(1)
  return model_lib.build_classifier(_VOCAB, dim=16)


def _build_user_model():
  """What a user saves: Keras masks flow from the embedding into tf_mha."""
  tf_keras.utils.set_random_seed(2)
  ids = tf_keras.Input((None,), dtype="int32")
  x = tf_keras.layers.Embedding(_VOCAB, 16, mask_zero=True)(ids)
  x = tf_mha.MultiHeadAttention(2, 8)(x, x)
  x = tf_keras.layers.GlobalAveragePooling1D()(x)
  return tf_keras.Model(ids, tf_keras.layers.Dense(2, activation="softmax")(x))


def _loss(y, p):
  return tf_keras.losses.sparse_categorical_crossentropy(y, p)


def _trained_weights(strategy, *, jit_compile, steps=8, model_dir=None, **kw):
  trainer = training.Trainer(strategy, _build, _loss, learning_rate=0.1,
                             optimizer="sgd", jit_compile=jit_compile, model_dir=model_dir, **kw)
  trainer.train(_examples(), steps=steps, batch_size=16, log_every=100)
  return [v.numpy() for v in trainer.model.weights]


def _checkpoint_values(path):
  reader = tf.train.load_checkpoint(path)
  return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(path)
          if name.startswith("model/")}


def _run_tool(*flags, env=None, timeout=300):
  return subprocess.run([sys.executable, "-m", "tools.train", *flags], cwd=_REPO,
                        env=env, capture_output=True, text=True, timeout=timeout)


def _env(**extra):
  return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


class MirroredTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.mirrored = tf.distribute.MirroredStrategy(training.logical_cpus(2))
    self.assertEqual(self.mirrored.num_replicas_in_sync, 2)

  def test_custom_loop_with_jit_replica_step_equals_one_device(self):
    single = _trained_weights(tf.distribute.get_strategy(), jit_compile=True)
    mirrored = _trained_weights(self.mirrored, jit_compile=True)
    initial = [v.numpy() for v in _build().weights]
    self.assertNotAllClose(initial[0], single[0])  # training moved the weights
    size = bounds.joint_scale(single)  # a bias with no gradient stays ~0
    for a, b in zip(single, mirrored):
      bounds.assert_close(a, b, bounds.MODEL_ULPS, scale_of=size)

  def test_model_fit_equals_one_device(self):
    data = _examples()

    def fit(strategy):
      with strategy.scope():
        model = _build()
        model.compile(tf_keras.optimizers.SGD(0.1, momentum=0.9), _loss)
      model.fit(data.x, data.y, batch_size=16, epochs=2, shuffle=False, verbose=0)
      return model.get_weights()

    single = fit(tf.distribute.get_strategy())
    for a, b in zip(single, fit(self.mirrored)):  # on the weights' joint scale
      bounds.assert_close(a, b, bounds.MODEL_ULPS, scale_of=bounds.joint_scale(single))

  def test_batch_size_must_split_across_replicas(self):
    trainer = training.Trainer(self.mirrored, _build, _loss)
    with self.assertRaisesRegex(ValueError, r"batch_size.*Received: batch_size=15"):
      trainer.train(_examples(), steps=2, batch_size=15)


class CheckpointTest(tf.test.TestCase):

  def test_resume_equals_uninterrupted(self):
    model_dir = self.get_temp_dir()
    strategy = tf.distribute.get_strategy()
    _trained_weights(strategy, jit_compile=False, steps=6, model_dir=model_dir,
                     checkpoint_every=3)
    resumed = training.Trainer(strategy, _build, _loss, learning_rate=0.1,
                               optimizer="sgd", model_dir=model_dir)
    self.assertEqual(int(resumed.step.numpy()), 6)
    result = resumed.train(_examples(), steps=12, batch_size=16)
    self.assertEqual((result.first_step, result.steps), (6, 12))
    straight = _trained_weights(strategy, jit_compile=False, steps=12)
    for a, b in zip(straight, [v.numpy() for v in resumed.model.weights]):
      bounds.assert_close(a, b, bounds.MODEL_ULPS, scale_of=bounds.joint_scale(straight))

  def test_batch_schedule_is_a_permutation_per_epoch(self):
    schedule = training.batch_schedule(10, 5, 5, seed=3)
    self.assertEqual(schedule.shape, (5, 5))
    for epoch in range(2):
      self.assertCountEqual(schedule[2 * epoch:2 * epoch + 2].ravel(), range(10))
    self.assertAllEqual(schedule, training.batch_schedule(10, 5, 5, seed=3))
    with self.assertRaisesRegex(ValueError, "batch_size=11"):
      training.batch_schedule(10, 11, 5, seed=3)


class ToolTest(tf.test.TestCase):
  """tools/train.py as a command, on a user model saved to disk."""

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp(dir=self.get_temp_dir())
    self.model_path = os.path.join(self.dir, "model.keras")
    _build_user_model().save(self.model_path)
    data = _examples(count=256)
    self.data_path = os.path.join(self.dir, "data.npz")
    np.savez(self.data_path, x=data.x, y=data.y)
    self.flags = [f"--model={self.model_path}", f"--data={self.data_path}",
                  "--batch_size=16", "--optimizer=sgd", "--learning_rate=0.1",
                  "--log_every=10"]

  def test_killed_run_resumes_to_the_same_weights(self):
    straight = os.path.join(self.dir, "straight")
    done = _run_tool(*self.flags, "--steps=300", "--checkpoint_every=40",
                     f"--model_dir={straight}", env=_env())
    self.assertEqual(done.returncode, 0, done.stderr[-3000:])

    interrupted = os.path.join(self.dir, "interrupted")
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.train", *self.flags, "--steps=300",
         "--checkpoint_every=40", f"--model_dir={interrupted}"],
        cwd=_REPO, env=_env(), stderr=subprocess.PIPE, text=True)
    try:
      for line in process.stderr:
        if "ckpt-80" in line:
          process.send_signal(signal.SIGKILL)
          break
      process.wait(timeout=120)
    finally:
      process.kill()
      process.stderr.close()
    self.assertEqual(process.returncode, -signal.SIGKILL)
    left = tf.train.latest_checkpoint(interrupted)
    self.assertLess(int(left.rsplit("-", 1)[1]), 300)

    resumed = _run_tool(*self.flags, "--steps=300", "--checkpoint_every=40",
                        f"--model_dir={interrupted}", env=_env())
    self.assertEqual(resumed.returncode, 0, resumed.stderr[-3000:])
    self.assertIn("Resumed from", resumed.stderr)
    self.assertRegex(resumed.stdout, r"trained steps [1-9]\d* -> 300")
    expected = _checkpoint_values(os.path.join(straight, "ckpt-300"))
    actual = _checkpoint_values(os.path.join(interrupted, "ckpt-300"))
    self.assertEqual(expected.keys(), actual.keys())
    size = bounds.joint_scale(expected.values())  # weights and optimizer slots
    for name in expected:
      bounds.assert_close(expected[name], actual[name], bounds.MODEL_ULPS, msg=name,
                          scale_of=size)

  def test_two_workers_end_with_equal_weights(self):
    ports = [portpicker.pick_unused_port() for _ in range(2)]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    model_dir = os.path.join(self.dir, "mw")
    workers = []
    try:
      for index in range(2):
        config = json.dumps({"cluster": cluster,
                             "task": {"type": "worker", "index": index}})
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "tools.train", *self.flags, "--steps=12",
             "--strategy=multi_worker", f"--model_dir={model_dir}"],
            cwd=_REPO, env=_env(TF_CONFIG=config), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
      outputs = [w.communicate(timeout=240) for w in workers]
    finally:
      for w in workers:
        w.kill()
        w.wait()
    for w, (_, err) in zip(workers, outputs):
      self.assertEqual(w.returncode, 0, err[-3000:])
    self.assertIn("2 replica(s)", outputs[0][1])
    chief = _checkpoint_values(os.path.join(model_dir, "ckpt-12"))
    other = _checkpoint_values(os.path.join(model_dir, "worker_1", "ckpt-12"))
    # One device over the same global batches gives the same weights too.
    with np.load(self.data_path) as arrays:
      data = training.Examples(arrays["x"], arrays["y"])
    trainer = training.Trainer(
        tf.distribute.get_strategy(),
        lambda: tf_keras.models.load_model(self.model_path, compile=False),
        _loss, learning_rate=0.1, optimizer="sgd",
        model_dir=os.path.join(self.dir, "one"))
    trainer.train(data, steps=12, batch_size=16)
    single = _checkpoint_values(os.path.join(self.dir, "one", "ckpt-12"))
    self.assertEqual(chief.keys(), other.keys())
    size = bounds.joint_scale(chief.values())  # weights and optimizer slots
    for name in chief:
      bounds.assert_close(chief[name], other[name], bounds.MODEL_ULPS, msg=name,
                          scale_of=size)
      bounds.assert_close(chief[name], single[name], bounds.MODEL_ULPS, msg=name,
                          scale_of=size)

  def test_demo_mirrored_jit_from_the_command_line(self):
    result = _run_tool("--strategy=mirrored", "--jit_compile", "--steps=20",
                       "--log_every=10", env=_env())
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn("2 replica(s)", result.stderr)
    self.assertRegex(result.stderr, r"step 20/20\s+loss [\d.]+\s+\d+ examples/s")
    self.assertRegex(result.stdout, r"held-out accuracy: [\d.]+")

  def test_errors_are_clear_and_exit_nonzero(self):
    self.text_file = os.path.join(self.dir, "notes.txt")
    with open(self.text_file, "w") as f:
      f.write("not a model\n")
    env = _env()
    env.pop("TF_CONFIG", None)
    cases = [
        (["--strategy=tpu"], "No TPU found"),
        (["--strategy=tpu", f"--tpu=grpc://127.0.0.1:{portpicker.pick_unused_port()}"],
         "No TPU reachable"),
        (["--strategy=multi_worker"], "TF_CONFIG"),
        ([f"--model={self.model_path}"], "--model and --data go together"),
        (["--steps=0"], "--steps must be a positive integer"),
        ([f"--model={self.model_path}", f"--data={self.model_path}"],
         "`data` must be an .npz file"),
        (["--batch_size=100000"], "--batch_size=100000 is more than the"),
        ([f"--model_dir={self.model_path}/run", "--steps=1"], "`model_dir`="),
        ([f"--model={self.text_file}", f"--data={self.data_path}", "--steps=1"],
         "`model` is not a saved Keras model"),
    ]
    for flags, message in cases:
      start = time.time()
      result = _run_tool(*flags, env=env, timeout=120)
      self.assertNotEqual(result.returncode, 0, flags)
      self.assertIn(message, result.stderr, flags)
      self.assertNotIn("Traceback", result.stderr, flags)
      self.assertLess(time.time() - start, 100, flags)  # no hang, not a benchmark


class TrainerArgumentsTest(tf.test.TestCase):

  def test_bad_learning_rate_and_model_dir_are_named(self):
    strategy = tf.distribute.get_strategy()
    for rate in (0.0, -1.0, float("nan"), float("inf"), "0.1", True):
      with self.assertRaisesRegex(ValueError, "learning_rate="):
        training.Trainer(strategy, _build, _loss, learning_rate=rate)
    schedule = tf_keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    training.Trainer(strategy, _build, _loss, learning_rate=schedule)
    blocker = os.path.join(self.get_temp_dir(), "a_file")
    with open(blocker, "w") as f:
      f.write("x")
    with self.assertRaisesRegex(ValueError, "`model_dir`="):
      training.Trainer(strategy, _build, _loss, model_dir=os.path.join(blocker, "run"))

  def test_checkpoint_of_another_model_is_named(self):
    strategy = tf.distribute.get_strategy()
    model_dir = os.path.join(self.get_temp_dir(), "run")
    trainer = training.Trainer(strategy, _build, _loss, model_dir=model_dir,
                               checkpoint_every=1)
    trainer.train(_examples(count=32), steps=1, batch_size=8)

    def other():
      return tf_keras.Sequential([tf_keras.Input((7,)), tf_keras.layers.Dense(3)])

    with self.assertRaisesRegex(ValueError, "holds a checkpoint of another model"):
      training.Trainer(strategy, other, _loss, model_dir=model_dir)

  def test_step_counts_must_be_positive_integers(self):
    strategy = tf.distribute.get_strategy()
    for bad in (0, -3, 2.5, "10"):
      with self.assertRaisesRegex(ValueError, f"checkpoint_every={bad!r}"):
        training.Trainer(strategy, _build, _loss, checkpoint_every=bad)
    trainer = training.Trainer(strategy, _build, _loss)
    for bad in (0, 1.5, "3"):
      with self.assertRaisesRegex(ValueError, f"steps={bad!r}"):
        trainer.train(None, steps=bad, batch_size=1)


class StrategyTest(tf.test.TestCase):

  def test_unknown_names(self):
    with self.assertRaisesRegex(ValueError, "strategy='gpu'"):
      training.make_strategy("gpu")
    with self.assertRaisesRegex(ValueError, "mixed_precision='float16'"):
      training.set_policy("float16")

  def test_tf_config_is_validated(self):
    for raw in ("", "{not json", '{"cluster": {}}'):
      os.environ["TF_CONFIG"] = raw
      try:
        with self.assertRaisesRegex(ValueError, "TF_CONFIG"):
          training.make_strategy("multi_worker")
      finally:
        del os.environ["TF_CONFIG"]

  def test_tpu_unreachable(self):
    with self.assertRaisesRegex(training.TpuUnavailable, "No TPU found"):
      training.make_strategy("tpu")
    port = portpicker.pick_unused_port()
    with self.assertRaisesRegex(training.TpuUnavailable, "No TPU reachable"):
      training.make_strategy("tpu", tpu=f"grpc://127.0.0.1:{port}")


class TpuReadinessTest(tf.test.TestCase):
  """What a TPU compiles: the whole replica step under XLA, static shapes."""

  def _assert_device_only(self, hlo):
    # Host transfers and host callbacks would show as these instructions.
    for op in ("send", "recv", "infeed", "outfeed", "custom-call"):
      self.assertNotRegex(hlo, rf"= \S+ {op}\(", op)
    bf16_dots = re.findall(r"= bf16\[[^\]]*\]\S* dot\(", hlo)
    self.assertNotEmpty(bf16_dots)  # the matmuls run in bfloat16
    self.assertRegex(hlo, r"= \S+ sqrt\(")  # Adam's update is in the step too

  def _trainer_hlo(self, build_model, loss, x, y):
    """The HLO of the Trainer's own replica step, under mixed_bfloat16."""
    tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
      trainer = training.Trainer(tf.distribute.get_strategy(), build_model,
                                 loss, optimizer="adam", jit_compile=True)
      return trainer.replica_step_hlo(x, y)
    finally:
      tf_keras.mixed_precision.set_global_policy("float32")

  def test_demo_replica_step_compiles_in_bfloat16(self):
    data = _examples(count=8, length=16)
    hlo = self._trainer_hlo(lambda: model_lib.build_classifier(_VOCAB, dim=16),
                            _loss, tf.constant(data.x), tf.constant(data.y))
    self._assert_device_only(hlo)

  def test_flash_attention_step_compiles_in_bfloat16(self):

    def build_model():
      inputs = tf_keras.Input((64, 32), batch_size=2)
      outputs = tf_mha.MultiHeadAttention(4, 8, flash_attention=True)(
          inputs, inputs, use_causal_mask=True)
      outputs = tf_keras.layers.GlobalAveragePooling1D(dtype="float32")(outputs)
      return tf_keras.Model(inputs, outputs)

    hlo = self._trainer_hlo(build_model,
                            lambda y, p: tf.reduce_sum(tf.square(p - y), -1),
                            tf.random.normal([2, 64, 32]), tf.zeros([2, 32]))
    self._assert_device_only(hlo)
    self.assertIn("while(", hlo)  # the blockwise loops stay loops on device


class ConvergenceTest(tf.test.TestCase):

  def test_mixed_float16_converges_like_float32(self):
    accuracy = {}
    for policy in ("float32", "mixed_float16"):
      training.set_policy(policy)
      try:
        task = tasks.demo_task(seed=0)
        trainer = training.Trainer(tf.distribute.get_strategy(), task.build_model,
                                   task.loss, learning_rate=3e-3,
                                   jit_compile=True)
        if policy == "mixed_float16":
          self.assertIsInstance(trainer.optimizer,
                                tf_keras.mixed_precision.LossScaleOptimizer)
        trainer.train(task.train, steps=250, batch_size=64, log_every=1000)
        accuracy[policy] = trainer.accuracy(task.test)
      finally:
        training.set_policy("float32")
    print(f"demo accuracy after 250 steps: {accuracy}")
    self.assertGreater(accuracy["float32"], 0.9)
    self.assertGreater(accuracy["mixed_float16"], accuracy["float32"] - 0.03)


if __name__ == "__main__":
  tf.test.main()
