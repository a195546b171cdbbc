"""Fails when the Bazel BUILD files drift from the Python code.

  python -m tools.check_build            # the repository this file is in
  python -m tools.check_build --root=.   # another checkout
"""

import os
import sys

from absl import app
from absl import flags

from tools import build_files

_ROOT = flags.DEFINE_string(
    "root", os.environ.get("BUILD_WORKSPACE_DIRECTORY") or
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "Repository root holding WORKSPACE (under `bazel run`: the workspace).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not os.path.exists(os.path.join(_ROOT.value, "WORKSPACE")):
    raise app.UsageError(f"--root={_ROOT.value!r} has no WORKSPACE file")
  found = build_files.problems(_ROOT.value)
  for problem in found:
    print(problem, file=sys.stderr)
  if found:
    print(f"BUILD files out of date: {len(found)} problem(s)", file=sys.stderr)
    return 1
  print("BUILD files match the Python code")
  return 0


if __name__ == "__main__":
  app.run(main)
