"""The package's layout: data flows one way between its folders, the op
imports no Keras, the public import paths stay, and models saved before the
folders existed still load (issue 25)."""

import ast
import importlib
import os

import keras
import numpy as np
import tensorflow as tf
import tf_keras
from absl.testing import parameterized

import tf_mha
import tf_mha.keras3
# The README's import paths, imported by name too so Bazel's runfiles hold them.
from tf_mha import ops
from tf_mha import training
from tf_mha.cli import export_saved_model
from tf_mha.export import litert_generation
from tf_mha.export import serving

from tests import bounds

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PACKAGE = os.path.join(_REPO, "tf_mha")
_SAVED = os.path.join(_REPO, "tests", "testdata", "saved_before_layout")

# Each folder's level: a module may import its own folder and folders of a
# lower level, never one above (README, "Architecture"). `tf_mha` itself
# (the umbrella `__init__`) exports the layers and generation.
_LEVELS = {
    "ops": 0,
    "layers": 1,
    "keras3": 2,
    "generation": 2,
    "data": 2,
    "tf_mha": 2,  # `import tf_mha`, `from tf_mha import generation`
    "models": 3,  # KerasHub's decoders on the layers; export serves them
    "export": 3,
    "training": 3,
    "demo": 4,
    "benchmarks": 5,
    "cli": 6,
}
_KERAS_PACKAGES = ("keras", "tf_keras", "keras_hub")


def _modules():
  """`(path, folder, imported modules)` of every module under tf_mha/."""
  for dirpath, _, filenames in os.walk(_PACKAGE):
    for name in sorted(filenames):
      if not name.endswith(".py"):
        continue
      path = os.path.join(dirpath, name)
      folder = os.path.relpath(dirpath, _PACKAGE).split(os.sep)[0]
      with open(path) as f:
        tree = ast.parse(f.read(), path)
      imported = []
      for node in ast.walk(tree):
        if isinstance(node, ast.Import):
          imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
          imported += [f"{node.module}.{alias.name}" for alias in node.names]
      yield path, folder, imported


def _folder_of(module):
  """The tf_mha folder an imported name belongs to, or None (not tf_mha)."""
  parts = module.split(".")
  if parts[0] != "tf_mha":
    return None
  if len(parts) == 1 or parts[1] not in _LEVELS:
    return "tf_mha"  # the umbrella, or a name it exports
  return parts[1]


def _needs_checkout(test):
  if "TEST_SRCDIR" in os.environ:
    test.skipTest("Under Bazel the runfiles hold only declared files; .ci/run "
                  "checks the checkout's layout with pytest.")


