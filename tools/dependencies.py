"""Checks that every third-party module the code imports comes from a
distribution that `setup.py` declares where that code needs it.

Rules, for every `import` under tf_mha/, tools/ and tests/ (the standard
library and the project's own packages aside), with the distribution that
provides the module looked up in the environment that runs the check:
  * tests/: `install_requires`, the `test` extra, or a distribution the
    README's test command installs apart (`INSTALLED_APART`);
  * tf_mha/ and tools/, an import at module level (it runs when the module is
    imported): `install_requires`, or the extra named for its folder in
    `FOLDER_EXTRAS` (a module whose folder has none needs it installed);
  * tf_mha/ and tools/, an import inside a function (it runs only when that
    feature is used): `install_requires`, any extra or `INSTALLED_APART`.
`tools/check_dependencies.py` prints the problems; `.ci/run` fails on any.
"""

import ast
import importlib.metadata
import os
import re
import sys

PACKAGES = ("tf_mha", "tools", "tests")
# Installed by the README's test command with --no-deps (it pins an older
# TensorFlow, so no extra can declare it): Model Garden, whose own tests run
# on tf_mha.
INSTALLED_APART = ("tf-models-official",)
# Folders whose modules may import an extra's distributions at module level.
FOLDER_EXTRAS = {
    "tf_mha/keras3": "keras3",
    "tf_mha/benchmarks": "bench",
    "tests": "test",
}


def normalize(name):
  """A distribution name as PEP 503 compares them."""
  return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement):
  """'keras-hub>=0.32,<0.33' -> 'keras-hub' (normalized)."""
  return normalize(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)[1])


def _literal(node, constants):
  """`ast.literal_eval` of `node`, where a name is one of `constants` (a
  module-level list of requirements) and `*name` is spliced into a list."""
  if isinstance(node, ast.Name) and node.id in constants:
    return constants[node.id]
  if isinstance(node, ast.List):
    out = []
    for item in node.elts:
      if isinstance(item, ast.Starred):
        out.extend(_literal(item.value, constants))
      else:
        out.append(_literal(item, constants))
    return out
  if isinstance(node, ast.Dict):
    return {_literal(k, constants): _literal(v, constants)
            for k, v in zip(node.keys, node.values)}
  return ast.literal_eval(node)


def declared(setup_path):
  """`(install_requires, {extra: [names]})` read from setup.py's literal
  `setuptools.setup(...)` arguments (and the module-level lists of
  requirements they name), without running it."""
  with open(setup_path) as f:
    tree = ast.parse(f.read(), setup_path)
  constants = {}
  for node in tree.body:
    if (isinstance(node, ast.Assign) and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.List)):
      constants[node.targets[0].id] = _literal(node.value, constants)
  for node in ast.walk(tree):
    if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "setup":
      args = {k.arg: k.value for k in node.keywords}
      required = _literal(args.get("install_requires", ast.List([])), constants)
      extras = _literal(args.get("extras_require", ast.Dict([], [])), constants)
      return ([requirement_name(r) for r in required],
              {extra: [requirement_name(r) for r in names]
               for extra, names in extras.items()})
  raise ValueError(f"{setup_path} has no setuptools.setup(...) call")


def imports(path):
  """`[(line, top-level module, at module level?)]` of one Python file."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  found = []

  def visit(node, lazy):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, ast.Import):
        found.extend((child.lineno, a.name.split(".")[0], not lazy)
                     for a in child.names)
      elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
        found.append((child.lineno, child.module.split(".")[0], not lazy))
      visit(child, lazy or isinstance(
          child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

  visit(tree, False)
  return found


def problems(root, setup_path=None, distributions=None):
  """Imports whose module no declared distribution provides, as lines
  `path:line: module (from dist) ...`; empty when all are declared.

  `distributions` maps a top-level module to the distributions providing it
  (default: this environment's `importlib.metadata.packages_distributions`).
  """
  required, extras = declared(setup_path or os.path.join(root, "setup.py"))
  if distributions is None:
    distributions = importlib.metadata.packages_distributions()
  apart = [normalize(name) for name in INSTALLED_APART]
  every_extra = [name for names in extras.values() for name in names]
  out = []
  for path in _python_files(root):
    relative = os.path.relpath(path, root)
    folder_extra = next((extra for folder, extra in FOLDER_EXTRAS.items()
                         if relative.startswith(folder + os.sep)), None)
    for line, module, eager in imports(path):
      if module in PACKAGES or module in sys.stdlib_module_names:
        continue
      if relative.startswith("tests" + os.sep):
        allowed, where = required + extras.get("test", []) + apart, (
            "install_requires, the test extra or INSTALLED_APART")
      elif eager:
        allowed = required + extras.get(folder_extra, [])
        where = "install_requires" + (f" or the {folder_extra} extra"
                                      if folder_extra else "")
      else:
        allowed = required + every_extra + apart
        where = "install_requires, an extra or INSTALLED_APART"
      providers = [normalize(d) for d in distributions.get(module, [])]
      if not providers:
        out.append(f"{relative}:{line}: {module} is installed by no "
                   "distribution in this environment")
      elif not set(providers) & set(allowed):
        out.append(f"{relative}:{line}: {module} (from {', '.join(providers)}) "
                   f"is not declared in setup.py's {where}")
  return out


def _python_files(root):
  for package in PACKAGES:
    for directory, folders, files in os.walk(os.path.join(root, package)):
      folders[:] = sorted(f for f in folders if not f.startswith((".", "__")))
      for name in sorted(files):
        if name.endswith(".py"):
          yield os.path.join(directory, name)
