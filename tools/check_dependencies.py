"""Fails when the code imports a package that setup.py does not declare.

  python -m tools.check_dependencies                  # this checkout
  python -m tools.check_dependencies --setup=other.py # another setup.py

Each third-party import under tf_mha/, tools/ and tests/ must come from a
distribution in `install_requires` or the extra that the importing code
needs (tools/dependencies.py says which); the distributions are those of
the environment that runs the check (run it where the README's test
command installed the package).
"""

import os
import sys

from absl import app
from absl import flags

from tools import dependencies

_ROOT = flags.DEFINE_string(
    "root", os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "Repository root holding tf_mha/, tools/ and tests/.")
_SETUP = flags.DEFINE_string(
    "setup", None, "The setup.py whose declarations to check against "
    "(default: the root's).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  setup = _SETUP.value or os.path.join(_ROOT.value, "setup.py")
  if not os.path.isfile(setup):
    raise app.UsageError(f"--setup={setup!r} is not a file")
  found = dependencies.problems(_ROOT.value, setup)
  for problem in found:
    print(problem, file=sys.stderr)
  if found:
    print(f"Undeclared dependencies: {len(found)} import(s)", file=sys.stderr)
    return 1
  print("Every third-party import is declared in setup.py")
  return 0


if __name__ == "__main__":
  app.run(main)
