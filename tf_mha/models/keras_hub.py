"""KerasHub's causal LMs on tf_mha: a preset directory (what
`save_to_preset` writes) or a `CausalLM` in memory -> `transformer.CausalLM`
with the same weights, and the preset's tokenizer.

Shapes: `B` batch, `P` prompt tokens, `M` new tokens, `D` model size, `N`
query heads, `K` key/value heads, `H` head size, `F` feed-forward size, `V`
vocabulary.

KerasHub's sources (`keras_hub/src/models/{llama,mistral,qwen}/`) are the
reference: every block is RMSNorm -> attention -> RMSNorm -> SwiGLU, the
families differ in what `transformer.DecoderConfig` records. The preset's
tokenizer stays KerasHub's own (its TF ops are traced into the SavedModel,
which then needs only TensorFlow and tensorflow-text); for LiteRT-LM it is
written as a file (`tokenizer_file`).
"""

import dataclasses
import json
import os
from typing import Optional

import tensorflow as tf

from tf_mha.models import gemma3
from tf_mha.models import transformer

# KerasHub backbone class -> family. Qwen2's backbone is `QwenBackbone`.
FAMILIES = {"LlamaBackbone": "llama", "Llama3Backbone": "llama",
            "MistralBackbone": "mistral", "QwenBackbone": "qwen2",
            "Gemma3Backbone": "gemma3"}
# Gemma's turn template, LiteRT-LM's prompt template for its `.litertlm`:
# (user_prefix, user_suffix, model_prefix).
GEMMA_TEMPLATE = ("<start_of_turn>user\n", "<end_of_turn>\n",
                  "<start_of_turn>model\n")
# The cache slots when neither the caller nor the preprocessor says.
DEFAULT_MAX_LENGTH = 1024


class PresetError(ValueError):
  """A preset (or CausalLM) tf_mha cannot read; the message says why."""


@dataclasses.dataclass
class Preset:
  """A KerasHub causal LM read into tf_mha."""
  model: transformer.CausalLM
  tokenizer: object  # the preset's KerasHub tokenizer
  start_id: Optional[int]  # what the preprocessor prepends, or None
  stop_ids: list  # the tokenizer's end token (Gemma: also <end_of_turn>)
  name: str  # KerasHub's backbone class
  template: tuple = ("", "", "")  # LiteRT-LM's prompt template

  @property
  def family(self):
    return self.model.config.family

  @property
  def end_id(self):
    return self.stop_ids[0]


def load(preset, max_length=None):
  """Reads a KerasHub causal LM into tf_mha.

  Args:
    preset: a preset directory, or a `keras_hub.models.CausalLM` with its
      preprocessor (which holds the tokenizer).
    max_length: the cache slots `S` (prompt, start token and new tokens);
      default the preprocessor's `sequence_length`, else
      `DEFAULT_MAX_LENGTH`.

  Returns:
    A `Preset`.

  Raises:
    PresetError: the architecture is not one of `FAMILIES`, a file is
      missing, the weights do not match the config, there is no tokenizer,
      or `max_length` is too short for a prompt.
  """
  causal_lm = _causal_lm(preset)
  backbone, preprocessor = causal_lm.backbone, causal_lm.preprocessor
  name = type(backbone).__name__
  if name not in FAMILIES:
    raise PresetError(_unsupported(name))
  if getattr(backbone, "vision_encoder", None) is not None:
    raise PresetError(f"`preset` is a {name} with a vision encoder; tf_mha "
                      "reads text-only Gemma 3 (the text decoder of 270M and "
                      "1B, or a preset saved without images).")
  if preprocessor is None or getattr(preprocessor, "tokenizer", None) is None:
    raise PresetError("`preset` must come with its preprocessor and tokenizer "
                      f"(generation needs them). Received: a {name} without")
  tokenizer = preprocessor.tokenizer
  start_id = (tokenizer.start_token_id
              if getattr(preprocessor, "add_start_token", False) else None)
  if max_length is None:
    max_length = (getattr(preprocessor, "sequence_length", None) or
                  DEFAULT_MAX_LENGTH)
  shortest = 2 + (start_id is not None)  # a prompt token and a new one
  if not isinstance(max_length, int) or max_length < shortest:
    raise PresetError(
        f"`max_length` (the cache slots) must be at least {shortest}: "
        f"{'the start token, ' if start_id is not None else ''}one prompt "
        f"token and one new token. Received: max_length={max_length!r}")
  config = read_config(backbone)
  family = gemma3.Gemma3CausalLM if config.family == "gemma3" else transformer.CausalLM
  model = family(config, max_length, name=config.family)
  copy_weights(backbone, model)
  model(tf.zeros([1, 1], tf.int32))  # built with an input shape: it saves
  stops = [int(tokenizer.end_token_id)]
  if config.family == "gemma3":  # KerasHub's Gemma 3 also stops at a turn's end
    stops += [int(tokenizer.token_to_id("<end_of_turn>"))]
    return Preset(model, tokenizer, start_id, stops, name, GEMMA_TEMPLATE)
  return Preset(model, tokenizer, start_id, stops, name)


