"""Rotary position embeddings (issue 26): the op against a float64 NumPy
reference and KerasHub's `RotaryEmbedding`, the layers against the
reference and KerasHub's Llama attention on shared weights, cached decoding
against the full causal recompute (eager and XLA), left padding and packed
rows."""

import os

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

import tf_mha
from tests import bounds
from tests import reference
from tf_mha.export import tflite

_N, _K, _H, _D = 4, 2, 8, 16


def _rotate(x, positions, max_wavelength=10000.0, scaling_factor=1.0):
  """float64 reference from the definition: feature pairs `(i, i + H/2)` as
  complex numbers, multiplied by `exp(i * position * w_i)`, with
  `w_i = max_wavelength ** (-2 i / H)`."""
  x = np.asarray(x, np.float64)
  half = x.shape[-1] // 2
  w = max_wavelength ** (-2.0 * np.arange(half) / x.shape[-1])
  angle = np.asarray(positions, np.float64)[..., None] / scaling_factor * w
  angle = angle.reshape(angle.shape[:2] + (1,) * (x.ndim - 3) + (half,))
  z = (x[..., :half] + 1j * x[..., half:]) * np.exp(1j * angle)
  return np.concatenate([z.real, z.imag], -1)


def _gqa_reference(weights, x, positions, causal=True, mask=None):
  """GQA without biases, queries and keys rotated, in float64."""
  wq, wk, wv, wo = (np.asarray(w, np.float64) for w in weights)
  x = np.asarray(x, np.float64)
  q = _rotate(np.einsum("btd,dnh->btnh", x, wq), positions)
  k = _rotate(np.einsum("btd,dkh->btkh", x, wk), positions)
  v = np.einsum("btd,dkh->btkh", x, wv)
  repeat = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, repeat, axis=2), np.repeat(v, repeat, axis=2)
  out, _ = reference.attention(q, k, v, mask=mask, causal=causal)
  return np.einsum("btnh,nhd->btd", out, wo)


def _layer(cls=tf_mha.GroupedQueryAttention, **kwargs):
  tf.keras.utils.set_random_seed(3)
  if cls is tf_mha.MultiHeadAttention:
    layer = cls(num_heads=_N, key_dim=_H, use_bias=False,
                rope_max_wavelength=10000, **kwargs)
  else:
    layer = cls(head_dim=_H, num_query_heads=_N, num_key_value_heads=_K,
                use_bias=False, rope_max_wavelength=10000, **kwargs)
  layer(tf.zeros([1, 2, _D]), tf.zeros([1, 2, _D]))
  return layer


def _inputs(batch=2, length=9, seed=0):
  return np.random.default_rng(seed).standard_normal([batch, length, _D]).astype(
      np.float32)


class RotaryOpTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(
      ("per_row", np.array([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]]), 10000.0, 1.0),
      ("shared", np.arange(5), 500.0, 2.0),
      ("float_positions", np.array([[0.5, 1.5, 2.5, 3.5, 4.5]] * 2), 10000.0, 1.0))
  def test_matches_the_float64_reference(self, positions, wavelength, scaling):
    x = np.random.default_rng(1).standard_normal([2, 5, 3, 8]).astype(np.float32)
    got = tf_mha.rotary_embedding(x, positions, wavelength, scaling)
    self.assertEqual(got.dtype, tf.float32)
    want = _rotate(x, np.broadcast_to(positions, [2, 5]), wavelength, scaling)
    bounds.assert_close(got, want, bounds.LAYER_ULPS)
    x64 = tf_mha.rotary_embedding(x.astype(np.float64), positions, wavelength, scaling)
    self.assertAllClose(x64, want, atol=1e-12, rtol=0)
    half = tf_mha.rotary_embedding(tf.constant(x, tf.float16), positions, wavelength,
                                   scaling)
    self.assertEqual(half.dtype, tf.float16)
    self.assertAllClose(half, want, atol=5e-3, rtol=0)

  def test_matches_keras_hub(self):
    import keras_hub  # pylint: disable=g-import-not-at-top
    x = np.random.default_rng(2).standard_normal([2, 6, 3, 8]).astype(np.float32)
    positions = np.array([[0, 1, 2, 3, 4, 5], [4, 5, 6, 7, 8, 9]])
    want = keras_hub.layers.RotaryEmbedding()(x, positions=positions)
    bounds.assert_close(tf_mha.rotary_embedding(x, positions), want, bounds.LAYER_ULPS)
    want = keras_hub.layers.RotaryEmbedding(max_wavelength=500, scaling_factor=4.0)(
        x, start_index=3)
    bounds.assert_close(tf_mha.rotary_embedding(x, np.arange(6) + 3, 500, 4.0), want,
                        bounds.LAYER_ULPS)

  def test_scores_depend_on_the_distance_only(self):
    rng = np.random.default_rng(3)
    q, k = (rng.standard_normal([1, 6, 2, 8]).astype(np.float32) for _ in range(2))
    scores = lambda shift: tf.einsum(
        "btnh,bsnh->bnts", tf_mha.rotary_embedding(q, np.arange(6) + shift),
        tf_mha.rotary_embedding(k, np.arange(6) + shift))
    bounds.assert_close(scores(0), scores(37), bounds.LAYER_ULPS)
    self.assertNotAllClose(scores(0), tf.einsum("btnh,bsnh->bnts", q, k), atol=1e-2)

  def test_bad_arguments_are_named(self):
    for args, pattern in (
        ((np.ones([1, 3, 2, 7]), np.arange(3)), "even head size"),
        ((np.ones([3, 8]), np.arange(3)), "`x` must be"),
        ((np.ones([1, 3, 2, 8]), np.arange(3), 0), "`max_wavelength`"),
        ((np.ones([1, 3, 2, 8]), np.arange(3), 10000.0, -1.0), "`scaling_factor`"),
        ((np.ones([1, 3, 2, 8]), np.arange(3), 10000.0, 1.0, (8.0, 1.0, 4.0)),
         r"`llama3_scaling` must be \(factor, .* Received: llama3_scaling=\(8.0"),
        ((np.ones([1, 3, 2, 8]), np.arange(3), 10000.0, 1.0, (8.0, -1.0, 4.0, 8192)),
         r"`llama3_scaling\[1\]` must be a positive number. Received: "
         r"llama3_scaling\[1\]=-1.0"),
        ((np.ones([1, 3, 2, 8]), np.arange(3), 10000.0, 1.0, (8.0, 4.0, 4.0, 8192)),
         r"`llama3_scaling` needs high_freq_factor > low_freq_factor")):
      with self.assertRaisesRegex(ValueError, pattern):
        tf_mha.rotary_embedding(*args)

  def test_compiles_and_converts_to_builtins(self):
    fn = tf.function(lambda x, p: tf_mha.rotary_embedding(x, p), input_signature=[
        tf.TensorSpec([1, None, 2, 8]), tf.TensorSpec([1, None], tf.int32)])
    x = np.random.default_rng(4).standard_normal([1, 5, 2, 8]).astype(np.float32)
    positions = np.arange(5, dtype=np.int32)[None] + 3
    bounds.assert_close(tf.function(fn, jit_compile=True)(x, positions),
                        _rotate(x, positions), bounds.LAYER_ULPS)
    module = tf.Module()
    module.fn = fn
    path = os.path.join(self.get_temp_dir(), "rotary")
    tf.saved_model.save(module, path, signatures={"rotate": fn})
    converter = tf.lite.TFLiteConverter.from_saved_model(path)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    model = converter.convert()
    self.assertIn("SIN", tflite.operators(model))
    got = tflite.run(model, "rotate", {"x": x, "p": positions})
    bounds.assert_close(list(got.values())[0], _rotate(x, positions), bounds.LAYER_ULPS)


class RotaryLayerTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(("gqa", tf_mha.GroupedQueryAttention),
                                  ("mha", tf_mha.MultiHeadAttention))
  def test_layer_matches_the_float64_reference(self, cls):
    layer = _layer(cls)
    x = _inputs()
    weights = layer.get_weights()  # MultiHeadAttention: GQA with K = N
    got = layer(x, x, use_causal_mask=True)
    bounds.assert_close(got, _gqa_reference(weights, x, np.arange(9)[None].repeat(2, 0)),
                        bounds.LAYER_ULPS)
    positions = np.array([np.arange(9) + 3, np.arange(9) + 10])
    got = layer(x, x, use_causal_mask=True, positions=positions)
    bounds.assert_close(got, _gqa_reference(weights, x, positions), bounds.LAYER_ULPS)

  def test_matches_keras_hub_llama_attention(self):
    from keras_hub.src.models.llama import llama_attention  # pylint: disable=g-import-not-at-top
    # Llama's head size is D / N: inputs of D = N * H.
    x = np.random.default_rng(5).standard_normal([2, 9, _N * _H]).astype(np.float32)
    llama = llama_attention.LlamaAttention(num_query_heads=_N, num_key_value_heads=_K,
                                           rope_max_wavelength=10000)
    causal = np.tril(np.ones([9, 9], bool))[None].repeat(2, 0)
    want = llama(x, attention_mask=causal)
    layer = tf_mha.GroupedQueryAttention(
        head_dim=_H, num_query_heads=_N, num_key_value_heads=_K, use_bias=False,
        rope_max_wavelength=10000)
    layer(x, x)
    layer.set_weights([np.asarray(w) for w in llama.get_weights()])
    bounds.assert_close(layer(x, x, use_causal_mask=True), want, bounds.LAYER_ULPS)
    # Llama's cached call: prefill 6 tokens, then one at slot 6.
    cache = np.zeros([2, 2, 12, _K, _H], np.float32)
    over_cache = np.tril(np.ones([6, 12], bool))[None].repeat(2, 0)
    want, want_cache = llama(x[:, :6], attention_mask=over_cache, cache=cache,
                             cache_update_index=0)
    got, got_cache = layer(x[:, :6], x[:, :6], cache=tf.constant(cache),
                           cache_update_index=0)
    bounds.assert_close(got, want, bounds.LAYER_ULPS)
    bounds.assert_close(got_cache, want_cache, bounds.LAYER_ULPS)  # rotated keys, values

  @parameterized.named_parameters(
      ("gqa_eager", tf_mha.GroupedQueryAttention, False, False),
      ("gqa_xla", tf_mha.GroupedQueryAttention, True, False),
      ("gqa_xla_variable", tf_mha.GroupedQueryAttention, True, True),
      ("mha_xla", tf_mha.MultiHeadAttention, True, False))
  def test_cached_decoding_equals_the_full_recompute(self, cls, jit, variable):
    layer = _layer(cls)
    x = _inputs(length=10)
    full = layer(x, x, use_causal_mask=True)
    heads = _K if cls is tf_mha.GroupedQueryAttention else _N
    zeros = tf.zeros([2, 2, 16, heads, _H])
    cache = tf.Variable(zeros) if variable else zeros

    def step(tokens, cache, index):
      return layer(tokens, tokens, cache=cache, cache_update_index=index)

    step = tf.function(step, jit_compile=True) if jit else step
    outs = []
    out, cache = step(x[:, :6], cache, tf.constant(0))
    outs.append(out)
    for index in range(6, 10):
      out, cache = step(x[:, index:index + 1], cache, tf.constant(index))
      outs.append(out)
    bounds.assert_close(tf.concat(outs, 1), full, bounds.LAYER_ULPS)

  def test_left_padded_rows_equal_their_unpadded_selves(self):
    layer = _layer()
    x = _inputs(batch=1, length=5)
    alone = layer(x, x, use_causal_mask=True)
    pad = 3
    padded = np.concatenate([np.zeros([1, pad, _D], np.float32), x], 1)
    cache = tf.zeros([1, 2, 8, _K, _H])
    positions = np.arange(-pad, 5)[None]  # each token's place in its own row
    in_row = (np.arange(8) >= pad)[None]
    out, _ = layer(padded, padded, cache=cache, cache_update_index=0,
                   positions=positions, value_mask=in_row)
    bounds.assert_close(out[:, pad:], alone, bounds.LAYER_ULPS)

  def test_packed_rows_restart_positions_per_segment(self):
    layer = _layer()
    x = _inputs(batch=1, length=9)
    ids = np.array([[1, 1, 1, 1, 2, 2, 2, 2, 2]])
    packed = layer(x, x, use_causal_mask=True, segment_ids=ids)
    for start, end in ((0, 4), (4, 9)):
      alone = layer(x[:, start:end], x[:, start:end], use_causal_mask=True)
      bounds.assert_close(packed[:, start:end], alone, bounds.LAYER_ULPS)

  def test_config_round_trip_and_errors(self):
    layer = _layer(rope_scaling_factor=2.0)
    config = layer.get_config()
    self.assertEqual((config["rope_max_wavelength"], config["rope_scaling_factor"]),
                     (10000.0, 2.0))
    clone = tf_mha.GroupedQueryAttention.from_config(config)
    clone.set_weights(layer.get_weights())
    x = _inputs()
    self.assertAllClose(clone(x, x), layer(x, x))
    plain = tf_mha.GroupedQueryAttention(head_dim=_H, num_query_heads=_N,
                                         num_key_value_heads=_K)
    self.assertNotIn("rope_max_wavelength", plain.get_config())
    with self.assertRaisesRegex(ValueError, "`positions` needs a layer built with"):
      plain(x, x, positions=np.arange(9)[None])
    with self.assertRaisesRegex(ValueError, "`rope_max_wavelength` must be"):
      tf_mha.GroupedQueryAttention(head_dim=_H, num_query_heads=_N,
                                   num_key_value_heads=_K, rope_max_wavelength=-1)
    for scaling, pattern in (("8,1,4,8192", r"`rope_llama3_scaling` must be \(factor"),
                             ((8.0, 1.0, 1.0, 8192), r"`rope_llama3_scaling` needs high"),
                             ((8.0, 1.0, 4.0, 0), r"`rope_llama3_scaling\[3\]` must be")):
      with self.assertRaisesRegex(ValueError, pattern):
        tf_mha.GroupedQueryAttention(head_dim=_H, num_query_heads=_N,
                                     num_key_value_heads=_K, rope_max_wavelength=1e4,
                                     rope_llama3_scaling=scaling)
    with self.assertRaisesRegex(ValueError, "`rope_llama3_scaling` needs `rope_max_wavelength`"):
      tf_mha.GroupedQueryAttention(head_dim=_H, num_query_heads=_N, num_key_value_heads=_K,
                                   rope_llama3_scaling=(8.0, 1.0, 4.0, 8192))


if __name__ == "__main__":
  tf.test.main()
