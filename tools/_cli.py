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