def _causal_lm(preset):
  if not isinstance(preset, (str, os.PathLike)):
    if not hasattr(preset, "backbone"):
      raise PresetError("`preset` must be a KerasHub preset directory or a "
                        f"keras_hub.models.CausalLM. Received: {preset!r}")
    return preset
  preset = os.fspath(preset)
  config_file = os.path.join(preset, "config.json")
  if not os.path.isdir(preset):
    raise PresetError(f"`preset`={preset!r} is not a directory.")
  if not os.path.isfile(config_file):
    raise PresetError(f"The preset directory {preset!r} is missing a file: "
                      "config.json (the backbone's config).")
  with open(config_file) as f:
    name = json.load(f).get("class_name")
  if name not in FAMILIES:
    raise PresetError(_unsupported(name))
  present = set(os.listdir(preset))
  for needed in (("model.weights.h5", "model.weights.json"), ("tokenizer.json",)):
    if not present & set(needed):
      raise PresetError(f"The preset directory {preset!r} is missing a file: "
                        f"{' or '.join(needed)}.")
  os.environ.setdefault("KERAS_BACKEND", "tensorflow")
  try:
    import keras_hub  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise PresetError("Reading a KerasHub preset needs KerasHub: pip install "
                      "'tf_mha[keras_hub]'") from e
  try:
    return keras_hub.models.CausalLM.from_preset(preset)
  except FileNotFoundError as e:
    raise PresetError(f"The preset directory {preset!r} is missing a file: "
                      f"{e}") from e
  except ValueError as e:  # Keras' message for a variable's shape
    first = str(e).strip().splitlines()[0][:300]
    raise PresetError(f"The preset {preset!r} could not be loaded: its "
                      f"weights do not match its config ({first})") from e
  except Exception as e:  # pylint: disable=broad-except
    raise PresetError(f"KerasHub could not load the preset {preset!r}: "
                      f"{type(e).__name__}: {str(e)[:300]}") from e


def _unsupported(name):
  return (f"KerasHub architecture {name!r} is not supported. Supported "
          f"backbones: {', '.join(sorted(FAMILIES))}.")


