"""The parts of a `.litertlm` file, and running one in LiteRT-LM.

`Tokenizer` reads a SentencePiece `.model` or a Hugging Face
`tokenizer.json`; `build` packs the metadata, the tokenizer and a TFLite
model with LiteRT-LM's builder; `run_greedy` generates in the runtime (on
CPU, greedy: its CPU sampler is `TOP_P` with `k: 1`).
"""

import contextlib
import dataclasses
import io
import os
import shutil
import tempfile
import weakref

from tf_mha.export import decoder_signatures as protocol

# The LlmMetadata's sampler: on CPU the runtime implements TOP_P only, which
# with k=1 is greedy (GREEDY and TOP_K are "not implemented yet").
_GREEDY_K = 1


@dataclasses.dataclass
class Tokenizer:
  """A tokenizer file and what the runtime will read of it."""
  path: str
  kind: str  # "sentencepiece" or "hf"
  vocabulary: int
  _to_id: object = dataclasses.field(repr=False, default=None)

  @classmethod
  def read(cls, path):
    """Raises a ValueError naming `tokenizer` unless `path` is a readable
    SentencePiece model or Hugging Face `tokenizer.json`."""
    try:
      with open(path, "rb") as f:
        payload = f.read()
    except OSError as e:
      raise ValueError(f"`tokenizer`={path!r} cannot be read: {e.strerror}") from e
    if path.endswith(".json") or payload[:1] == b"{":
      try:
        import tokenizers  # pylint: disable=g-import-not-at-top
        hf = tokenizers.Tokenizer.from_str(payload.decode("utf-8"))
      except Exception as e:  # pylint: disable=broad-except
        raise ValueError(f"`tokenizer`={path!r} is not a Hugging Face "
                         f"tokenizer.json: {str(e)[:200]}") from e
      return cls(path, "hf", hf.get_vocab_size(with_added_tokens=True),
                 hf.token_to_id)
    try:
      import sentencepiece  # pylint: disable=g-import-not-at-top
      sp = sentencepiece.SentencePieceProcessor(model_proto=payload)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"`tokenizer`={path!r} is neither a SentencePiece "
                       "model nor a Hugging Face tokenizer.json "
                       f"({type(e).__name__})") from e
    to_id = lambda piece: (None if sp.piece_to_id(piece) == sp.unk_id() and
                           piece != sp.id_to_piece(sp.unk_id())
                           else sp.piece_to_id(piece))
    return cls(path, "sentencepiece", sp.get_piece_size(), to_id)

  def token_id(self, token, flag):
    """`token` (an id, or a token string) as an id inside the vocabulary; a
    ValueError naming `flag` otherwise."""
    if isinstance(token, str) and not token.lstrip("-").isdigit():
      found = self._to_id(token)
      if found is None:
        raise ValueError(f"`{flag}` names {token!r}, which is no token of "
                         f"`tokenizer`={self.path!r}.")
      return int(found)
    value = int(token)
    if not 0 <= value < self.vocabulary:
      raise ValueError(f"`{flag}` must be inside the tokenizer's vocabulary "
                       f"[0, {self.vocabulary}). Received: {token!r}")
    return value


def llm_metadata(*, start_id, stop_ids, user_prefix, user_suffix,
                 model_prefix, max_tokens):
  """The LlmMetadata proto's bytes."""
  from litert_lm_builder.runtime.proto import llm_metadata_pb2  # pylint: disable=g-import-not-at-top
  from litert_lm_builder.runtime.proto import sampler_params_pb2  # pylint: disable=g-import-not-at-top
  meta = llm_metadata_pb2.LlmMetadata()
  if start_id is not None:
    meta.start_token.token_ids.ids.append(start_id)
  for stop in stop_ids:
    meta.stop_tokens.add().token_ids.ids.append(stop)
  meta.prompt_templates.user.prefix = user_prefix
  meta.prompt_templates.user.suffix = user_suffix
  meta.prompt_templates.model.prefix = model_prefix
  meta.sampler_params.type = sampler_params_pb2.SamplerParameters.TOP_P
  meta.sampler_params.k = _GREEDY_K
  meta.sampler_params.p = 1.0
  meta.sampler_params.temperature = 1.0
  meta.max_num_tokens = max_tokens
  meta.llm_model_type.generic_model.SetInParent()
  meta.supports_thinking = False
  meta.supports_function_calling = False
  return meta.SerializeToString()


