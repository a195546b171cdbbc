"""Train the demo model (or your own) under a tf.distribute strategy.

Installed as `tf_mha_train`; from a checkout, `python -m tools.train`.
TensorFlow's own logs are hidden unless --verbosity is given.

  python -m tools.train --strategy=mirrored --jit_compile --model_dir=/tmp/run
  python -m tools.train --mixed_precision=mixed_bfloat16 --steps=500
  python -m tools.train --model=my.keras --data=my.npz --model_dir=/tmp/mine

Restarted with the same --model_dir, it resumes from the latest checkpoint.
Two workers on one host (run each in its own shell, index 0 and 1):

  TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:20001", "127.0.0.1:20002"]},
              "task": {"type": "worker", "index": 0}}' \\
    python -m tools.train --strategy=multi_worker --model_dir=/tmp/mw
"""

from absl import app
from absl import flags
from absl import logging

from tf_mha.cli import _console

_STRATEGY = flags.DEFINE_enum(
    "strategy", "default", ["default", "mirrored", "multi_worker", "tpu"],
    "default: one device. mirrored: all GPUs, or two logical CPU devices. "
    "multi_worker: the cluster in TF_CONFIG. tpu: TPUStrategy via --tpu.")
_TPU = flags.DEFINE_string(
    "tpu", "", "TPU name or grpc://host:port for --strategy=tpu.")
_MIXED_PRECISION = flags.DEFINE_enum(
    "mixed_precision", "float32", ["float32", "mixed_float16", "mixed_bfloat16"],
    "Keras dtype policy; mixed_float16 adds dynamic loss scaling.")
_JIT_COMPILE = flags.DEFINE_bool(
    "jit_compile", False, "Compile each replica's forward and backward pass with XLA.")
_STEPS = flags.DEFINE_integer(
    "steps", None, "Total training steps (counting steps done before a resume).")
_EPOCHS = flags.DEFINE_integer(
    "epochs", 3, "Passes over the data, used when --steps is not given.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 64, "Global batch size, split evenly across replicas.")
_OPTIMIZER = flags.DEFINE_enum(
    "optimizer", "adam", ["adam", "sgd"], "adam, or sgd with momentum 0.9.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 3e-3, "Learning rate.")
_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "Checkpoint directory; an existing one is resumed.")
_CHECKPOINT_EVERY = flags.DEFINE_integer(
    "checkpoint_every", 100, "Steps between checkpoints.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 50, "Steps between log lines.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for weights and the batch order.")
_MODEL = flags.DEFINE_string(
    "model", None, "A saved Keras model (.keras, .h5 or SavedModel) to train "
    "instead of the demo; needs --data.")
_DATA = flags.DEFINE_string(
    "data", None, ".npz file with arrays x (inputs) and y (integer labels) "
    "for --model.")
_LOSS = flags.DEFINE_string(
    "loss", "sparse_categorical_crossentropy", "Keras loss name for --model.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if bool(_MODEL.value) != bool(_DATA.value):
    raise app.UsageError("--model and --data go together; received "
                         f"--model={_MODEL.value!r} --data={_DATA.value!r}")
  _console.check_positive(_STEPS, _EPOCHS, _BATCH_SIZE, _CHECKPOINT_EVERY, _LOG_EVERY)
  from tf_mha import training
  try:
    strategy = training.make_strategy(_STRATEGY.value, tpu=_TPU.value)
  except (training.TpuUnavailable, ValueError) as e:
    return _console.fail(f"Error: {e}")
  training.set_policy(_MIXED_PRECISION.value)
  logging.info("Strategy %s with %d replica(s), policy %s",
               type(strategy).__name__, strategy.num_replicas_in_sync,
               _MIXED_PRECISION.value)
  from tf_mha.demo import tasks
  try:
    task = tasks.load_task(_MODEL.value, _DATA.value, _LOSS.value, _SEED.value)
  except (OSError, ValueError) as e:
    return _console.fail(f"Error: {e}")
  examples = len(task.train.y)
  if _BATCH_SIZE.value > examples:
    raise app.UsageError(f"--batch_size={_BATCH_SIZE.value} is more than the "
                         f"{examples} training examples")
  steps = _STEPS.value or _EPOCHS.value * (examples // _BATCH_SIZE.value)
  try:
    trainer = training.Trainer(
        strategy, task.build_model, task.loss, learning_rate=_LEARNING_RATE.value,
        optimizer=_OPTIMIZER.value, jit_compile=_JIT_COMPILE.value,
        model_dir=_MODEL_DIR.value,
        checkpoint_every=_CHECKPOINT_EVERY.value)
  except ValueError as e:  # --learning_rate, --model_dir
    raise app.UsageError(str(e)) from e
  result = trainer.train(task.train, steps=steps, batch_size=_BATCH_SIZE.value,
                         seed=_SEED.value, log_every=_LOG_EVERY.value)
  print(f"trained steps {result.first_step} -> {result.steps}, loss "
        f"{result.loss:.4f}, {result.examples_per_second:.0f} examples/s")
  if task.test is not None:
    print(f"held-out accuracy: {trainer.accuracy(task.test):.4f}")
  if result.checkpoint:
    print(f"checkpoint: {result.checkpoint}")
  return 0


def run():
  """Console-script entry point."""
  _console.run(main, __name__)


if __name__ == "__main__":
  run()