class LayoutTest(tf.test.TestCase, parameterized.TestCase):

  def test_every_folder_is_in_the_flow_and_says_what_it_holds(self):
    _needs_checkout(self)
    for name in sorted(os.listdir(_PACKAGE)):
      init = os.path.join(_PACKAGE, name, "__init__.py")
      if not os.path.exists(init):
        continue
      self.assertIn(name, _LEVELS, f"tf_mha/{name}/ has no level in _LEVELS")
      with open(init) as f:
        doc = ast.get_docstring(ast.parse(f.read()))
      self.assertTrue(doc, f"tf_mha/{name}/__init__.py has no docstring")
      self.assertRegex(doc, r"(?i)\bimport", f"tf_mha/{name}/__init__.py "
                       "does not say what it may import")

  def test_no_module_imports_a_folder_above_its_own(self):
    _needs_checkout(self)
    checked = 0
    for path, folder, imported in _modules():
      if folder not in _LEVELS:  # a module at the top: _startup, __init__
        continue
      for module in imported:
        target = _folder_of(module)
        if target is None or target == folder:
          continue
        checked += 1
        self.assertLessEqual(
            _LEVELS[target], _LEVELS[folder],
            f"{os.path.relpath(path, _REPO)} ({folder}) imports {module} "
            f"({target}), a folder above it")
    self.assertGreater(checked, 50)

  def test_the_op_imports_neither_keras_nor_the_rest_of_tf_mha(self):
    _needs_checkout(self)
    modules = [m for m in _modules() if m[1] == "ops"]
    self.assertGreaterEqual(len(modules), 8)
    for path, _, imported in modules:
      for module in imported:
        self.assertNotIn(module.split(".")[0], _KERAS_PACKAGES,
                         f"{path} imports {module}")
        self.assertFalse(module.startswith("tensorflow.keras"),
                         f"{path} imports {module}")
        if module.startswith("tf_mha"):
          self.assertTrue(module.startswith("tf_mha.ops."),
                          f"{path} imports {module}")

  def test_modules_and_functions_stay_small(self):
    _needs_checkout(self)
    for path, _, _ in _modules():
      with open(path) as f:
        source = f.read()
      self.assertLessEqual(len(source.splitlines()), 420, path)
      for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef):
          body = node.body
          first = body[1] if (len(body) > 1 and isinstance(body[0], ast.Expr)
                              and isinstance(body[0].value, ast.Constant)) else body[0]
          self.assertLessEqual(node.end_lineno - first.lineno + 1, 62,
                               f"{path}: {node.name}")

  @parameterized.parameters(*tf_mha.__all__)
  def test_public_names(self, name):
    self.assertTrue(callable(getattr(tf_mha, name)))

  @parameterized.parameters(
      ("tf_mha.keras3", tf_mha.keras3,
       ("MultiHeadAttention", "GroupedQueryAttention")),
      ("tf_mha.generation", tf_mha.generation,
       ("greedy_generate", "KVCache", "cache_shape")),
      ("tf_mha.export.serving", serving, ("export",)),
      ("tf_mha.export.litert_generation", litert_generation, ("Generator",)),
      ("tf_mha.ops", ops, ("dot_product_attention",)),
      ("tf_mha.training", training, ("Trainer", "make_strategy", "Examples")),
      ("tf_mha.cli.export_saved_model", export_saved_model, ("run",)),
  )
  def test_import_paths_the_readme_shows(self, path, module, names):
    self.assertIs(importlib.import_module(path), module)
    for name in names:
      self.assertTrue(hasattr(module, name), f"{path}.{name}")
    self.assertIs(ops.dot_product_attention, tf_mha.dot_product_attention)

  def test_registered_names_are_unchanged(self):
    for layer in (tf_mha.MultiHeadAttention, tf_mha.GroupedQueryAttention,
                  tf_mha.Attention):
      self.assertEqual(tf_keras.utils.get_registered_name(layer),
                       f"tf_mha>{layer.__name__}")
    for layer in (tf_mha.keras3.MultiHeadAttention,
                  tf_mha.keras3.GroupedQueryAttention):
      self.assertEqual(keras.saving.get_registered_name(layer),
                       f"tf_mha>{layer.__name__}")

  @parameterized.named_parameters(("keras", "tf_keras.keras"),
                                  ("h5", "tf_keras.h5"))
  def test_tf_keras_files_saved_before_the_move_load(self, name):
    expected = np.load(os.path.join(_SAVED, "expected.npz"))
    model = tf_keras.models.load_model(os.path.join(_SAVED, name))
    self.assertIsInstance(model.get_layer("mha"), tf_mha.MultiHeadAttention)
    self.assertIsInstance(model.get_layer("gqa"), tf_mha.GroupedQueryAttention)
    self.assertIsInstance(model.get_layer("dot"), tf_mha.Attention)
    bounds.assert_close(model(expected["x"]), expected["tf_keras"], bounds.MODEL_ULPS)

  def test_keras3_file_saved_before_the_move_loads(self):
    expected = np.load(os.path.join(_SAVED, "expected.npz"))
    model = keras.saving.load_model(os.path.join(_SAVED, "keras3.keras"))
    self.assertIsInstance(model.get_layer("mha"), tf_mha.keras3.MultiHeadAttention)
    self.assertIsInstance(model.get_layer("gqa"),
                          tf_mha.keras3.GroupedQueryAttention)
    bounds.assert_close(model(expected["x"]), expected["keras3"], bounds.MODEL_ULPS)


if __name__ == "__main__":
  tf.test.main()
