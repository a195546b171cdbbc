"""The documentation: every `>>>` docstring example and every code block of
README.md and docs/ run (or say why not), the site builds with `mkdocs build
--strict` and its reference covers every public name, every command's flags
and the R package's functions; the benchmark tool and its plots."""

import ast
import doctest
import os
import re
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import tensorflow as tf
import tf_keras
from absl.testing import parameterized

import tf_mha
from tf_mha.benchmarks import attention as benchmark_lib
from tf_mha.benchmarks import plots
from tf_mha.generation import greedy
from tf_mha.keras3 import layers as keras3
from tf_mha.layers import attention
from tf_mha.layers import grouped_query_attention
from tf_mha.layers import keras_patch
from tf_mha.layers import multi_head_attention
from tf_mha.ops import core
from tf_mha.ops import equations
from tf_mha.ops import masks
from tf_mha.models import demo
from tf_mha.models import gemma3
from tf_mha.models import transformer
from tests import doc_pages

_REPO = doc_pages.REPO


def _run_block(marker):
  """Runs the Python block holding `marker`; returns its namespace."""
  namespace = {}
  exec(compile(doc_pages.block(marker), marker, "exec"), namespace)  # pylint: disable=exec-used
  return namespace


class DocsTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(
      ("masks", masks), ("equations", equations), ("ops", core),
      ("multi_head_attention", multi_head_attention), ("attention", attention),
      ("grouped_query_attention", grouped_query_attention),
      ("keras_patch", keras_patch), ("generation", greedy),
      ("keras3", keras3), ("transformer", transformer), ("gemma3", gemma3),
      ("demo", demo))
  def test_docstring_examples(self, module):
    result = doctest.testmod(module, extraglobs={"tf": tf, "tf_mha": tf_mha, "tf_keras": tf_keras},
                             optionflags=doctest.ELLIPSIS)
    self.assertGreater(result.attempted, 0)
    self.assertEqual(result.failed, 0)

  def test_readme_example(self):
    namespace = _run_block("tf_mha.MultiHeadAttention(num_heads=2, key_dim=4)")
    self.assertEqual(namespace["out"].shape, (3, 5, 8))
    self.assertEqual(namespace["scores"].shape, (3, 2, 5, 5))

  def test_packing_example(self):
    namespace = _run_block("tf_mha.data.pack(dataset")
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
         "--memory_sliding_window=8", f"--plots={out_dir}/plots"],
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
    for name in (plots.TIMING, plots.MEMORY):  # the parts that ran
      with open(os.path.join(out_dir, "plots", name), "rb") as f:
        self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n", name)
    self.assertFalse(os.path.exists(os.path.join(out_dir, "plots", plots.PACKING)))

  def test_plots_of_packing_and_generation(self):
    out_dir = self.get_temp_dir()
    written = plots.write(
        out_dir, packing_training={"tf_mha packed": (2967.0, 0.69, 2034),
                                   "tf_keras padded": (1372.0, 0.68, 928)},
        generation_runtimes={"TensorFlow": 354.1, "LiteRT-LM": 1543.0},
        memory_points=[(1024, "fwd", "tf_mha", 2**30), (2048, "fwd", "tf_mha", None)])
    self.assertEqual([os.path.basename(p) for p in written],
                     [plots.MEMORY, plots.PACKING, plots.GENERATION])
    for path in written:
      with open(path, "rb") as f:
        self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n", path)


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


def _generic_blocks():
  """The Python blocks no test of their own runs and no reason exempts."""
  return [b for b in doc_pages.blocks(("python",))
          if b.not_run_reason is None and not b.run_by]


class CodeBlocksTest(parameterized.TestCase):

  def test_every_block_is_run_or_says_why(self):
    for block in doc_pages.blocks():
      reason = block.not_run_reason
      if reason is not None:
        self.assertGreater(len(reason.split()), 4, f"{block}: give the reason")
      elif block.language != "python":  # Python blocks run below by default
        self.assertLen(block.run_by, 1, f"{block}: mark it run or not run")

  def test_each_marker_names_one_block_and_a_test_that_runs_it(self):
    if "TEST_SRCDIR" in os.environ:
      self.skipTest("Under Bazel the runfiles hold only declared files, not "
                    "the other test files; .ci/run checks them in its pytest stage.")
    for marker, runner in doc_pages.RUN_BY.items():
      self.assertTrue(doc_pages.block(marker))  # exactly one block holds it
      path, _, test = runner.partition("::")
      with open(os.path.join(_REPO, path)) as f:
        source = f.read()
      if test:
        self.assertIn(f"def {test}(", source, runner)
      # The runner finds the block by this marker (or reads the Quick start).
      self.assertTrue(marker.strip() in source or "Quick start" in source, runner)

  @parameterized.named_parameters(
      (re.sub(r"\W", "_", f"{b.page}_{b.line}"), b) for b in _generic_blocks())
  def test_python_block_runs(self, block):
    # In a process of its own (a block may patch tf_keras), in a scratch
    # folder; a `print(...)  # text` line must print that text.
    with tempfile.TemporaryDirectory() as scratch:
      proc = subprocess.run(
          [sys.executable, "-c", block.text], capture_output=True, text=True,
          cwd=scratch, timeout=600,
          env=dict(os.environ, PYTHONPATH=_REPO, TF_CPP_MIN_LOG_LEVEL="3"))
    self.assertEqual(proc.returncode, 0, f"{block}: {proc.stderr[-3000:]}")
    for expected in re.findall(r"^\s*print\(.*\)\s*#\s*(.+)$", block.text, re.M):
      self.assertIn(expected.strip(), proc.stdout, str(block))


