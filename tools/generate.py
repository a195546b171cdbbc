"""`python -m tools.generate` and `bazel run //tools:generate`: the command
`tf_mha.cli.generate` (installed as a console script)."""

from tf_mha.cli import generate

if __name__ == "__main__":
  generate.run()
