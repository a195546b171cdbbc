"""Run a SavedModel's signature on given inputs, without tf_mha installed.

SavedModels holding tensorflow-text ops load only after
`import tensorflow_text`, which is why `saved_model_cli run` fails on them;
this tool imports it first.

  python -m tools.run_signature --saved_model_dir=saved_models/tf_mha_demo/1 \
      --text="the plot was not bad" --text="the music was dull"
"""

import json
import os

from absl import app
from absl import flags

_SAVED_MODEL_DIR = flags.DEFINE_string("saved_model_dir", None,
                                       "SavedModel version directory.", required=True)
_SIGNATURE = flags.DEFINE_string("signature", "serving_default", "Signature to run.")
_TEXT = flags.DEFINE_multi_string("text", [], "An input string; repeat for a batch.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _TEXT.value:
    raise app.UsageError("Give at least one --text")
  for text in _TEXT.value:
    try:
      text.encode("utf-8")
    except UnicodeEncodeError as e:  # argv bytes that are not UTF-8
      raise app.UsageError(
          f"--text must be UTF-8 text. Received: {os.fsencode(text)!r}") from e
  import tensorflow as tf
  import tensorflow_text  # noqa: F401  (registers the tokenizer ops)
  try:
    loaded = tf.saved_model.load(_SAVED_MODEL_DIR.value)
  except OSError as e:
    raise app.UsageError(f"--saved_model_dir: {e}") from e
  if _SIGNATURE.value not in loaded.signatures:
    raise app.UsageError(f"--signature={_SIGNATURE.value!r} not in "
                         f"{sorted(loaded.signatures)}")
  fn = loaded.signatures[_SIGNATURE.value]
  inputs = fn.structured_input_signature[1]
  text_inputs = [n for n, spec in inputs.items() if spec.dtype == tf.string]
  if len(inputs) != 1 or not text_inputs:
    described = ", ".join(f"{n}: {spec.dtype.name} {spec.shape}"
                          for n, spec in inputs.items())
    raise app.UsageError(
        f"--signature={_SIGNATURE.value!r} does not take one string input "
        f"(it takes {described}); --text can only feed a signature that does, "
        "e.g. serving_default or tokenize")
  (name,) = text_inputs
  outputs = fn(**{name: tf.constant(_TEXT.value)})
  for i, text in enumerate(_TEXT.value):
    row = {k: _plain(v.numpy()[i]) for k, v in sorted(outputs.items())}
    print(json.dumps({"input": text, **row}))


def _plain(value):
  if isinstance(value, bytes):
    return value.decode()
  return value.tolist() if hasattr(value, "tolist") else value


if __name__ == "__main__":
  app.run(main)
