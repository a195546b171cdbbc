"""The R package (r/tfmha) installed as an R user would, and its testthat
suite run through reticulate against this Python (issue 27). Skipped where
R is not installed; .ci/run installs it, so CI always runs it."""

import os
import shutil
import subprocess
import sys
import tempfile

import tensorflow as tf

from tests import doc_pages

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PACKAGE = os.path.join(_REPO, "r", "tfmha")


class RPackageTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    if "TEST_SRCDIR" in os.environ:
      self.skipTest("Under Bazel the runfiles hold no R package; .ci/run "
                    "runs this test with pytest.")
    if not (shutil.which("Rscript") and shutil.which("R")):
      self.skipTest("R is not installed (apt-get install r-base-core "
                    "r-cran-reticulate r-cran-testthat)")
    self.library = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.library, ignore_errors=True)
    self.env = dict(os.environ, RETICULATE_PYTHON=sys.executable,
                    R_LIBS=self.library, TF_CPP_MIN_LOG_LEVEL="3")
    install = subprocess.run(["R", "CMD", "INSTALL", "-l", self.library, _PACKAGE],
                             capture_output=True, text=True, env=self.env,
                             timeout=600)
    self.assertEqual(install.returncode, 0, install.stderr[-3000:])

  def test_testthat_suite_passes(self):
    script = ("res <- testthat::test_dir('{}', package = 'tfmha', "
              "load_package = 'installed', reporter = 'summary', "
              "stop_on_failure = TRUE)\n"
              "df <- as.data.frame(res)\n"
              "cat(sprintf('R tests: %d expectations, %d failed, %d errors\\n', "
              "sum(df$nb), sum(df$failed), sum(df$error)))").format(
                  os.path.join(_PACKAGE, "tests", "testthat"))
    run = subprocess.run(["Rscript", "-e", script], capture_output=True,
                         text=True, env=self.env, timeout=900)
    self.assertEqual(run.returncode, 0, run.stdout[-3000:] + run.stderr[-3000:])
    self.assertRegex(run.stdout, r"R tests: \d+ expectations, 0 failed, 0 errors")

  def test_readme_example_runs_from_r(self):
    example = doc_pages.block("library(tfmha)")
    run = subprocess.run(["Rscript", "-e", example], capture_output=True,
                         text=True, env=self.env, timeout=600)
    self.assertEqual(run.returncode, 0, run.stdout[-3000:] + run.stderr[-3000:])
    self.assertEqual(run.stdout.split("\n")[-4:],
                     ["[1]  2 10 16", "[1]  2  4 10 10", "[1]  2 10 16", ""])


if __name__ == "__main__":
  tf.test.main()
