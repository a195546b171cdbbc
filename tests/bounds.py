"""Float32 bounds that hold on every x86-64 instruction set.

The same float32 math gives different roundings on different CPUs: oneDNN and
XLA:CPU pick AVX-512 or AVX2 kernels at run time, which sum in other orders
(and fuse multiply-adds differently). So no bound here is read off one CPU's
result. Each is either

  * `ulps` units of float32 rounding (`EPS`) of the scale of what is compared
    (the largest magnitude of the float64 reference), for a comparison whose
    rounding the test can count (a few matmuls deep: tens of units), or
  * measured in the same run against a float64 run of the same weights
    (`assert_as_accurate_as_peer`): the peer's own float32 error on this CPU
    says how far rounding can move these outputs at all, and tf_mha's float32
    result may be at most `factor` times as far from the float64 result.

The module-level constants name the bounds the tests share; a test that needs
another says where its number comes from next to it.
"""

import numpy as np

EPS = float(np.finfo(np.float32).eps)  # 2**-23, float32's unit of rounding

# A layer's or op's output against the float64 NumPy reference: a few matmuls
# (inputs of O(1), sums of up to a few hundred terms) cost a few units each;
# 64 leaves the margin of a different summation order on another CPU.
LAYER_ULPS = 64
# A whole model (several blocks, norms, the output matmul over the vocabulary)
# against another float32 run of it (a SavedModel, a compiled step, a reloaded
# copy): rounding compounds through the blocks.
MODEL_ULPS = 256
# A peer's float32 error against the float64 run may be this many units of
# the output's scale before the float64 run itself is in doubt: the tiny
# KerasHub presets measured 3 to 370 on AVX-512 and AVX2 (370: gemma3_plain
# while its random attention kernels were drawn several times too large;
# 8 to 37 since `random_presets` draws them with their fan-in).
PEER_ULPS = 2048
# How much further from the float64 run than the peer's float32 result
# tf_mha's float32 result may be: measured ratios were 0.2 to 1.8 (over 8
# prompt batches of gemma3_plain on AVX2). The ratio only means something
# where the model is well conditioned: with near one-hot attention it ranged
# 0.19 to 16.5 over the same batches, rounding deciding which key won.
PEER_FACTOR = 4.0


def scale(reference):
  """The largest magnitude in `reference` (at least 1e-30): what a float32
  result of that size is rounded against."""
  return max(float(np.max(np.abs(np.asarray(reference, np.float64)))), 1e-30)


def atol(reference, ulps):
  """`ulps` units of float32 rounding of `reference`'s scale."""
  return ulps * EPS * scale(reference)


def joint_scale(arrays):
  """The largest magnitude over `arrays`: the scale of a set of results
  computed together (a layer's gradients, where one may be zero in exact
  arithmetic and carry only the others' rounding)."""
  return max(scale(a) for a in arrays)


def assert_close(actual, reference, ulps, msg="", scale_of=None):
  """`actual` within `ulps` float32 units of the scale of `scale_of` (a
  number), default `reference`'s."""
  size = scale(reference) if scale_of is None else scale_of
  np.testing.assert_allclose(
      np.asarray(actual, np.float64), np.asarray(reference, np.float64),
      rtol=0, atol=ulps * EPS * size, err_msg=msg)


def peer_bound(peer32, truth64, factor=PEER_FACTOR, floor_ulps=16):
  """The bound on tf_mha's float32 error against `truth64` (a float64 run of
  the same weights): `factor` times the peer's float32 error on this CPU, at
  least `floor_ulps` units. Fails if the peer itself is more than `PEER_ULPS`
  from the float64 run (then the float64 run, not rounding, differs)."""
  truth64 = np.asarray(truth64, np.float64)
  peer_error = float(np.max(np.abs(np.asarray(peer32, np.float64) - truth64)))
  limit = atol(truth64, PEER_ULPS)
  if peer_error > limit:
    raise AssertionError(
        f"the peer's float32 result is {peer_error:.3g} from the float64 run, "
        f"more than float32 rounding explains ({limit:.3g}): the float64 run "
        "computes something else")
  return max(factor * peer_error, atol(truth64, floor_ulps))


def assert_as_accurate_as_peer(ours32, peer32, truth64, msg=""):
  """`ours32` no further from `truth64` than `peer_bound` allows."""
  bound = peer_bound(peer32, truth64)
  np.testing.assert_allclose(
      np.asarray(ours32, np.float64), np.asarray(truth64, np.float64), rtol=0,
      atol=bound, err_msg=f"{msg} (bound {bound:.3g}: "
      f"{PEER_FACTOR:g} x the peer's float32 error)")
  return bound


def greedy_margins(logits64, tokens):
  """For each position, how far the float64 logit of `tokens` (the chosen
  token) stands above the best other one; negative where it is not the
  argmax. `logits64` `[..., V]`, `tokens` `[...]`."""
  logits64 = np.asarray(logits64, np.float64)
  tokens = np.asarray(tokens)
  chosen = np.take_along_axis(logits64, tokens[..., None], -1)[..., 0]
  others = logits64.copy()
  np.put_along_axis(others, tokens[..., None], -np.inf, -1)
  return chosen - others.max(-1)
