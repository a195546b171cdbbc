"""The BUILD drift check: the repository passes it, and each kind of drift
in a small synthetic tree is caught."""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

from absl.testing import absltest

from tools import build_files

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_GOOD = {
    "WORKSPACE": "",
    "tf_mha/__init__.py": "from tf_mha import ops\n",
    "tf_mha/ops.py": "import math\n",
    "tf_mha/BUILD": """
        py_library(name = "tf_mha", srcs = ["__init__.py"], deps = [":ops"])
        py_library(name = "ops", srcs = ["ops.py"])
    """,
    # (Split so that this file itself does not read as running tools.run.)
    "tests/test_ops.py": ('from tf_mha import ops\n'
                          'CMD = ["python", "-m", "tools.' 'run"]\n'),
    "tests/BUILD": """
        py_test(name = "test_ops", srcs = ["test_ops.py"],
                data = ["//tools:run"], deps = ["//tf_mha", "//tf_mha:ops"])
    """,
    "tools/run.py": 'import tf_mha\nif __name__ == "__main__":\n  pass\n',
    "tools/BUILD": 'py_binary(name = "run", srcs = ["run.py"], deps = ["//tf_mha"])\n',
}


class BuildFilesTest(absltest.TestCase):

  def _tree(self, **changes):
    root = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, root)
    for path, text in {**_GOOD, **changes}.items():
      if text is None:
        continue
      os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
      with open(os.path.join(root, path), "w") as f:
        f.write(textwrap.dedent(text))
    return root

  def test_repository_matches_its_build_files(self):
    if "TEST_SRCDIR" in os.environ:
      self.skipTest("Under Bazel the runfiles hold only declared files; "
                    ".ci/run checks the checkout with tools/check_build.py.")
    self.assertEqual(build_files.problems(_REPO), [])

  def test_command_exit_codes(self):
    good, bad = self._tree(), self._tree(**{"tf_mha/extra.py": "x = 1\n"})
    run = lambda root: subprocess.run(
        [sys.executable, "-m", "tools.check_build", f"--root={root}"],
        cwd=_REPO, capture_output=True, text=True, timeout=120)
    ok, drift = run(good), run(bad)
    self.assertEqual(ok.returncode, 0, ok.stderr)
    self.assertIn("BUILD files match", ok.stdout)
    self.assertEqual(drift.returncode, 1)
    self.assertIn("tf_mha/extra.py has no target", drift.stderr)
    missing = run(os.path.join(good, "tf_mha"))
    self.assertNotEqual(missing.returncode, 0)
    self.assertIn("has no WORKSPACE", missing.stderr)

  def test_consistent_tree_passes(self):
    self.assertEqual(build_files.problems(self._tree()), [])

  def test_module_without_target(self):
    root = self._tree(**{"tf_mha/extra.py": "x = 1\n"})
    self.assertIn("tf_mha/extra.py has no target in tf_mha/BUILD",
                  build_files.problems(root))

  def test_missing_and_stale_deps(self):
    root = self._tree(**{"tf_mha/BUILD": """
        py_library(name = "tf_mha", srcs = ["__init__.py"])
        py_library(name = "ops", srcs = ["ops.py"], deps = [":tf_mha"])
    """})
    found = build_files.problems(root)
    self.assertIn("//tf_mha:tf_mha imports //tf_mha:ops but does not depend on it", found)
    self.assertIn("//tf_mha:ops depends on //tf_mha:tf_mha but does not import it", found)

  def test_package_init_is_a_dependency_of_outside_importers(self):
    root = self._tree(**{"tests/BUILD": """
        py_test(name = "test_ops", srcs = ["test_ops.py"],
                data = ["//tools:run"], deps = ["//tf_mha:ops"])
    """})
    self.assertIn("//tests:test_ops imports //tf_mha:tf_mha but does not depend on it",
                  build_files.problems(root))

  def test_rule_kinds_data_and_labels(self):
    root = self._tree(**{
        "tests/BUILD": """
            py_library(name = "test_ops", srcs = ["test_ops.py"],
                       deps = ["//tf_mha", "//tf_mha:ops", "//tf_mha:gone"])
        """,
        "tools/BUILD": 'py_library(name = "run", srcs = ["run.py", "nope.py"], deps = ["//tf_mha"])\n',
    })
    found = build_files.problems(root)
    self.assertIn("tests/test_ops.py is a test but //tests:test_ops is a py_library", found)
    self.assertIn("tools/run.py is a tool but //tools:run is a py_library", found)
    self.assertIn("//tests:test_ops runs tools.run; add //tools:run to its data", found)
    self.assertIn("//tools:run: srcs lists nope.py, which does not exist", found)
    self.assertIn("//tests:test_ops refers to //tf_mha:gone, which is not defined", found)


if __name__ == "__main__":
  absltest.main()
