"""Quiet start-up for tf_mha's own commands.

TensorFlow's C++ core logs as soon as it loads (CPU features, CUDA probes,
oneDNN notes), and TensorFlow 2.21 writes those lines whatever
`TF_CPP_MIN_LOG_LEVEL` says. In a process that is one of tf_mha's commands
(a `tf_mha_*` console script, `python -m tools.<command>` or
`bazel run //tools:<command>`), `import tf_mha` loads nothing heavy
(`tf_mha/__init__.py`): the command reads its flags, then its `main` imports
TensorFlow inside `hidden()` (`tf_mha.cli._console.run`), where that output
goes to a temporary file, shown only if the command fails. The user's own
`TF_CPP_MIN_LOG_LEVEL` or `--verbosity` turn it off; nothing changes for a
program that imports tf_mha.
"""

import contextlib
import os
import sys
import tempfile

# Module names under tf_mha/cli/ (and tools/), and their console scripts.
COMMANDS = ("export_saved_model", "convert_tflite", "convert_litertlm", "train",
            "benchmark", "generate")
CONSOLE_SCRIPTS = ("tf_mha_export", "tf_mha_convert_tflite",
                   "tf_mha_convert_litertlm", "tf_mha_train", "tf_mha_benchmark",
                   "tf_mha_generate")
# How much of a hidden log a failure shows.
TAIL_BYTES = 20000


def is_command(argv0):
  """Whether `argv0` (a process's `sys.argv[0]`) starts one of the commands."""
  path = os.path.normpath(argv0)
  stem = os.path.splitext(os.path.basename(path))[0]
  parent = os.path.basename(os.path.dirname(path))
  return stem in CONSOLE_SCRIPTS or (stem in COMMANDS and
                                     parent in ("tools", "cli"))


def wants_quiet(argv, environ):
  """A command, with neither `TF_CPP_MIN_LOG_LEVEL` nor `--verbosity` given."""
  verbose = any(a.split("=")[0] in ("--verbosity", "-v", "--v")
                for a in argv[1:])
  return (bool(argv) and is_command(argv[0]) and not verbose and
          "TF_CPP_MIN_LOG_LEVEL" not in environ)


# Whether this process is one of the commands (tf_mha/__init__.py then loads
# its public names at their first use), and whether it hides TensorFlow's
# logs; decided once, at the first import of tf_mha.
command = bool(sys.argv) and is_command(sys.argv[0])
quiet = wants_quiet(sys.argv, os.environ)


@contextlib.contextmanager
def hidden(fds=(2,), keep=()):
  """While inside, the file descriptors `fds` write to a temporary file.

  Yields a `[stdout, stderr]` pair of text files open on the original
  descriptors 1 and 2, for what must still be seen. When an exception other
  than one of `keep` escapes, the last `TAIL_BYTES` of the hidden output are
  written to the original standard error first.
  """
  sys.stdout.flush()
  sys.stderr.flush()
  saved = [os.dup(1), os.dup(2)]
  originals = [os.fdopen(os.dup(fd), "w", buffering=1) for fd in saved]
  with tempfile.TemporaryFile() as log:
    for fd in fds:
      os.dup2(log.fileno(), fd)
    try:
      yield originals
    except BaseException as e:
      if not isinstance(e, keep):
        log.seek(max(0, log.seek(0, 2) - TAIL_BYTES))
        tail = log.read().decode(errors="replace")
        if tail:
          originals[1].write(f"--- hidden log (last {TAIL_BYTES} bytes) ---\n"
                             f"{tail}\n--- end of hidden log ---\n")
      raise
    finally:
      sys.stdout.flush()
      sys.stderr.flush()
      for fd, original in zip((1, 2), saved):
        os.dup2(original, fd)
        os.close(original)
      for f in originals:
        f.close()
