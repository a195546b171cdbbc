"""`python -m tools.convert_tflite` and `bazel run //tools:convert_tflite`: the command
`tf_mha.cli.convert_tflite` (installed as a console script)."""

from tf_mha.cli import convert_tflite

if __name__ == "__main__":
  convert_tflite.run()
