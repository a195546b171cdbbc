"""The documentation's pages (README.md and docs/**/*.md) and their code
blocks, for the tests that run them.

Every `python`, `bash` and `r` block is run by a test or says why not: its
first line is `NOT_RUN` followed by the reason. A block a test of its own
runs (with files or assertions of its own) is found by a marker it holds,
listed in `RUN_BY` with that test; tests/test_docs.py runs every other
Python block.
"""

import dataclasses
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_RUN = "# Not run by the doc tests: "
LANGUAGES = ("python", "bash", "r")
# A marker (a string only that block holds) -> the test that runs the block.
RUN_BY = {
    "tf_mha.MultiHeadAttention(num_heads=2, key_dim=4)":
        "tests/test_docs.py::test_readme_example",
    "tf_mha.data.pack(dataset": "tests/test_docs.py::test_packing_example",
    "tf_mha.keras3.MultiHeadAttention(num_heads=4":
        "tests/test_keras3.py::test_readme_keras3_example_runs",
    'get_signature_runner("decode")':
        "tests/test_generator.py::test_readme_phone_side_loop",
    "library(tfmha)": "tests/test_r_package.py::test_readme_example_runs_from_r",
    # The Quick start's two commands: .ci/run runs the test command, read by
    # .ci/readme_command.py; the newcomer check runs both.
    "python3 -m tools.export_saved_model\n": ".ci/readme_command.py",
    'python3 -m pip install -e ".[test]"': ".ci/readme_command.py",
}


@dataclasses.dataclass(frozen=True)
class Block:
  page: str  # relative to the repository
  line: int  # of the opening fence
  language: str
  text: str

  def __str__(self):
    return f"{self.page}:{self.line} ({self.language})"

  @property
  def not_run_reason(self):
    """The reason given (the first line after `NOT_RUN`, and the comment
    lines that follow it), or None."""
    lines = self.text.split("\n")
    if not lines[0].startswith(NOT_RUN):
      return None
    reason = [lines[0][len(NOT_RUN):]]
    for line in lines[1:]:
      if not line.startswith("# "):
        break
      reason.append(line[2:])
    return " ".join(reason).strip()

  @property
  def run_by(self):
    """The `RUN_BY` markers this block holds."""
    return [marker for marker in RUN_BY if marker in self.text]


def pages():
  """README.md and every page under docs/, relative to the repository."""
  found = ["README.md"]
  for directory, _, files in os.walk(os.path.join(REPO, "docs")):
    found += [os.path.relpath(os.path.join(directory, f), REPO)
              for f in files if f.endswith(".md")]
  return sorted(found)


def blocks(languages=LANGUAGES):
  """Every fenced code block in `languages` on every page."""
  out = []
  for page in pages():
    with open(os.path.join(REPO, page)) as f:
      source = f.read()
    for found in re.finditer(r"^```(\w*)\n(.*?)^```$", source, re.M | re.S):
      if found.group(1) in languages:
        out.append(Block(page, source.count("\n", 0, found.start()) + 1,
                         found.group(1), found.group(2)))
  return out


def block(marker):
  """The one block that holds `marker` (a key of `RUN_BY`)."""
  if marker not in RUN_BY:
    raise ValueError(f"{marker!r} is not in doc_pages.RUN_BY")
  matches = [b for b in blocks() if marker in b.text]
  if len(matches) != 1:
    raise ValueError(f"{len(matches)} blocks hold {marker!r}: "
                     f"{[str(b) for b in matches]}")
  return matches[0].text
