"""MkDocs hook (mkdocs.yml `hooks:`): reference pages from the code itself.

* `<!-- command: NAME -->` becomes the usage text of `tf_mha/cli/NAME.py`
  (its module docstring) and a table of its flags, read from the
  `flags.DEFINE_*` calls at the module's top: the help users see with
  `--help` is written once, in the code. The module is parsed, not imported,
  so building the site needs neither TensorFlow nor absl.
* `<!-- readme: NAME -->` becomes the part of README.md between its
  `<!-- start: NAME -->` and `<!-- end: NAME -->` lines (the Quick start,
  the example, the feature table and the guide list are written once, in
  the README), its links into `docs/` made relative to the site's root.
* `<!-- r-functions: DIR -->` becomes a section per documented function of
  the R package in DIR (its roxygen comments: title, description, usage,
  arguments, value), as R's own help would show it.
"""

import ast
import html
import os
import re

_CLI = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tf_mha", "cli")
_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
_MARKER = re.compile(r"^<!-- command: (\w+) -->$", re.M)
_README_MARKER = re.compile(r"^<!-- readme: (\w+) -->$", re.M)
_R_MARKER = re.compile(r"^<!-- r-functions: ([\w/]+) -->$", re.M)
# A roxygen block and the definition after it: `name <- function(...) {`.
_ROXYGEN = re.compile(r"((?:^#'[^\n]*\n)+)([\w.]+) <- function\((.*?)\)\s*\{", re.M | re.S)
# DEFINE_enum and DEFINE_multi_enum take their choices before the help.
_HELP_INDEX = {"enum": 3, "multi_enum": 3}


def _literal(node, source):
  try:
    return repr(ast.literal_eval(node))
  except ValueError:
    return ast.get_source_segment(source, node)


def command_flags(name):
  """`[(flag, kind, default, help, required)]` for tf_mha/cli/<name>.py, in
  the order they are defined; internal flags (help starting "Internal")
  left out."""
  path = os.path.join(_CLI, name + ".py")
  with open(path) as f:
    source = f.read()
  out = []
  for node in ast.walk(ast.parse(source)):
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr.startswith("DEFINE_")):
      continue
    kind = node.func.attr[len("DEFINE_"):]
    keywords = {k.arg: k.value for k in node.keywords}
    args = dict(enumerate(node.args))
    flag = ast.literal_eval(args.get(0, keywords.get("name")))
    default = args.get(1, keywords.get("default"))
    help_node = args.get(_HELP_INDEX.get(kind, 2), keywords.get("help"))
    help_text = ast.literal_eval(help_node) if help_node is not None else ""
    if kind in _HELP_INDEX:
      choices = ast.literal_eval(args.get(2, keywords.get("enum_values")))
      help_text += f" One of: {', '.join(choices)}."
    required = "required" in keywords and ast.literal_eval(keywords["required"])
    if not help_text.startswith("Internal"):
      out.append((node.lineno, flag, kind, _literal(default, source), help_text,
                  required))
  return [row[1:] for row in sorted(out)]


def _table(name):
  with open(os.path.join(_CLI, name + ".py")) as f:
    usage = ast.get_docstring(ast.parse(f.read()))
  rows = [f"| `--{flag}` | {kind} | {'**required**' if required else f'`{default}`'} | "
          f"{html.escape(help_text).replace('|', '&#124;')} |"
          for flag, kind, default, help_text, required in command_flags(name)]
  return "\n".join(["```text", usage, "```", "", "## Flags", "",
                    "| flag | type | default | what it does |", "|---|---|---|---|",
                    *rows])


def r_functions(directory):
  """`[(name, usage, title, description, [(params, text)], value)]` for the
  roxygen-documented functions of the R files in `directory`."""
  out = []
  r_dir = os.path.join(_ROOT, directory, "R")
  for file in sorted(os.listdir(r_dir)):
    with open(os.path.join(r_dir, file)) as f:
      source = f.read()
    for block, name, arguments in _ROXYGEN.findall(source):
      text = "\n".join(l[3:] if l.startswith("#' ") else l[2:]
                       for l in block.splitlines())
      parts = re.split(r"^@", text, flags=re.M)
      title, _, description = parts[0].strip().partition("\n\n")
      tags = [p.strip().split(None, 1) + [""] for p in parts[1:]]
      params = [tuple(t[1].split(None, 1) + [""])[:2] for t in tags if t[0] == "param"]
      value = " ".join(t[1] for t in tags if t[0] == "return")
      inherits = [t[1] for t in tags if t[0] == "inheritParams"]
      if inherits:
        params.append(("...", f"and the other arguments as in `{inherits[0]}()`."))
      usage = f"{name}({' '.join(arguments.split())})"
      out.append((name, usage, title, description.strip(), params, value))
  return out


def _r_page(directory):
  lines = []
  for name, usage, title, description, params, value in r_functions(directory):
    lines += [f"## `{name}()`", "", f"**{title}**", "", description, "",
              "```text", usage, "```", ""]
    if params:
      lines += ["| argument | meaning |", "|---|---|",
                *(f"| `{p.replace(',', '`, `')}` | {' '.join(t.split())} |"
                  for p, t in params), ""]
    if value:
      lines += [f"**Value:** {' '.join(value.split())}", ""]
  return "\n".join(lines)


def readme_part(name):
  """The lines of README.md between `<!-- start: name -->` and
  `<!-- end: name -->`, with links into docs/ made relative to the site."""
  with open(os.path.join(_ROOT, "README.md")) as f:
    readme = f.read()
  found = re.search(rf"^<!-- start: {name} -->\n(.*?)^<!-- end: {name} -->$", readme,
                    re.M | re.S)
  if not found:
    raise ValueError(f"README.md has no part {name!r} (<!-- start: {name} -->)")
  return found.group(1).replace("](docs/", "](")


def on_page_markdown(markdown, **kwargs):  # pylint: disable=unused-argument
  markdown = _README_MARKER.sub(lambda m: readme_part(m.group(1)), markdown)
  markdown = _MARKER.sub(lambda m: _table(m.group(1)), markdown)
  return _R_MARKER.sub(lambda m: _r_page(m.group(1)), markdown)