def read_config(backbone):
  """The backbone's `transformer.DecoderConfig` (`gemma3.Gemma3Config`)."""
  name = type(backbone).__name__
  family = FAMILIES[name]
  get = lambda key, default=None: getattr(backbone, key, default)
  sizes = {f.name: get(f.name) for f in dataclasses.fields(transformer.DecoderSize)}
  sizes["head_dim"] = sizes["head_dim"] or backbone.hidden_dim // backbone.num_query_heads
  if family == "gemma3":
    # KerasHub's Gemma 3 block builds its attention with
    # `query_head_dim_normalize=True` whatever the config says: so here.
    return gemma3.Gemma3Config(
        **sizes,
        **{f.name: get(f.name) for f in dataclasses.fields(gemma3.Gemma3Config)
           if f.name not in sizes and f.name not in (
               "family", "tie_word_embeddings", "sliding_window",
               "query_head_dim_normalize")},
        sliding_window=(backbone.sliding_window_size
                        if get("use_sliding_window_attention") else None))
  common = dict(
      sizes, family=family,
      layer_norm_epsilon=backbone.layer_norm_epsilon,
      rope_max_wavelength=backbone.rope_max_wavelength,
      tie_word_embeddings=bool(backbone.token_embedding.tie_weights))
  if family == "llama":
    # KerasHub's Llama rotary ignores `rope_position_scaling_factor` (its
    # frequencies are Llama 3.1's or plain), so it is not read.
    llama3 = [get(k) for k in ("rope_frequency_adjustment_factor",
                               "rope_low_freq_factor", "rope_high_freq_factor",
                               "rope_pretraining_sequence_length")]
    return transformer.DecoderConfig(
        **common, rope_llama3_scaling=(
            tuple(float(v) for v in llama3) if llama3[0] is not None else None))
  if family == "mistral":
    return transformer.DecoderConfig(
        **common, rope_scaling_factor=backbone.rope_scaling_factor,
        sliding_window=get("sliding_window"))
  window = (backbone.sliding_window_size
            if get("use_sliding_window_attention") else None)
  return transformer.DecoderConfig(
      **common, rope_scaling_factor=backbone.rope_scaling_factor,
      sliding_window=window, attention_bias=True)


def copy_weights(backbone, model):
  """Assigns the backbone's weights to `model` (a `transformer.CausalLM`
  of `read_config(backbone)`); a PresetError names a weight whose shape
  differs."""
  embedding = backbone.token_embedding
  pairs = [(model.embed.embeddings, embedding.embeddings),
           (model.final_norm.scale, backbone.layer_norm.scale)]
  if model.config.family == "gemma3":
    pairs += _gemma3_pairs(model, backbone)
  else:
    pairs += _llama_pairs(model, backbone)
  for mine, theirs in pairs:
    value = tf.convert_to_tensor(theirs)
    if mine.shape != value.shape:
      raise PresetError(
          f"The backbone's weights do not match its config: {mine.name} "
          f"should be {mine.shape.as_list()} and is {value.shape.as_list()}.")
    mine.assign(tf.cast(value, mine.dtype))


def _gemma3_pairs(model, backbone):
  """`(ours, KerasHub's)` weights of Gemma 3's blocks."""
  pairs = []
  for block, layer in zip(model.blocks, backbone.transformer_layers):
    theirs, ours = layer.attention, block.attention
    # Ours are matrices: [N, D, H] -> [D, N * H], [N, H, D] -> [N * H, D].
    matrix = lambda kernel: _flat(tf.transpose(kernel, [1, 0, 2]), 1)
    pairs += [(ours.query, matrix(theirs.query_dense.kernel)),
              (ours.key, matrix(theirs.key_dense.kernel)),
              (ours.value, matrix(theirs.value_dense.kernel)),
              (ours.out, _flat(theirs.output_dense.kernel, 0)),
              (block.gate.kernel, layer.gating_ffw.kernel),
              (block.up.kernel, layer.gating_ffw_2.kernel),
              (block.down.kernel, layer.ffw_linear.kernel)]
    if ours.norms:
      pairs += [(ours.norms[0].scale, theirs.query_norm.scale),
                (ours.norms[1].scale, theirs.key_norm.scale)]
    for name in ("pre_attention_norm", "post_attention_norm", "pre_ffw_norm",
                 "post_ffw_norm"):
      if getattr(block, name) is not None:
        pairs.append((getattr(block, name).scale, getattr(layer, name).scale))
  return pairs


def _flat(kernel, first):
  """A 3-D kernel as a matrix: axes `[0, first]` (1 or 0) merged."""
  shape = kernel.shape
  return tf.reshape(kernel, [shape[0] * shape[1], shape[2]] if first == 0 else
                    [shape[0], shape[1] * shape[2]])


