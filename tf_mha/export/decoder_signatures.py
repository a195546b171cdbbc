"""A decoder's step as the SavedModel signatures LiteRT-LM runs.

Shapes: `T` tokens of a call, `S` cache slots, `K` key/value heads, `H` head
size, `V` vocabulary.

**The step interface** (what a decoder offers; the demo's `Decoder` does,
and so can a user's own model built on tf_mha layers):
  * `model.step(token_ids, positions, cache_index, caches)` ->
    `(logits, caches)`: `token_ids` `[1, T]` int32, `positions` `[1, T]`
    int32 (each token's position), `cache_index` an int32 scalar (the slot of
    the first token), `caches` one entry per layer, each handed to that
    layer's `tf_mha.GroupedQueryAttention` or `tf_mha.MultiHeadAttention`
    call as its `cache` (with `cache_update_index=cache_index`); `logits`
    `[1, T, V]`, and the caches the layers returned, in the same order;
  * `model.cache_shape(batch)` -> `[batch, 2, S, K, H]`, one layer's cache;
  * `model.num_layers`: the number of caches.

**The protocol** (LiteRT-LM's own, `shared/notes/litertlm.md`): signatures
`decode` and `prefill_<T>` for each prefill length, batch 1, inputs `tokens`
`[1, T]` and `input_pos` `[T]` int32, and per layer `kv_cache_k_<i>` and
`kv_cache_v_<i>` `[1, S, K, H]` float32, in and out under the same names;
`decode` (`T = 1`) also returns `logits` `[1, 1, V]`. A call writes its keys
and values as one contiguous slice at `input_pos[0]` (the runtime pads a
prefill with token 0 at position 0, and those slots are overwritten later).
The runtime also fills an optional `mask` (or `attn_mask`) input, `[1, 1, T, S]`
float32, float16 or bool, where a model has one (`MASK_NAMES`; see
`litertlm.runtime_mask`). The signatures here take none: the file's executor
metadata names each cache and its sequence axis, from which the runtime
reads the context size, and the layers' causal mask (query `i + t` sees
slots up to `i + t`) is what the runtime's mask would say.

The caches stay separate keys and values from the signature through the
layers (a cache pair, see `tf_mha.layers._cache`): each is updated in place
of a slice, and nothing stacks or splits them per step.
"""

import json
import os
import re
import shutil

import tensorflow as tf

# Prefill lengths exported by default (each at most the cache's slots), so a
# short prompt does not pay for a long one.
PREFILL_LENGTHS = (16, 64, 256)
# What `save_decoder` records for `tf_mha_convert_litertlm`'s defaults, in
# the SavedModel's assets.extra/.
RECORD_FILE = os.path.join("assets.extra", "tf_mha_litertlm.json")
# Where a TF Serving export keeps its LiteRT-LM SavedModel (the KerasHub
# export's), inside the version directory.
NESTED_DIR = os.path.join("assets.extra", "litertlm")
TOKENS, POSITIONS, LOGITS = "tokens", "input_pos", "logits"
# The names under which LiteRT-LM fills a model's attention mask.
MASK_NAMES = ("mask", "attn_mask")
DECODE, PREFILL = "decode", "prefill"


def cache_name(kind, layer):
  """`kv_cache_k_<layer>` (kind "k") or `kv_cache_v_<layer>` ("v")."""
  return f"kv_cache_{kind}_{layer}"


_CACHE_NAME = re.compile(r"kv_cache_([kv])_(\d+)")


def parse_cache_name(name):
  """`(kind, layer)` of a cache tensor's name, or None."""
  found = _CACHE_NAME.fullmatch(name)
  return (found[1], int(found[2])) if found else None


def prefill_lengths(requested, slots):
  """The prefill lengths to export: each of `requested` capped at `slots`,
  without repeats, ascending."""
  lengths = sorted({min(int(t), slots) for t in requested})
  if not lengths or lengths[0] < 1:
    raise ValueError("`prefill_lengths` must be positive integers. Received: "
                     f"prefill_lengths={list(requested)!r}")
  return lengths


