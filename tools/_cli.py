"""What every tool's console-script entry point does."""

import os

from absl import app
from absl import logging


def run(main):
  """Runs an absl `main` with INFO logging (progress lines on stderr).

  Under `bazel run` the process starts in its runfiles; relative paths in
  flags (--output_dir=saved_models) mean the directory bazel was run from.
  """
  logging.set_verbosity(logging.INFO)
  if os.environ.get("BUILD_WORKING_DIRECTORY"):
    os.chdir(os.environ["BUILD_WORKING_DIRECTORY"])
  app.run(main)


def check_positive(*flags):
  """Raises a UsageError naming the first integer flag that is set and not
  positive (a flag left at None passes)."""
  for flag in flags:
    if flag.value is not None and flag.value < 1:
      raise app.UsageError(
          f"--{flag.name} must be a positive integer, got {flag.value}")