def _llama_pairs(model, backbone):
  """`(ours, KerasHub's)` weights of Llama's, Mistral's and Qwen2's."""
  pairs = []
  embedding = backbone.token_embedding
  if not model.config.tie_word_embeddings:
    pairs.append((model.output_kernel, embedding.reverse_embeddings))
  for block, layer in zip(model.blocks, backbone.transformer_layers):
    theirs = layer._self_attention_layer  # pylint: disable=protected-access
    ours = block.attention
    for part in ("query", "key", "value", "output"):
      dense = getattr(theirs, f"_{part}_dense")
      mine = getattr(ours, f"_{part}_dense")
      pairs.append((mine.kernel, dense.kernel))
      if model.config.attention_bias:  # Qwen: none on the output
        pairs.append((mine.bias, dense.bias if part != "output" else
                      tf.zeros_like(mine.bias)))
    pairs += [(block.attention_norm.scale, layer._self_attention_layernorm.scale),  # pylint: disable=protected-access
              (block.feedforward_norm.scale, layer._feedforward_layernorm.scale),  # pylint: disable=protected-access
              (block.gate.kernel, layer._feedforward_gate_dense.kernel),  # pylint: disable=protected-access
              (block.up.kernel, layer._feedforward_intermediate_dense.kernel),  # pylint: disable=protected-access
              (block.down.kernel, layer._feedforward_output_dense.kernel)]  # pylint: disable=protected-access
  return pairs


def encode_fn(preset):
  """`prompt [B] -> (ids [B, P], lengths [B])` with the preset's tokenizer
  and start token (`decoder_serving.DecoderModule`'s `encode`)."""
  def encode(prompt):
    ids = preset.tokenizer(prompt)  # ragged [B, (P)]; eagerly, lists
    if not isinstance(ids, tf.RaggedTensor):
      ids = tf.ragged.constant(ids, tf.int32, ragged_rank=1)
    ids = tf.cast(ids, tf.int32)
    if preset.start_id is not None:
      start = tf.fill([tf.shape(prompt)[0], 1], preset.start_id)
      ids = tf.concat([tf.RaggedTensor.from_tensor(start), ids], 1)
    return ids.to_tensor(0), tf.cast(ids.row_lengths(), tf.int32)
  return encode


def detokenize_fn(preset):
  """`(token_ids [B, M], num_tokens [B]) -> text [B]`."""
  def detokenize(token_ids, num_tokens):
    ragged = tf.RaggedTensor.from_tensor(token_ids, lengths=num_tokens)
    return tf.reshape(preset.tokenizer.detokenize(ragged), [-1])
  return detokenize


def tokenizer_file(tokenizer, directory):
  """Writes the tokenizer as LiteRT-LM reads it: a SentencePiece model
  (`tokenizer.model`) or, for byte-level BPE, a Hugging Face
  `tokenizer.json` that splits and merges as KerasHub's BytePairTokenizer.
  Returns its path."""
  proto = getattr(tokenizer, "proto", None)
  if proto is not None:
    path = os.path.join(directory, "tokenizer.model")
    with open(path, "wb") as f:
      f.write(proto if isinstance(proto, bytes) else open(proto, "rb").read())
    return path
  if getattr(tokenizer, "merges", None) is None:
    raise PresetError("The preset's tokenizer is neither SentencePiece nor "
                      f"byte-level BPE: {type(tokenizer).__name__}")
  import tokenizers  # pylint: disable=g-import-not-at-top
  bpe = tokenizers.Tokenizer(tokenizers.models.BPE(
      vocab=dict(tokenizer.vocabulary),
      merges=[tuple(merge.split(" ")) for merge in tokenizer.merges]))
  bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(
      add_prefix_space=bool(tokenizer.add_prefix_space), use_regex=True)
  bpe.decoder = tokenizers.decoders.ByteLevel()
  bpe.add_special_tokens([tokenizers.AddedToken(t, special=True)
                          for t in tokenizer.unsplittable_tokens or ()])
  path = os.path.join(directory, "tokenizer.json")
  bpe.save(path)
  return path
