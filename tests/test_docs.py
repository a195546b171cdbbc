"""The README's usage example and every `>>>` docstring example run."""

import doctest
import os
import re
import subprocess
import sys

import numpy as np
import tensorflow as tf
import tf_keras
from absl.testing import parameterized

import tf_mha
from tf_mha.benchmarks import attention as benchmark_lib
from tf_mha.generation import greedy
from tf_mha.keras3 import layers as keras3
from tf_mha.layers import attention
from tf_mha.layers import grouped_query_attention
from tf_mha.layers import keras_patch
from tf_mha.layers import multi_head_attention
from tf_mha.ops import core
from tf_mha.ops import equations
from tf_mha.ops import masks
from tf_mha.demo import decoder

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_readme_block(marker):
  """Runs README.md's first Python block containing `marker`; returns its
  namespace."""
  with open(os.path.join(_REPO, "README.md")) as f:
    blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
  block = next(b for b in blocks if marker in b)
  namespace = {}
  exec(compile(block, "README.md", "exec"), namespace)  # pylint: disable=exec-used
  return namespace


class DocsTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(
      ("masks", masks), ("equations", equations), ("ops", core),
      ("multi_head_attention", multi_head_attention), ("attention", attention),
      ("grouped_query_attention", grouped_query_attention),
      ("keras_patch", keras_patch), ("generation", greedy),
      ("keras3", keras3), ("decoder", decoder))
  def test_docstring_examples(self, module):
    result = doctest.testmod(module, extraglobs={"tf": tf, "tf_mha": tf_mha, "tf_keras": tf_keras},
                             optionflags=doctest.ELLIPSIS)
    self.assertGreater(result.attempted, 0)
    self.assertEqual(result.failed, 0)

  def test_readme_usage_example(self):
    namespace = _run_readme_block("tf_mha.MultiHeadAttention")
    self.assertEqual(namespace["out"].shape, (3, 5, 8))
    self.assertEqual(namespace["scores"].shape, (3, 2, 5, 5))

  def test_readme_packing_example(self):
    namespace = _run_readme_block("tf_mha.data.pack")
    row = namespace["row"]
    self.assertEqual(namespace["out"].shape, (2, 512, 64))
    # Six examples, 950 tokens: two rows, nothing lost.
    self.assertEqual(int(tf.reduce_sum(tf.reduce_max(row["segment_ids"], 1))), 6)
    self.assertEqual(int(tf.math.count_nonzero(row["segment_ids"])), 950)

  def test_benchmark_tool_smoke(self):
    out_dir = self.get_temp_dir()
    proc = subprocess.run(
        [sys.executable, "-m", "tools.benchmark", "--seq_lens=16", "--passes=fwd,fwd+bwd",
         "--jit=false", "--repeats=1", "--batch=1", f"--results_dir={out_dir}",
         "--impls=tf_mha,tf_keras,keras3,matmuls_only",
         "--memory_seq_lens=32", "--memory_impls=tf_mha", "--memory_passes=fwd+bwd",
         "--memory_sliding_window=8"],
        capture_output=True, text=True, cwd=_REPO, timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
    with open(os.path.join(out_dir, "benchmark.md")) as f:
      table = f.read()
    for mask in ("causal", "padding"):  # beside each other, every peer timed
      self.assertRegex(table, rf"\| 16 \| {mask} \| fwd \| no \| [\d.]+ \| [\d.]+ \| [\d.]+ \|")
    # The matmul ceiling: timed for the causal forward pass only.
    self.assertRegex(table, r"\n\| 16 \| causal \| fwd \| .* \| \d+% \| \d+% \|\n")
    self.assertRegex(table, r"\n\| 16 \| causal \| fwd\+bwd \| .* \| \d+% \| n/a \|\n")
    self.assertRegex(table, r"\n\| 16 \| padding \| fwd \| .* \| \d+% \| n/a \|\n")
    self.assertRegex(table, r"\| 32 sliding_window=8 \| fwd\+bwd \| tf_mha \| "
                     r"[\d.]+ s, [\d.]+ GiB peak RSS \|")
    self.assertTrue(os.path.isfile(os.path.join(out_dir, "benchmark.png")))


  def test_matmuls_only_does_the_chunked_products(self):
    # The benchmark's ceiling must do all of tf_mha's matmul work: per causal
    # chunk (two of 256 rows at T=512 without XLA), QK^T and PV over the
    # keys at or before the chunk's last row.
    layer = benchmark_lib.MatmulsOnly(num_heads=2, key_dim=3)
    x = tf.random.stateless_normal([1, 512, 5], seed=[1, 2])
    got = layer(x, x, use_causal_mask=True)
    wq, wk, wv, wo = (np.float64(layer._kernels[n].numpy())  # pylint: disable=protected-access
                      for n in ("query", "key", "value", "output"))
    x = np.float64(x.numpy())
    q, k, v = (np.einsum("btd,dnh->bnth", x, w) for w in (wq, wk, wv))
    out = np.concatenate(
        [q[:, :, t0:t0 + 256] @ np.swapaxes(k[:, :, :t0 + 256], -1, -2)
         @ v[:, :, :t0 + 256] for t0 in (0, 256)], axis=2)
    want = np.einsum("bnth,nhd->btd", out, wo)
    self.assertAllClose(got, want, rtol=1e-4, atol=1e-3)
    full = np.einsum("bnth,nhd->btd", q @ np.swapaxes(k, -1, -2) @ v, wo)
    self.assertAllClose(layer(x, x), full, rtol=1e-4, atol=1e-3)

  def test_benchmark_tool_names_a_bad_flag(self):
    for flag, value in (("seq_lens", "abc"), ("seq_lens", "0"), ("impls", "torch"),
                        ("jit", "maybe"), ("masks", "diagonal"),
                        ("results_dir", "/proc/results"),
                        ("single_point", "tf_mha")):
      proc = subprocess.run(
          [sys.executable, "-m", "tools.benchmark",
           f"--results_dir={self.get_temp_dir()}", f"--{flag}={value}"],
          capture_output=True, text=True, cwd=_REPO, timeout=300,
          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
      self.assertEqual(proc.returncode, 1, proc.stderr[-2000:])
      self.assertIn(f"--{flag}", proc.stderr)
      self.assertIn(value, proc.stderr)
      self.assertNotIn("Traceback", proc.stderr)


if __name__ == "__main__":
  tf.test.main()
