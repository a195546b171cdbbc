"""`python -m tools.convert_litertlm` and `bazel run //tools:convert_litertlm`:
the command `tf_mha.cli.convert_litertlm` (installed as a console script)."""

from tf_mha.cli import convert_litertlm

if __name__ == "__main__":
  convert_litertlm.run()
