"""Training under tf.distribute: the library behind `tools/train.py`.

The loop is the one TPU users write: a dataset distributed by
`distribute_datasets_from_function` with static per-replica shapes, a
per-replica step whose forward and backward pass is one XLA computation
(`tf.function(jit_compile=True)`), gradients all-reduced and applied by the
optimizer, and a `tf.train.CheckpointManager` that makes a restarted run
continue where the last checkpoint left it. The batch each step sees depends
only on the seed and the step number, so a resumed run retraces the same path
as an uninterrupted one.
"""

import dataclasses
import math
import numbers
import os
import time

import numpy as np
import tensorflow as tf
import tf_keras
from absl import logging

from tf_mha.ops import checks
from tf_mha.training import strategies

OPTIMIZERS = {"adam": tf_keras.optimizers.Adam,
              "sgd": lambda rate: tf_keras.optimizers.SGD(rate, momentum=0.9)}


@dataclasses.dataclass
class Examples:
  """Inputs `x` (any array, first axis examples) and integer labels `y`."""
  x: np.ndarray
  y: np.ndarray


def batch_schedule(num_examples, batch_size, steps, seed):
  """`[steps, batch_size]` example indices: one fresh permutation per epoch.

  Step `i`'s batch depends only on `seed` and `i`, which is what makes a
  resumed run identical to an uninterrupted one.
  """
  if batch_size > num_examples:
    raise ValueError(f"`batch_size` must be at most the number of examples "
                     f"({num_examples}). Received: batch_size={batch_size}")
  per_epoch = num_examples // batch_size
  epochs = -(-steps // per_epoch)
  rows = [np.random.default_rng([seed, epoch]).permutation(num_examples)
          [:per_epoch * batch_size].reshape(per_epoch, batch_size)
          for epoch in range(epochs)]
  return np.concatenate(rows)[:steps]


def distribute(strategy, examples, schedule):
  """A distributed dataset yielding each replica's share of each global batch.

  Replica `r` of `R` gets columns `[r * B/R, (r+1) * B/R)` of every schedule
  row, whatever the number of workers, so the global batch is the same on one
  device, two, or two workers.
  """
  steps, global_batch = schedule.shape
  replicas = strategy.num_replicas_in_sync
  if global_batch % replicas:
    raise ValueError(f"`batch_size` must be divisible by the number of "
                     f"replicas ({replicas}). Received: batch_size={global_batch}")
  per_replica = global_batch // replicas

  def dataset_fn(context):
    local = replicas // context.num_input_pipelines
    first = context.input_pipeline_id * local * per_replica
    rows = schedule[:, first:first + local * per_replica]
    rows = rows.reshape(steps * local, per_replica)
    x, y = tf.constant(examples.x), tf.constant(examples.y)
    dataset = tf.data.Dataset.from_tensor_slices(rows)
    dataset = dataset.map(lambda r: (tf.gather(x, r), tf.gather(y, r)))
    return dataset.prefetch(tf.data.AUTOTUNE)

  options = tf.distribute.InputOptions(experimental_replication_mode=(
      tf.distribute.InputReplicationMode.PER_WORKER))
  return strategy.distribute_datasets_from_function(dataset_fn, options)


def _write_dir(model_dir, strategy):
  """Checkpoints go to `model_dir` from the chief, elsewhere from the others
  (every worker must take part in saving; only the chief's copy is read)."""
  if strategies.is_chief(strategy):
    return model_dir
  resolver = strategy.cluster_resolver
  return os.path.join(model_dir, f"{resolver.task_type}_{resolver.task_id}")


@dataclasses.dataclass
class Result:
  steps: int  # the step the run ended at
  first_step: int  # where it started (> 0 when resumed)
  loss: float  # mean loss of the last logged interval
  examples_per_second: float
  checkpoint: str


class Trainer:
  """Builds a model and optimizer under a strategy and trains them.

  Args:
    strategy: a `tf.distribute.Strategy`.
    build_model: () -> Keras model; called under `strategy.scope()`.
    loss: per-example loss `(y_true, y_pred) -> [B]`, e.g.
      `tf_keras.losses.sparse_categorical_crossentropy`.
    learning_rate: the optimizer's learning rate.
    optimizer: one of `OPTIMIZERS` (wrapped in a `LossScaleOptimizer` under
      mixed_float16).
    jit_compile: compile each replica's forward and backward pass with XLA.
    model_dir: checkpoint directory; training resumes from its latest one.
    checkpoint_every: steps between checkpoints (and one at the end).
  """

  def __init__(self, strategy, build_model, loss, *, learning_rate=1e-3,
               optimizer="adam", jit_compile=False, model_dir=None, checkpoint_every=100):
    checkpoint_every = checks.positive_int("checkpoint_every", checkpoint_every)
    if optimizer not in OPTIMIZERS:
      raise ValueError(f"`optimizer` must be one of {tuple(OPTIMIZERS)}. "
                       f"Received: optimizer={optimizer!r}")
    schedule = tf_keras.optimizers.schedules.LearningRateSchedule
    if not isinstance(learning_rate, schedule) and (
        isinstance(learning_rate, bool) or
        not isinstance(learning_rate, numbers.Real) or
        not 0.0 < learning_rate < math.inf):
      raise ValueError("`learning_rate` must be a positive finite number. "
                       f"Received: learning_rate={learning_rate!r}")
    if model_dir:
      try:  # Before the model is built: a bad directory fails at once.
        tf.io.gfile.makedirs(_write_dir(model_dir, strategy))
      except tf.errors.OpError as e:
        raise ValueError(f"`model_dir`={model_dir!r} cannot be created: "
                         f"{e.message}") from e
    self.strategy = strategy
    self._loss = loss
    self._checkpoint_every = checkpoint_every
    with strategy.scope():
      self.model = build_model()
      optimizer = OPTIMIZERS[optimizer](learning_rate)
      if tf_keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
      self.optimizer = optimizer
      self.optimizer.build(self.model.trainable_variables)
      self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    self._grads = tf.function(self._forward_backward, jit_compile=jit_compile)
    self._manager = None
    if model_dir:
      checkpoint = tf.train.Checkpoint(model=self.model,
                                       optimizer=self.optimizer, step=self.step)
      latest = tf.train.latest_checkpoint(model_dir)
      if latest:
        try:
          checkpoint.restore(latest).assert_existing_objects_matched()
        except (ValueError, AssertionError, tf.errors.OpError) as e:
          raise ValueError(
              f"`model_dir`={model_dir!r} holds a checkpoint of another model "
              f"({latest}), which does not fit this one: give a new "
              f"--model_dir, or remove that one to start afresh. "
              f"({type(e).__name__}: {str(e)[:300]})") from e
        logging.info("Resumed from %s at step %d", latest, int(self.step.numpy()))
      self._manager = tf.train.CheckpointManager(
          checkpoint, _write_dir(model_dir, strategy), max_to_keep=3)

  def _forward_backward(self, x, y, global_batch):
    """One replica's loss and gradients; the part compiled with XLA."""
    variables = self.model.trainable_variables
    with tf.GradientTape() as tape:
      predictions = tf.cast(self.model(x, training=True), tf.float32)
      loss = tf.nn.compute_average_loss(self._loss(y, predictions),
                                        global_batch_size=global_batch)
      scaled = loss
      if isinstance(self.optimizer, tf_keras.mixed_precision.LossScaleOptimizer):
        scaled = self.optimizer.get_scaled_loss(loss)
    grads = tape.gradient(scaled, variables)
    if scaled is not loss:
      grads = self.optimizer.get_unscaled_gradients(grads)
    return loss, grads

  def _replica_step(self, x, y, global_batch):
    loss, grads = self._grads(x, y, global_batch)
    self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
    return loss

  def train(self, examples, *, steps, batch_size, seed=0, log_every=50):
    """Trains until `self.step == steps`, returning a `Result`."""
    steps = checks.positive_int("steps", steps)
    start = int(self.step.numpy())
    schedule = batch_schedule(len(examples.y), batch_size, steps, seed)[start:]
    if not len(schedule):
      logging.info("Already trained to step %d", start)
      return Result(start, start, float("nan"), 0.0, self._latest())
    iterator = iter(distribute(self.strategy, examples, schedule))

    @tf.function
    def train_step(batch):
      loss = self.strategy.run(self._replica_step, batch + (batch_size,))
      self.step.assign_add(1)
      return self.strategy.reduce("SUM", loss, axis=None)

    losses, tick, logged = [], time.time(), start
    for step in range(start + 1, steps + 1):
      losses.append(train_step(next(iterator)))
      if step % log_every == 0 or step == steps:
        mean = float(np.mean([float(l) for l in losses]))
        rate = (step - logged) * batch_size / (time.time() - tick)
        logging.info("step %d/%d  loss %.4f  %.0f examples/s", step, steps, mean, rate)
        losses, tick, logged = [], time.time(), step
      if self._manager and (step % self._checkpoint_every == 0 or step == steps):
        path = self._manager.save(checkpoint_number=step)
        logging.info("checkpoint %s", path)
    return Result(steps, start, mean, rate, self._latest())

  def _latest(self):
    return self._manager.latest_checkpoint if self._manager else ""

  def replica_step_hlo(self, x, y):
    """The HLO of this trainer's whole replica step (forward, backward and
    the optimizer update) compiled with `jit_compile=True` for the static
    shapes of `x` and `y`, as a TPU compiles it. Raises if any op cannot be
    compiled by XLA."""
    step = tf.function(self._replica_step, jit_compile=True)
    return step.experimental_get_compiler_ir(x, y, int(x.shape[0]))(stage="hlo")

  def accuracy(self, examples, batch_size=256):
    """Classification accuracy of the model on `examples` (argmax of outputs)."""
    predictions = self.model.predict(examples.x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(predictions, -1) == examples.y))