def executor_metadata(layers):
  """The ExecutorMetadata proto's bytes: each layer's key and value caches,
  by name in both signatures, with their sequence axis (1: `[1, S, K, H]`)."""
  from litert_lm_builder.runtime.proto import executor_metadata_pb2 as pb  # pylint: disable=g-import-not-at-top
  meta = pb.ExecutorMetadata()
  for layer in range(layers):
    for kind, kind_type in (("k", pb.StateBuffer.TYPE_GLOBAL_KEY_CACHE),
                            ("v", pb.StateBuffer.TYPE_GLOBAL_VALUE_CACHE)):
      name = protocol.cache_name(kind, layer)
      meta.llm_executor_metadata.state_buffers.add(
          prefill_input_name=name, prefill_output_name=name,
          decode_input_name=name, decode_output_name=name,
          type=kind_type, sequence_axis=1)
  return meta.SerializeToString()


def build(path, *, model, tokenizer, llm, executor, float32=True):
  """Writes the `.litertlm` file `path` from a TFLite model (bytes), a
  `Tokenizer` and the two metadata protos (bytes). `float32`: ask the
  runtime for float32 activations (on CPU its default for a text decoder is
  float16, where the processor has it); else its default."""
  import litert_lm_builder  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as scratch:
    parts = {}
    for name, payload in (("model.tflite", model), ("llm.pb", llm),
                          ("executor.pb", executor)):
      parts[name] = os.path.join(scratch, name)
      with open(parts[name], "wb") as f:
        f.write(payload)
    builder = litert_lm_builder.LitertLmFileBuilder()
    builder.add_llm_metadata(parts["llm.pb"], supports_thinking=False,
                             supports_function_calling=False)
    builder.add_executor_metadata(parts["executor.pb"])
    model_type = litert_lm_builder.TfLiteModelType.PREFILL_DECODE
    if tokenizer.kind == "hf":
      # The builder compresses files named *.json only.
      copy = os.path.join(scratch, "tokenizer.json")
      with open(tokenizer.path, "rb") as src, open(copy, "wb") as dst:
        dst.write(src.read())
      builder.add_hf_tokenizer(copy)
    else:
      builder.add_sentencepiece_tokenizer(tokenizer.path)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the type
      builder.add_tflite_model(parts["model.tflite"], model_type,
                               prefer_activation_type="fp32" if float32 else None)
    with open(path, "wb") as f:
      builder.build(f, validate_metadata=True)


def sections(path):
  """`[(kind, bytes)]` of a `.litertlm` file's sections, in order."""
  from litert_lm_builder import litertlm_core  # pylint: disable=g-import-not-at-top
  from litert_lm_builder import litertlm_peek  # pylint: disable=g-import-not-at-top
  objects = litertlm_peek.read_litertlm_header(path, io.StringIO()).SectionMetadata()
  out = []
  for i in range(objects.ObjectsLength()):
    section = objects.Objects(i)
    out.append((litertlm_core.any_section_data_type_to_string(section.DataType()),
                section.EndOffset() - section.BeginOffset()))
  return out


@dataclasses.dataclass
class Generated:
  text: str
  prefill_tokens_per_second: float
  decode_tokens_per_second: float
  time_to_first_token: float


def engine(path):
  """A LiteRT-LM engine (CPU, benchmark figures on) for the file `path`.

  The runtime's log shows errors (its reasons when a call fails) and
  nothing below: its INFO lines, printed natively, also at exit, would
  otherwise reach the terminal after a command's quiet `main` has ended.
  The runtime's packed-weight cache (XNNPACK's, about the size of the
  weights) goes to a temporary folder, removed once the engine is gone,
  not beside `path`, where it would stay.
  """
  import litert_lm  # pylint: disable=g-import-not-at-top
  litert_lm.set_min_log_severity(litert_lm.LogSeverity.ERROR)
  cache_dir = tempfile.mkdtemp(prefix="litertlm-cache-")
  try:
    model_engine = litert_lm.Engine(path, backend=litert_lm.Backend.CPU(),
                                    cache_dir=cache_dir, enable_benchmark=True)
  except BaseException:
    shutil.rmtree(cache_dir, ignore_errors=True)
    raise
  # After the engine's own `__del__` has closed it (or at exit).
  weakref.finalize(model_engine, shutil.rmtree, cache_dir, ignore_errors=True)
  return model_engine


def run_greedy(model_engine, text, max_new_tokens):
  """Greedy generation in LiteRT-LM from `text` (the templated prompt; the
  runtime prepends the start token): `Generated`."""
  import litert_lm  # pylint: disable=g-import-not-at-top
  session = model_engine.create_session(
      apply_prompt_template=False,
      sampler_config=litert_lm.SamplerConfig(top_k=_GREEDY_K),
      max_output_tokens=max_new_tokens)
  try:
    session.run_prefill([text])
    out = session.run_decode().texts[0]
    info = session.get_benchmark_info()
  finally:
    session.close()
  return Generated(out, info.last_prefill_tokens_per_second,
                   info.last_decode_tokens_per_second,
                   info.time_to_first_token_in_second)
