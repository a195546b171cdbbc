"""Mixed precision: low-dtype compute, float32 variables and softmax, finite
results for huge logits and fully masked rows, bounded error vs float64."""

import numpy as np
import tensorflow as tf
import tf_keras
from absl import logging
from absl.testing import parameterized

import tf_mha
from tests import reference

# Relative error bounds against the float64 reference (max |error| / max |ref|).
_BOUNDS = {"mixed_float16": 1e-2, "mixed_bfloat16": 5e-2}
_CASES = [(f"{policy}_{'flash' if flash else 'plain'}", policy, flash)
          for policy in _BOUNDS for flash in (False, True)]
# Long enough for the plain path's causal chunks (tf_mha.ops).
_LENGTHS = [(f"{name}_t{t}", policy, flash, t) for name, policy, flash in _CASES
            for t in (37, 300)]


def _normal(*shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def relative_error(policy, flash, *, length=37, causal=True, seed=0):
  """The layer's relative error against the float64 reference under `policy`."""
  tf_keras.mixed_precision.set_global_policy(policy)
  try:
    layer = tf_mha.MultiHeadAttention(4, 16, flash_attention=flash)
    query = _normal(3, length, 32, seed=seed)
    value = _normal(3, length - 14, 32, seed=seed + 1)
    out = layer(query, value, use_causal_mask=causal)
    expected, _ = reference.multi_head_attention(
        layer.get_weights(), query, value, num_heads=4, causal=causal)
  finally:
    tf_keras.mixed_precision.set_global_policy("float32")
  error = np.max(np.abs(out.numpy().astype(np.float64) - expected))
  return out, layer, error / np.max(np.abs(expected))


class MixedPrecisionTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(*_LENGTHS)
  def test_error_against_float64_reference(self, policy, flash, length):
    out, layer, error = relative_error(policy, flash, length=length)
    logging.info("%s flash=%s T=%d: relative error %.3g", policy, flash, length, error)
    print(f"{policy} flash={flash} T={length}: relative error vs float64 {error:.3g}")
    compute = tf.float16 if policy == "mixed_float16" else tf.bfloat16
    self.assertEqual(out.dtype, compute)
    self.assertTrue(all(w.dtype == tf.float32 for w in layer.weights))
    self.assertLess(error, _BOUNDS[policy])

  @parameterized.named_parameters(*_CASES)
  def test_finite_for_huge_logits_and_fully_masked_rows(self, policy, flash):
    tf_keras.mixed_precision.set_global_policy(policy)
    try:
      tf_keras.utils.set_random_seed(0)
      layer = tf_mha.MultiHeadAttention(4, 16, flash_attention=flash)
      mask = np.ones((2, 9, 9), bool)
      mask[:, 3, :] = False  # query 3 sees nothing
      for scale in (1.0, 100.0, 1000.0):
        x = tf.constant(_normal(2, 9, 32) * scale)
        with tf.GradientTape() as tape:
          tape.watch(x)
          out = layer(x, x, attention_mask=mask)
          loss = tf.reduce_sum(tf.cast(out, tf.float32))
        self.assertTrue(np.all(np.isfinite(out.numpy().astype(np.float32))),
                        f"non-finite output at scale {scale}")
        if scale == 1.0:
          # At large scales the true gradients can exceed float16's range;
          # loss scaling is what handles that, not the layer.
          for g in tape.gradient(loss, [x] + layer.trainable_variables):
            self.assertTrue(np.all(np.isfinite(g.numpy().astype(np.float32))))
    finally:
      tf_keras.mixed_precision.set_global_policy("float32")

  def test_float16_logits_beyond_range_are_computed_in_float32(self):
    # Logits of order 1e5 overflow float16; the layer computes them in
    # float32 from its float16 projections. The judge is the float64
    # attention of those same float16 projections: comparing with a float32
    # layer instead fails for some weights, where float16's rounding of the
    # projections (1e-3 relative, ~1e2 on these logits) exceeds the gap
    # between a row's two largest logits and another key wins.
    x = _normal(2, 9, 32) * 1000.0
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    try:
      low = tf_mha.MultiHeadAttention(4, 16)
      out = low(x, x).numpy().astype(np.float64)
      q, k, v = (dense(x).numpy().astype(np.float64) for dense in (
          low.query_dense, low.key_dense, low.value_dense))
    finally:
      tf_keras.mixed_precision.set_global_policy("float32")
    logits = np.einsum("btnh,bsnh->bnts", q, k) / 4.0
    self.assertGreater(np.max(np.abs(logits)), 65504.0)  # beyond float16
    attended, _ = reference.attention(q, k, v)
    attended = attended.astype(np.float16).astype(np.float64)  # the layer's dtype
    kernel, bias = (w.astype(np.float16).astype(np.float64)
                    for w in low.output_dense.get_weights())
    expected = np.einsum("btnh,nhd->btd", attended, kernel) + bias
    self.assertTrue(np.all(np.isfinite(out)))
    self.assertLess(np.max(np.abs(out - expected)) / np.max(np.abs(expected)), 1e-2)

  def test_softmax_runs_in_float32(self):
    # Two logits 1e-3 apart: float16 softmax rounds both probabilities to the
    # same value; float32 keeps them distinct.
    scores = tf.constant([[0.0, 1e-3]], tf.float16)
    probs = tf_mha.ops.masks.masked_softmax(scores, None)
    self.assertEqual(probs.dtype, tf.float16)
    self.assertNotEqual(float(probs[0, 0]), float(probs[0, 1]))


if __name__ == "__main__":
  tf.test.main()
