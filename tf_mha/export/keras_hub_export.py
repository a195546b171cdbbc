"""`tf_mha_export --keras_hub_preset=DIR`: a KerasHub causal LM on tf_mha,
exported for TF Serving with LiteRT-LM's signatures alongside.

The version directory holds:
  * the SavedModel `decoder_serving.DecoderModule` describes (`generate`,
    `serving_default`, `prefill`, `decode`, `tokenize`), the preset's own
    tokenizer traced into it, and a warmup request;
  * `assets.extra/litertlm/`: the same weights as a SavedModel with
    LiteRT-LM's signatures (`decoder_signatures.save_decoder`: batch 1,
    `prefill_<T>` and `decode`), the tokenizer file and the start and stop
    tokens recorded, which `tf_mha_convert_litertlm --saved_model_dir=<the
    version directory>` converts with no other flag. TF Serving reads
    nothing else in assets.extra/ than its warmup file.
"""

import dataclasses
import os
import tempfile

import numpy as np
import tensorflow as tf

from tf_mha.export import decoder_serving
from tf_mha.export import decoder_signatures
from tf_mha.export import serving
from tf_mha.models import keras_hub

WARMUP_PROMPT = "Hello"
WARMUP_NEW_TOKENS = 4


def serving_module(preset):
  """The `decoder_serving.DecoderModule` of a `keras_hub.Preset`."""
  module = decoder_serving.DecoderModule(
      preset.model, encode=keras_hub.encode_fn(preset),
      detokenize=keras_hub.detokenize_fn(preset), end_id=preset.stop_ids)
  module.tokenizer = preset.tokenizer  # tracked: its tables are saved
  return module


@dataclasses.dataclass
class PresetExport:
  path: str
  preset: keras_hub.Preset
  size: int  # bytes, the whole version directory
  sample: str  # the warmup prompt's greedy continuation, from the export

  def lines(self):
    config = self.preset.model.config
    return [
        f"{self.preset.name} ({config.family}: {config.num_layers} layers, "
        f"D={config.hidden_dim}, {config.num_query_heads}/"
        f"{config.num_key_value_heads} heads of {config.head_dim}, "
        f"vocabulary {config.vocabulary_size}) on tf_mha, "
        f"{self.preset.model.max_length} cache slots",
        f"SavedModel: {self.path} ({self.size / 2**20:.1f} MB)",
        "  signatures: generate, serving_default, prefill, decode, tokenize",
        f"  LiteRT-LM: tf_mha_convert_litertlm --saved_model_dir={self.path} "
        "--output_file=<name>.litertlm",
        f"  {WARMUP_PROMPT!r} -> {self.sample!r}"]


def export_preset(preset, *, output_dir="saved_models", model_name, version=None,
                  overwrite=False, max_length=None,
                  prefill_lengths=decoder_signatures.PREFILL_LENGTHS):
  """Exports a KerasHub causal LM (preset directory or `CausalLM`).

  Args:
    preset: what `keras_hub.load` takes.
    output_dir, model_name, version, overwrite: as `serving.export`.
    max_length: the cache slots (`keras_hub.load`).
    prefill_lengths: LiteRT-LM's prefill signatures.

  Returns:
    A `PresetExport`.

  Raises:
    keras_hub.PresetError: the preset cannot be read (nothing written).
    serving.ExportRefused: the destination is taken.
  """
  serving.check_destination(output_dir, model_name, version, overwrite)
  loaded = keras_hub.load(preset, max_length)
  module = serving_module(loaded)

  def add_litertlm(staging):
    with tempfile.TemporaryDirectory() as scratch:
      decoder_signatures.save_decoder(
          loaded.model, os.path.join(staging, decoder_signatures.NESTED_DIR),
          prefill_lengths=prefill_lengths,
          tokenizer=keras_hub.tokenizer_file(loaded.tokenizer, scratch),
          start_token=loaded.start_id, stop_tokens=loaded.stop_ids,
          user_prefix=loaded.template[0], user_suffix=loaded.template[1],
          model_prefix=loaded.template[2])

  path = serving.export(
      module, output_dir, model_name, version, signatures=module.signatures(),
      overwrite=overwrite, verify=add_litertlm, warmup_inputs={
          "prompt": np.array([WARMUP_PROMPT], dtype=object),
          "max_new_tokens": np.array(WARMUP_NEW_TOKENS, np.int32)})
  served = tf.saved_model.load(path).signatures["serving_default"](
      prompt=tf.constant([WARMUP_PROMPT]),
      max_new_tokens=tf.constant(WARMUP_NEW_TOKENS))
  return PresetExport(path, loaded, serving.directory_size(path),
                      served["text"].numpy()[0].decode("utf-8", "replace"))
