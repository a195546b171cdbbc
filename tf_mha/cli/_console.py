"""What every command does around its absl `main`: help, quiet logs, exit.

By default a command prints its own progress lines and report, and nothing of
TensorFlow's chatter: `tf_mha._startup` hides what TensorFlow writes while it
loads, and while `main` runs the native and Python output (CUDA probes, the
converter's dumps, LiteRT's notes, Python warnings, TensorFlow's INFO logs)
goes to a temporary file, shown only if the command fails with a traceback.
tf_mha's own INFO lines and `print` still reach the terminal. `--verbosity=N`,
or `TF_CPP_MIN_LOG_LEVEL` set by the user, lets every log through.
"""

import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging

from tf_mha import _startup

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The terminal's standard error while a quiet `main` runs (fd 2 is hidden).
_terminal_stderr = None


def fail(message):
  """Shows `message` on standard error, also in a quiet command, and
  returns the exit status 1."""
  print(message, file=_terminal_stderr or sys.stderr)
  return 1


def run(main, module_name):
  """Runs `main` as the command defined by the module `module_name`.

  absl's `--help` describes the main module, which is a console script's
  wrapper or a `tools/` entry point, not the module defining the flags: this
  makes `module_name`'s docstring and flags the ones `--help` shows.

  Under `bazel run` the process starts in its runfiles; relative paths in
  flags (--output_dir=saved_models) mean the directory bazel was run from.
  """
  module = sys.modules[module_name]
  main_module = sys.modules["__main__"]
  if main_module is not module:
    main_module.__doc__ = module.__doc__
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  if os.environ.get("BUILD_WORKING_DIRECTORY"):
    os.chdir(os.environ["BUILD_WORKING_DIRECTORY"])

  def logged_main(argv):
    logging.set_verbosity(max(logging.INFO, flags.FLAGS.verbosity))
    if not _startup.quiet:
      return main(argv)
    with _startup.hidden(fds=(1, 2), keep=(app.UsageError,)) as (out, err):
      progress = std_logging.StreamHandler(err)
      progress.setFormatter(std_logging.Formatter("%(message)s"))
      progress.addFilter(lambda r: r.pathname.startswith(_PACKAGE_DIR))
      root, stdout = std_logging.getLogger(), sys.stdout
      root.addHandler(progress)
      sys.stdout = out  # `print` reaches the terminal
      global _terminal_stderr
      _terminal_stderr = err
      try:
        return main(argv)
      finally:
        sys.stdout = stdout
        _terminal_stderr = None
        root.removeHandler(progress)

  app.run(logged_main)


def check_positive(*flag_holders):
  """Raises a UsageError naming the first integer flag that is set and not
  positive (a flag left at None passes)."""
  for flag in flag_holders:
    if flag.value is not None and flag.value < 1:
      raise app.UsageError(
          f"--{flag.name} must be a positive integer, got {flag.value}")