def signatures(model, lengths=PREFILL_LENGTHS):
  """`{name: tf.function}`: `prefill_<T>` for each length and `decode`, over
  `model`'s step (the module doc's interface)."""
  _check_step_interface(model)
  _, _, slots, kv_heads, head_size = model.cache_shape(1)
  cache_specs = [tf.TensorSpec([1, slots, kv_heads, head_size], tf.float32,
                               name=cache_name(kind, i))
                 for i in range(model.num_layers) for kind in "kv"]

  def make(length, decode):
    def call(tokens, input_pos, *flat):
      pairs = [tuple(flat[i:i + 2]) for i in range(0, len(flat), 2)]
      logits, pairs = model.step(tokens, input_pos[None], input_pos[0], pairs)
      out = {cache_name(kind, i): part for i, pair in enumerate(pairs)
             for kind, part in zip("kv", pair)}
      if decode:
        out[LOGITS] = logits[:, -1:]  # [1, 1, V]
      return out
    specs = [tf.TensorSpec([1, length], tf.int32, name=TOKENS),
             tf.TensorSpec([length], tf.int32, name=POSITIONS)] + cache_specs
    return tf.function(call, input_signature=specs)

  out = {f"{PREFILL}_{t}": make(t, False) for t in prefill_lengths(lengths, slots)}
  out[DECODE] = make(1, True)
  return out


def save_decoder(model, directory, *, prefill_lengths=PREFILL_LENGTHS,
                 tokenizer=None, start_token=None, stop_tokens=(),
                 user_prefix="", user_suffix="", model_prefix=""):
  """Saves `model`'s step as a SavedModel with LiteRT-LM's signatures, and
  records what `tf_mha_convert_litertlm` then needs no flag for.

  Args:
    model: a decoder with the step interface (module doc).
    directory: the SavedModel directory to write.
    prefill_lengths: the `prefill_<T>` signatures' lengths (capped at the
      cache's slots).
    tokenizer: a SentencePiece `.model` or a Hugging Face `tokenizer.json`,
      copied into the SavedModel's assets.extra/; or None.
    start_token, stop_tokens: token ids (or token strings) the runtime
      prepends and stops at.
    user_prefix, user_suffix, model_prefix: the prompt template.

  Returns:
    `directory`.
  """
  module = tf.Module()
  module.model = model
  tf.saved_model.save(module, directory,
                      signatures=signatures(model, prefill_lengths))
  record = {"start_token": start_token, "stop_tokens": list(stop_tokens),
            "user_prefix": user_prefix, "user_suffix": user_suffix,
            "model_prefix": model_prefix, "tokenizer": None}
  extra = os.path.join(directory, "assets.extra")
  os.makedirs(extra, exist_ok=True)
  if tokenizer is not None:
    name = os.path.basename(tokenizer)
    shutil.copyfile(tokenizer, os.path.join(extra, name))
    record["tokenizer"] = name
  with open(os.path.join(directory, RECORD_FILE), "w") as f:
    json.dump(record, f, indent=1)
  return directory


def litertlm_saved_model(saved_model_dir):
  """The SavedModel with LiteRT-LM's signatures: `saved_model_dir` itself,
  or the one a TF Serving export nests in `NESTED_DIR`."""
  nested = os.path.join(saved_model_dir, NESTED_DIR)
  return nested if os.path.isfile(os.path.join(nested, "saved_model.pb")) else saved_model_dir


def recorded(saved_model_dir):
  """What `save_decoder` recorded (the tokenizer as a path), or `{}`."""
  path = os.path.join(saved_model_dir, RECORD_FILE)
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    record = json.load(f)
  if record.get("tokenizer"):
    record["tokenizer"] = os.path.join(saved_model_dir, "assets.extra",
                                       record["tokenizer"])
  return record


def _check_step_interface(model):
  missing = [name for name in ("step", "cache_shape", "num_layers")
             if not hasattr(model, name)]
  if missing:
    raise ValueError(
        f"`model` must offer the decoder step interface (step, cache_shape, "
        f"num_layers; see tf_mha.export.decoder_signatures). Received: a "
        f"{type(model).__name__} without {missing}")
  shape = list(model.cache_shape(1))
  if len(shape) != 5 or shape[1] != 2 or not all(
      isinstance(d, int) and d > 0 for d in shape[2:]):
    raise ValueError("`model.cache_shape(1)` must be [1, 2, slots, kv_heads, "
                     f"head_size] of known sizes. Received: {shape}")
