"""Checks that the Bazel BUILD files mirror the Python code (no Bazel needed).

Rules, for every `.py` file under the Python packages:
  * it is in the `srcs` of exactly one target of its directory's BUILD file;
    a `test_*.py` file in a `py_test`, a tool (a file under tools/ with a
    `__main__` block) in a `py_binary`;
  * each project module it imports belongs to its own target or to one of
    the target's `deps`, and so do the `__init__.py` files that importing it
    runs (those of its packages that do not contain the importer); every
    dep is imported (no stale deps);
  * a file that runs a tool as `python -m tools.<name>` lists
    `//tools:<name>` in `data`; every label points at a defined target.
`tools/check_build.py` prints the problems; `.ci/run` fails on any.
"""

import ast
import dataclasses
import os
import re

PACKAGES = ("tf_mha", "tools", "tests")
RULES = ("py_library", "py_binary", "py_test")


@dataclasses.dataclass
class Target:
  package: str  # directory relative to the root, e.g. "tf_mha/demo"
  name: str
  rule: str
  srcs: list
  deps: list
  data: list

  @property
  def label(self):
    return f"//{self.package}:{self.name}"


def normalize(label, package):
  """'//a/b' -> '//a/b:b'; ':x' -> '//package:x'."""
  if label.startswith(":"):
    return f"//{package}{label}"
  if label.startswith("//") and ":" not in label:
    return f"{label}:{label.rsplit('/', 1)[-1]}"
  return label


def read_build(path, package):
  """The py_* targets of one BUILD file (literal keyword arguments only)."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  targets = []
  for node in ast.walk(tree):
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in RULES):
      continue
    args = {k.arg: ast.literal_eval(k.value) for k in node.keywords
            if k.arg in ("name", "srcs", "deps", "data")}
    targets.append(Target(package, args["name"], node.func.id,
                          list(args.get("srcs", [])),
                          [normalize(d, package) for d in args.get("deps", [])],
                          [normalize(d, package) for d in args.get("data", [])]))
  return targets


def all_targets(root):
  targets, defined = [], set()
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames
                   if not d.startswith((".", "bazel-")) and d != "third_party"]
    if "BUILD" in filenames:
      package = os.path.relpath(dirpath, root).replace(os.sep, "/")
      package = "" if package == "." else package
      for target in read_build(os.path.join(dirpath, "BUILD"), package):
        targets.append(target)
      with open(os.path.join(dirpath, "BUILD")) as f:
        for name in re.findall(r'\bname\s*=\s*"([^"]+)"', f.read()):
          defined.add(f"//{package}:{name}")
  return targets, defined


def python_files(root):
  for package in PACKAGES:
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, package)):
      dirnames[:] = [d for d in dirnames if not d.startswith((".", "__"))]
      for name in sorted(filenames):
        if name.endswith(".py"):
          yield os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")


def _module_file(root, dotted):
  base = dotted.replace(".", "/")
  for candidate in (f"{base}.py", f"{base}/__init__.py"):
    if os.path.exists(os.path.join(root, candidate)):
      return candidate
  return None


def imported_files(root, path):
  """Project files that `path` imports (absolute imports of PACKAGES)."""
  with open(os.path.join(root, path)) as f:
    tree = ast.parse(f.read(), path)
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      # `from a import b` imports a.b when it is a module, else a's attribute.
      names = [f"{node.module}.{alias.name}" if _module_file(
          root, f"{node.module}.{alias.name}") else node.module
               for alias in node.names]
    else:
      continue
    for name in names:
      if name.split(".")[0] in PACKAGES and _module_file(root, name):
        found.add(_module_file(root, name))
        found |= _package_inits(root, name, os.path.dirname(path))
  return found


def _package_inits(root, dotted, importer_dir):
  """`__init__.py` files Python runs to import `dotted` from `importer_dir`:
  those of its packages that do not already contain the importer."""
  parts = dotted.split(".")
  inits = set()
  for i in range(1, len(parts) + 1):
    package = "/".join(parts[:i])
    init = f"{package}/__init__.py"
    inside = importer_dir == package or importer_dir.startswith(package + "/")
    if os.path.exists(os.path.join(root, init)) and not inside:
      inits.add(init)
  return inits


def problems(root):
  """Every way the BUILD files disagree with the code, as messages."""
  targets, defined = all_targets(root)
  owners, out = {}, []
  for target in targets:
    for src in target.srcs:
      file = f"{target.package}/{src}" if target.package else src
      if not os.path.exists(os.path.join(root, file)):
        out.append(f"{target.label}: srcs lists {src}, which does not exist")
      if file in owners:
        out.append(f"{file} is in the srcs of both {owners[file].label} and {target.label}")
      owners[file] = target
  for file in python_files(root):
    target = owners.get(file)
    if target is None:
      out.append(f"{file} has no target in {os.path.dirname(file)}/BUILD")
      continue
    with open(os.path.join(root, file)) as f:
      source = f.read()
    base = os.path.basename(file)
    if base.startswith("test_") and target.rule != "py_test":
      out.append(f"{file} is a test but {target.label} is a {target.rule}")
    is_main = re.search(r'^if __name__ == "__main__":', source, re.M)
    if file.startswith("tools/") and is_main and target.rule != "py_binary":
      out.append(f"{file} is a tool but {target.label} is a {target.rule}")
    for tool in re.findall(r'"-m",\s*"tools\.(\w+)"', source):
      if f"//tools:{tool}" not in target.data + [target.label]:
        out.append(f"{target.label} runs tools.{tool}; add //tools:{tool} to its data")
  for target in targets:
    needed = set()
    for src in target.srcs:
      file = f"{target.package}/{src}" if target.package else src
      if os.path.exists(os.path.join(root, file)):
        needed |= {owners[f].label for f in imported_files(root, file) if f in owners}
    needed.discard(target.label)
    for label in sorted(needed - set(target.deps)):
      out.append(f"{target.label} imports {label} but does not depend on it")
    for label in sorted(set(target.deps) - needed):
      if label.startswith("//"):
        out.append(f"{target.label} depends on {label} but does not import it")
    for label in target.deps + target.data:
      package, name = label[2:].split(":")
      if (label.startswith("//") and label not in defined and
          not os.path.isfile(os.path.join(root, package, name))):
        out.append(f"{target.label} refers to {label}, which is not defined")
  return out
