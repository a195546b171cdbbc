"""Prints one of README.md's two Quick start commands: `main` (the first bash
block under "## Quick start") or `tests` (the second). With --steps, its
`&&`-separated steps, one a line, for .ci/run to run and time in order."""

import os
import re
import sys


def quick_start_commands(readme):
  section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
  return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def main(argv):
  which, steps = argv[1], "--steps" in argv[2:]
  with open(os.path.join(os.path.dirname(__file__), "..", "README.md")) as f:
    command = quick_start_commands(f.read())[{"main": 0, "tests": 1}[which]]
  print("\n".join(part.strip() for part in command.split(" && ")) if steps
        else command)


if __name__ == "__main__":
  main(sys.argv)
