"""The samplers of `samplers.py` in NumPy, for a client that runs the
decoding loop itself on the logits a `decode` signature returns (LiteRT on
a phone, `export.litert_generation.Generator`).

Same order (temperature, top-k, top-p, a Gumbel-max draw) and the same
integer hash for the draws: for the same logits, seed and step they pick
the token `samplers.sample` picks.
"""

import numpy as np

from tf_mha.generation import samplers


def _hash(x):
  """`samplers._hash` on int64 arrays."""
  for _ in range(2):
    x = np.bitwise_xor(x, np.right_shift(x, 16))
    x = np.bitwise_and(x * samplers.MIX, samplers.MASK)
  return np.bitwise_xor(x, np.right_shift(x, 16))


def uniform(vocab, seed, step):
  """One row's draws in (0, 1), `[V]` float32, for the row seed `seed`
  (two ints) at decoding step `step`: `samplers.uniform`'s numbers."""
  low = lambda x: np.bitwise_and(np.int64(x), samplers.MASK)
  key = _hash(np.bitwise_xor(_hash(low(seed[0])), low(seed[1])))
  key = _hash(np.bitwise_xor(key, np.int64(step)))
  bits = _hash(np.bitwise_xor(_hash(np.arange(vocab, dtype=np.int64)), key))
  top = np.right_shift(bits, 8).astype(np.float32)
  return (top + np.float32(0.5)) * np.float32(1.0 / (1 << 24))


def filtered_logits(logits, temperature=1.0, top_k=None, top_p=None):
  """One row's logits `[V]` scaled by `temperature` (unless it is 0) with
  the tokens outside top-k / top-p set to -inf (float32)."""
  logits = np.asarray(logits, np.float32)
  scaled = logits / np.float32(temperature if temperature > 0 else 1.0)
  ranked = np.sort(scaled)[::-1]
  floor = np.float32(-np.inf)
  if top_k is not None and top_k > 0:
    floor = max(floor, ranked[min(int(top_k), len(ranked)) - 1])
  if top_p is not None:
    kept = np.where(ranked >= floor, ranked, -np.inf)
    probs = np.exp(kept - kept[0])
    probs /= probs.sum()
    before = np.cumsum(probs) - probs
    last = int(np.sum(before < np.float32(top_p)))
    floor = max(floor, ranked[max(last, 1) - 1])
  return np.where(scaled >= floor, scaled, np.float32(-np.inf))


def sample(logits, sampling, step=0):
  """The next token (an int) of one row's `logits` `[V]` for `sampling` (a
  `samplers.Sampling` with scalar parameters and the row's seed: two ints,
  or one, `s`, meaning `(s, 0)`) at decoding step `step`. `None`, or a
  temperature of 0: greedy."""
  if sampling is None or not sampling.temperature > 0:
    return int(np.argmax(logits))
  seed = np.ravel(sampling.seed)
  seed = (seed[0], seed[1] if len(seed) > 1 else 0)
  filtered = filtered_logits(logits, sampling.temperature, sampling.top_k,
                             sampling.top_p)
  u = uniform(len(filtered), seed, step)
  return int(np.argmax(filtered - np.log(-np.log(u))))
