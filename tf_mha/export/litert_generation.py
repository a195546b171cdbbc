"""Generation entirely in LiteRT, as a phone app runs it: greedy, or
sampled on the logits `decode` returns (`generation.numpy_samplers`).

A decoder converted with `prefill` and `decode` signatures (the convention
of Google's generative LiteRT converter) takes `token_ids` `[1, L]`,
`positions` `[1, L]`, `cache_index` (the slot of the first token) and one
cache per layer (`kv_cache_0`, ...), and returns `logits` `[1, L, V]` and the
updated caches under the same names. The client owns the loop: prefill the
prompt at slot 0, then decode one token at a time, feeding the caches back.
"""

import dataclasses
import re
import time

import numpy as np

from tf_mha.export import tflite
from tf_mha.generation import numpy_samplers


@dataclasses.dataclass
class Generation:
  token_ids: list  # the new tokens, the end token included if emitted
  prefill_seconds: float
  step_seconds: list  # one per decode step

  @property
  def decode_tokens_per_second(self):
    return len(self.step_seconds) / max(sum(self.step_seconds), 1e-12)


class Generator:
  """Runs a `.tflite` decoder's `prefill` and `decode` signatures.

  Args:
    model: the model's path or bytes.

  Raises:
    ValueError: the model has no `prefill` and `decode` signatures with
      `kv_cache_<i>` inputs.
  """

  def __init__(self, model):
    interpreter = tflite.interpreter(model)
    signatures = interpreter.get_signature_list()
    described = model if isinstance(model, str) else "the model"
    if not {"prefill", "decode"} <= set(signatures):
      raise ValueError(
          f"`model`={described!r} is not a decoder: it has no prefill and "
          f"decode signatures (signatures: {sorted(signatures)})")
    self._prefill = interpreter.get_signature_runner("prefill")
    self._decode = interpreter.get_signature_runner("decode")
    inputs = self._decode.get_input_details()
    self.cache_names = sorted((n for n in inputs if re.fullmatch(r"kv_cache_\d+", n)),
                              key=lambda n: int(n[len("kv_cache_"):]))
    if not self.cache_names or not {"token_ids", "positions", "cache_index"} <= set(inputs):
      raise ValueError(f"`model`={described!r} has prefill and decode "
                       "signatures, but not the inputs token_ids, positions, "
                       f"cache_index, kv_cache_<i> (inputs: {sorted(inputs)})")
    self._cache_shapes = {n: [1] + list(inputs[n]["shape"][1:])
                          for n in self.cache_names}
    self.max_length = int(self._cache_shapes[self.cache_names[0]][2])

  def check(self, prompt_ids, max_new_tokens):
    """Raises a ValueError naming the argument unless the prompt and
    `max_new_tokens` fit the caches."""
    if not len(prompt_ids):
      raise ValueError("`prompt_ids` is empty: a prompt needs at least one token.")
    if isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens or (
        max_new_tokens < 1):
      raise ValueError("`max_new_tokens` must be a positive integer. "
                       f"Received: max_new_tokens={max_new_tokens!r}")
    if len(prompt_ids) > self.max_length:
      raise ValueError(f"`prompt_ids` has {len(prompt_ids)} tokens, more than "
                       f"the model's {self.max_length}-slot cache.")
    if len(prompt_ids) + max_new_tokens - 1 > self.max_length:
      raise ValueError(
          f"`max_new_tokens`={max_new_tokens} does not fit: the prompt's "
          f"{len(prompt_ids)} tokens and {max_new_tokens} new ones need "
          f"{len(prompt_ids) + max_new_tokens - 1} cache slots; the model "
          f"has {self.max_length}.")

  def generate(self, prompt_ids, max_new_tokens, end_id=None, sampling=None):
    """The tokens after `prompt_ids` (a list of ints), stopping after
    `end_id` or `max_new_tokens` tokens: greedy, or drawn by `sampling` (a
    `generation.Sampling` with scalar parameters and an int seed; the same
    tokens as the SavedModel's `generate` gives a row with that seed, up
    to float rounding)."""
    self.check(prompt_ids, max_new_tokens)
    ids = np.asarray(prompt_ids, np.int32)[None]
    caches = {n: np.zeros(s, np.float32) for n, s in self._cache_shapes.items()}
    start = time.perf_counter()
    out = self._prefill(token_ids=ids, positions=np.arange(ids.shape[1],
                                                          dtype=np.int32)[None],
                        cache_index=np.array(0, np.int32), **caches)
    prefill_seconds = time.perf_counter() - start
    pick = lambda logits, step: numpy_samplers.sample(logits, sampling, step)
    tokens, steps = [pick(out["logits"][0, -1], 0)], []
    while len(tokens) < max_new_tokens and tokens[-1] != end_id:
      index = ids.shape[1] + len(tokens) - 1
      start = time.perf_counter()
      out = self._decode(token_ids=np.array([[tokens[-1]]], np.int32),
                         positions=np.array([[index]], np.int32),
                         cache_index=np.array(index, np.int32),
                         **{n: out[n] for n in self.cache_names})
      steps.append(time.perf_counter() - start)
      tokens.append(pick(out["logits"][0, -1], len(tokens)))
    return Generation(tokens, prefill_seconds, steps)
