"""`python -m tools.train` and `bazel run //tools:train`: the command
`tf_mha.cli.train` (installed as a console script)."""

from tf_mha.cli import train

if __name__ == "__main__":
  train.run()
