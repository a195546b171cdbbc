"""The README's usage example and every `>>>` docstring example run."""

import doctest
import os
import re
import subprocess
import sys

import tensorflow as tf
from absl.testing import parameterized

import tf_mha
from tf_mha import attention, equations, masks, multi_head_attention, ops

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DocsTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(
      ("masks", masks), ("equations", equations), ("ops", ops),
      ("multi_head_attention", multi_head_attention), ("attention", attention))
  def test_docstring_examples(self, module):
    result = doctest.testmod(module, extraglobs={"tf": tf, "tf_mha": tf_mha},
                             optionflags=doctest.ELLIPSIS)
    self.assertGreater(result.attempted, 0)
    self.assertEqual(result.failed, 0)

  def test_readme_usage_example(self):
    with open(os.path.join(_REPO, "README.md")) as f:
      blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    usage = next(b for b in blocks if "tf_mha.MultiHeadAttention" in b)
    namespace = {}
    exec(compile(usage, "README.md", "exec"), namespace)  # pylint: disable=exec-used
    self.assertEqual(namespace["out"].shape, (3, 5, 8))
    self.assertEqual(namespace["scores"].shape, (3, 2, 5, 5))

  def test_benchmark_tool_smoke(self):
    out_dir = self.get_temp_dir()
    proc = subprocess.run(
        [sys.executable, "-m", "tools.benchmark", "--seq_lens=16", "--passes=fwd",
         "--jit=false", "--repeats=1", "--batch=1", f"--results_dir={out_dir}",
         "--memory_seq_lens=32", "--memory_impls=tf_mha", "--memory_passes=fwd+bwd",
         "--memory_sliding_window=8"],
        capture_output=True, text=True, cwd=_REPO, timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
    with open(os.path.join(out_dir, "benchmark.md")) as f:
      table = f.read()
    self.assertRegex(table, r"\| 16 \| fwd \| no \| [\d.]+ \| [\d.]+ \| [\d.]+ \|")
    self.assertRegex(table, r"\| 32 sliding_window=8 \| fwd\+bwd \| tf_mha \| "
                     r"[\d.]+ s, [\d.]+ GiB peak RSS \|")
    self.assertTrue(os.path.isfile(os.path.join(out_dir, "benchmark.png")))


  def test_benchmark_tool_names_a_bad_flag(self):
    for flag, value in (("seq_lens", "abc"), ("seq_lens", "0"), ("impls", "torch"),
                        ("jit", "maybe")):
      proc = subprocess.run(
          [sys.executable, "-m", "tools.benchmark", f"--{flag}={value}",
           f"--results_dir={self.get_temp_dir()}"],
          capture_output=True, text=True, cwd=_REPO, timeout=300,
          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
      self.assertEqual(proc.returncode, 1, proc.stderr[-2000:])
      self.assertIn(f"--{flag}", proc.stderr)
      self.assertIn(value, proc.stderr)
      self.assertNotIn("Traceback", proc.stderr)


if __name__ == "__main__":
  tf.test.main()