def _public_names():
  """Every public name the reference must show, as its anchor."""
  import tf_mha.data  # pylint: disable=g-import-not-at-top
  import tf_mha.keras3  # pylint: disable=g-import-not-at-top
  names = [f"tf_mha.{n}" for n in tf_mha.__all__]
  for module in (tf_mha.keras3, tf_mha.generation, tf_mha.data):
    names += [f"{module.__name__}.{n}" for n in module.__all__]
  export_dir = os.path.join(_REPO, "tf_mha", "export")
  for file in sorted(os.listdir(export_dir)):
    if not file.endswith(".py") or file.startswith("_"):
      continue
    with open(os.path.join(export_dir, file)) as f:
      tree = ast.parse(f.read())
    defined = [n.name for n in tree.body
               if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    defined += [t.id for n in tree.body if isinstance(n, ast.Assign)
                for t in n.targets if isinstance(t, ast.Name) and t.id.isupper()]
    names += [f"tf_mha.export.{file[:-3]}.{n}" for n in defined if not n.startswith("_")]
  return names


class SiteTest(tf.test.TestCase):
  """`mkdocs build --strict`: broken links, missing pages or references,
  docstrings griffe cannot read all fail it."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    if "TEST_SRCDIR" in os.environ:
      raise unittest.SkipTest(
          "Under Bazel the runfiles hold only declared files, not every module "
          "the reference documents; .ci/run builds the site in its pytest stage.")
    cls.site = tempfile.mkdtemp()
    cls.build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", cls.site],
        capture_output=True, text=True, cwd=_REPO, timeout=600,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))

  def _page(self, path):
    self.assertEqual(self.build.returncode, 0, self.build.stderr[-5000:])
    with open(os.path.join(self.site, path, "index.html")) as f:
      return f.read()

  def test_builds_strict(self):
    self.assertEqual(self.build.returncode, 0, self.build.stderr[-5000:])
    self.assertNotIn("WARNING", self.build.stderr)

  def test_reference_shows_every_public_name(self):
    anchors = set()
    for page in ("tf_mha", "keras3", "generation", "data", "export"):
      anchors |= set(re.findall(r'id="([\w.]+)"', self._page(f"reference/{page}")))
    names = _public_names()
    self.assertGreater(len(names), 60)
    self.assertEqual([n for n in names if n not in anchors], [])

  def test_docstring_examples_render_as_code(self):
    # A `>>>` example outside an `Examples:` section renders as nested quotes.
    for page in ("tf_mha", "keras3", "generation", "models"):
      html = self._page(f"reference/{page}")
      self.assertIn('<span class="gp">&gt;&gt;&gt; </span>', html, page)
      self.assertFalse("<blockquote>\n<blockquote>" in html, f"{page}: nested quotes")

  def test_each_command_page_lists_its_flags(self):
    commands = {"tf_mha_export": "export_saved_model",
                "tf_mha_convert_tflite": "convert_tflite",
                "tf_mha_convert_litertlm": "convert_litertlm",
                "tf_mha_train": "train", "tf_mha_benchmark": "benchmark",
                "tf_mha_generate": "generate"}
    with open(os.path.join(_REPO, "setup.py")) as f:
      scripts = re.findall(r'"(tf_mha_\w+)=tf_mha\.cli\.(\w+):run"', f.read())
    self.assertEqual(dict(scripts), commands)  # every installed command has a page
    for command, module in commands.items():
      with open(os.path.join(_REPO, "tf_mha", "cli", module + ".py")) as f:
        source = f.read()
      flags = re.findall(r'flags\.DEFINE_\w+\(\s*"(\w+)"', source)
      internal = re.findall(r'DEFINE_\w+\(\s*"(\w+)",[^)]*?"Internal', source, re.S)
      page = self._page(f"commands/{command}")
      self.assertGreater(len(flags), 5)
      for flag in set(flags) - set(internal):
        self.assertIn(f"<code>--{flag}</code>", page, command)

  def test_r_page_documents_every_exported_function(self):
    with open(os.path.join(_REPO, "r", "tfmha", "NAMESPACE")) as f:
      exported = re.findall(r"^export\((\w+)\)", f.read(), re.M)
    page = self._page("reference/r")
    self.assertLen(exported, 4)
    for name in exported:
      self.assertIn(f"<code>{name}()</code>", page)
    self.assertIn("<code>flash_attention</code>", page)  # an argument's row

  def test_benchmark_page_shows_its_plots(self):
    page = self._page("benchmarks")
    images = re.findall(r'<img[^>]+src="([^"]+\.png)"', page)
    self.assertGreaterEqual(len(images), 4)
    for image in images:
      self.assertTrue(os.path.isfile(os.path.join(self.site, "benchmarks", image)), image)


if __name__ == "__main__":
  tf.test.main()
