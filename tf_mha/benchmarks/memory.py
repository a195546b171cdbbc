"""A process's peak memory: the one reader every benchmark uses.

The peak is the kernel's VmHWM (`/proc/self/status`), which starts afresh at
exec. `ru_maxrss` would not: Linux carries it across execve, so a child of a
large benchmark process reported its parent's size. Scripts run in a child
process of their own (to keep TensorFlow out of it) take this module's
source, `SOURCE`, instead of importing `tf_mha`.
"""

import inspect


def peak_rss():
  """This process's peak resident set size in bytes (VmHWM)."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024
  raise RuntimeError("/proc/self/status has no VmHWM line")


# `peak_rss`'s definition, for a child script to run before its own code.
SOURCE = inspect.getsource(peak_rss)
