"""What every tool's console-script entry point does."""

from absl import app
from absl import logging


def run(main):
  """Runs an absl `main` with INFO logging (progress lines on stderr)."""
  logging.set_verbosity(logging.INFO)
  app.run(main)
