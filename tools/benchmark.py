"""`python -m tools.benchmark` and `bazel run //tools:benchmark`: the command
`tf_mha.cli.benchmark` (installed as a console script)."""

from tf_mha.cli import benchmark

if __name__ == "__main__":
  benchmark.run()
