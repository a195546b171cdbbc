"""`python -m tools.export_saved_model` and `bazel run //tools:export_saved_model`: the command
`tf_mha.cli.export_saved_model` (installed as a console script)."""

from tf_mha.cli import export_saved_model

if __name__ == "__main__":
  export_saved_model.run()
