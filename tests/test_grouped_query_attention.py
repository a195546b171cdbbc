"""GroupedQueryAttention against Keras 3's layer, and the key/value cache of
both layers against recomputing the whole prefix."""

import os
import tempfile

import numpy as np
import tensorflow as tf
import tf_keras
from absl.testing import parameterized

import tf_mha
from tf_mha import training

from tests import bounds

training.logical_cpus(2)  # before any op (tests/conftest.py does it under pytest)

_B, _T, _S, _D, _N, _H = 2, 7, 9, 16, 4, 8


def _normal(*shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _keras3():
  import keras  # pylint: disable=g-import-not-at-top
  return keras


class KerasParityTest(tf.test.TestCase, parameterized.TestCase):
  """Same weights as `keras.layers.GroupQueryAttention`: same outputs and
  scores within 1e-5."""

  @parameterized.named_parameters(
      *[(f"k{k}_{case}", k, case) for k in (4, 2, 1)
        for case in ("plain", "causal", "masks", "window", "gate", "cross")])
  def test_matches_keras3(self, kv_heads, case):
    keras = _keras3()
    q, v = _normal(_B, _T, _D), _normal(_B, _S if case == "cross" else _T, _D, seed=1)
    options = dict(head_dim=_H, num_query_heads=_N, num_key_value_heads=kv_heads,
                   use_gate=case == "gate",
                   sliding_window=3 if case == "window" else None)
    call = dict(use_causal_mask=case in ("causal", "window"))
    if case == "masks":
      call.update(attention_mask=np.random.default_rng(2).random((_B, _T, _T)) < 0.7,
                  query_mask=np.array([[1] * _T, [1] * (_T - 2) + [0] * 2], bool),
                  value_mask=np.array([[1] * _T, [1] * (_T - 3) + [0] * 3], bool))
    theirs = keras.layers.GroupQueryAttention(**options)
    want = theirs(q, v, **call)
    # Keras 3 itself gives rows with no visible key zero probabilities (and
    # another output) when asked for the scores; without, it attends
    # uniformly, as tf.keras and tf_mha do: compare the scores elsewhere.
    _, want_scores = theirs(q, v, return_attention_scores=True, **call)
    seen = np.any(np.asarray(want_scores) > 0, axis=-1, keepdims=True)
    ours = tf_mha.GroupedQueryAttention(**options)
    ours(q, v)
    self.assertEqual([w.shape for w in ours.weights],
                     [tuple(w.shape) for w in theirs.weights])
    ours.set_weights(theirs.get_weights())
    got, scores = ours(q, v, return_attention_scores=True, **call)
    bounds.assert_close(got, np.asarray(want), bounds.LAYER_ULPS)
    bounds.assert_close(np.where(seen, scores, 0), np.asarray(want_scores),
                        bounds.LAYER_ULPS)
    compiled = tf.function(lambda a, b: ours(a, b, **call), jit_compile=True)
    bounds.assert_close(compiled(q, v), np.asarray(want), bounds.LAYER_ULPS)
    flash = tf_mha.GroupedQueryAttention(flash_attention=True, **options)
    flash(q, v)
    flash.set_weights(theirs.get_weights())
    bounds.assert_close(flash(q, v, **call), np.asarray(want), bounds.LAYER_ULPS)

  def test_gradients_match_numeric_float64(self):
    layer = tf_mha.GroupedQueryAttention(head_dim=4, num_query_heads=4,
                                         num_key_value_heads=2, dtype="float64",
                                         sliding_window=3)
    x = tf.constant(_normal(1, 5, 6).astype(np.float64))
    layer(x, x)
    theoretical, numerical = tf.test.compute_gradient(
        lambda a: layer(a, a, use_causal_mask=True), [x])
    self.assertAllClose(theoretical[0], numerical[0], atol=1e-6, rtol=1e-6)  # float64
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(layer(x, x, use_causal_mask=True) ** 2)
    for g in tape.gradient(loss, layer.trainable_variables):
      self.assertTrue(np.all(np.isfinite(g.numpy())))

  def test_heads_must_divide(self):
    with self.assertRaisesRegex(ValueError, "num_query_heads=6.*num_key_value_heads=4"):
      tf_mha.GroupedQueryAttention(head_dim=4, num_query_heads=6,
                                   num_key_value_heads=4)
    with self.assertRaisesRegex(ValueError, "head_dim"):
      tf_mha.GroupedQueryAttention(head_dim=0, num_query_heads=4,
                                   num_key_value_heads=2)

  def test_config_and_saving_round_trip(self):
    layer = tf_mha.GroupedQueryAttention(head_dim=4, num_query_heads=4,
                                         num_key_value_heads=2, use_gate=True,
                                         sliding_window=3, seed=5)
    config = layer.get_config()
    for key in ("head_dim", "num_query_heads", "num_key_value_heads", "use_gate",
                "sliding_window", "seed", "dropout", "kernel_initializer"):
      self.assertIn(key, config)
    self.assertEqual(tf_mha.GroupedQueryAttention.from_config(config).get_config(),
                     config)
    inp = tf_keras.Input((5, 8))
    model = tf_keras.Model(inp, tf_mha.GroupedQueryAttention(
        head_dim=4, num_query_heads=4, num_key_value_heads=1)(
            inp, inp, use_causal_mask=True))
    x = _normal(2, 5, 8)
    want = model(x)
    for name in ("m.keras", "m.h5", "m_tf"):
      path = os.path.join(tempfile.mkdtemp(dir=self.get_temp_dir()), name)
      model.save(path)
      bounds.assert_close(tf_keras.models.load_model(path)(x), want, bounds.LAYER_ULPS)


class DeploymentTest(tf.test.TestCase):
  """As for MultiHeadAttention: TFLite builtins (with a cache too), and
  MirroredStrategy replicas."""

  def _runner(self, model, signature=None):
    from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top
    path = os.path.join(tempfile.mkdtemp(dir=self.get_temp_dir()), "m")
    tf.saved_model.save(model, path, signatures=signature)
    converter = tf.lite.TFLiteConverter.from_saved_model(path)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    flatbuffer = converter.convert()
    runner = litert.Interpreter(model_content=flatbuffer).get_signature_runner()
    return flatbuffer, runner

  def test_causal_model_converts_to_builtins(self):
    inputs = tf_keras.Input((None, _D))
    outputs = tf_mha.GroupedQueryAttention(
        head_dim=_H, num_query_heads=_N, num_key_value_heads=2)(
            inputs, inputs, use_causal_mask=True)
    model = tf_keras.Model(inputs, outputs)
    _, runner = self._runner(model)
    name = list(runner.get_input_details())[0]
    for length in (3, 11):
      x = _normal(2, length, _D, seed=length)
      bounds.assert_close(list(runner(**{name: x}).values())[0], model(x),
                          bounds.LAYER_ULPS)

  def test_cached_decode_step_converts_to_builtins(self):
    layer = tf_mha.GroupedQueryAttention(head_dim=_H, num_query_heads=_N,
                                         num_key_value_heads=2)
    cache0 = tf.zeros([1, 2, 16, 2, _H])
    layer(tf.zeros([1, 1, _D]), tf.zeros([1, 1, _D]), cache=cache0,
          cache_update_index=0)
    module = tf.Module()
    module.layer = layer
    module.decode = tf.function(
        lambda x, cache, index: dict(zip(("out", "cache"), layer(
            x, x, cache=cache, cache_update_index=index))),
        input_signature=[tf.TensorSpec([1, 1, _D], tf.float32, name="x"),
                         tf.TensorSpec([1, 2, 16, 2, _H], tf.float32, name="cache"),
                         tf.TensorSpec([], tf.int32, name="index")])
    flatbuffer, runner = self._runner(module, {"decode": module.decode})
    from tf_mha.export import tflite  # pylint: disable=g-import-not-at-top
    ops = tflite.operators(flatbuffer)
    self.assertIn("DYNAMIC_UPDATE_SLICE", ops)
    self.assertEqual([op for op in ops if op.startswith("CUSTOM")], [])
    x = _normal(1, 6, _D)
    cache, lite_cache = cache0, cache0.numpy()
    for i in range(6):
      want, cache = layer(x[:, i:i + 1], x[:, i:i + 1], cache=cache,
                          cache_update_index=i)
      got = runner(x=x[:, i:i + 1], cache=lite_cache, index=np.array(i, np.int32))
      lite_cache = got["cache"]
      bounds.assert_close(got["out"], want, bounds.LAYER_ULPS)

  def test_mirrored_replicas_match_one_device(self):
    strategy = tf.distribute.MirroredStrategy(training.logical_cpus(2))
    x = _normal(4, 6, _D)
    tf_keras.utils.set_random_seed(0)
    single = tf_mha.GroupedQueryAttention(head_dim=_H, num_query_heads=_N,
                                          num_key_value_heads=1)
    want = single(x, x, use_causal_mask=True)
    with strategy.scope():
      mirrored = tf_mha.GroupedQueryAttention(head_dim=_H, num_query_heads=_N,
                                              num_key_value_heads=1)
      mirrored(x[:1], x[:1])
    mirrored.set_weights(single.get_weights())
    per_replica = strategy.run(
        tf.function(lambda a: mirrored(a, a, use_causal_mask=True)),
        args=(strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(x[ctx.replica_id_in_sync_group * 2:
                                      ctx.replica_id_in_sync_group * 2 + 2])),))
    # Gathered on the host: a collective here would share its instance keys
    # with the next MirroredStrategy in this process (test_training's), and
    # TensorFlow aborts that one's all-reduce.
    got = tf.concat(strategy.experimental_local_results(per_replica), 0)
    bounds.assert_close(got, want, bounds.LAYER_ULPS)


class CacheTest(tf.test.TestCase, parameterized.TestCase):
  """Prefill then token-by-token decode equals the uncached causal layer."""

  def _layer(self, kind, window=None, dtype=None):
    tf_keras.utils.set_random_seed(0)
    if kind == "mha":
      return tf_mha.MultiHeadAttention(_N, _H, sliding_window=window, dtype=dtype)
    return tf_mha.GroupedQueryAttention(
        head_dim=_H, num_query_heads=_N, num_key_value_heads=int(kind[3:]),
        sliding_window=window, dtype=dtype)

  def _decode(self, layer, x, step, slots=12, prompt=4, value_mask=None):
    kv_heads = layer._num_key_value_heads  # pylint: disable=protected-access
    cache = tf.zeros([_B, 2, slots, kv_heads, _H], layer.compute_dtype)
    masks = {} if value_mask is None else {"value_mask": value_mask}
    out, cache = step(x[:, :prompt], cache, tf.constant(0), masks)
    outs = [out]
    for i in range(prompt, x.shape[1]):
      out, cache = step(x[:, i:i + 1], cache, tf.constant(i), masks)
      outs.append(out)
    return tf.concat(outs, 1), cache

  @parameterized.named_parameters(
      *[(f"{kind}_{mode}{'_window' if w else ''}", kind, mode, w)
        for kind in ("mha", "gqa4", "gqa2", "gqa1")
        for mode in ("eager", "function", "xla") for w in (None, 3)])
  def test_decode_equals_full_causal(self, kind, mode, window):
    layer = self._layer(kind, window)
    x = tf.constant(_normal(_B, 9, _D))
    value_mask = np.ones((_B, 12), bool)
    value_mask[1, 1] = False  # a padded prompt token
    full = layer(x, x, use_causal_mask=True, value_mask=value_mask[:, :9])

    def step(xi, cache, i, masks):
      return layer(xi, xi, cache=cache, cache_update_index=i, **masks)

    if mode != "eager":
      step = tf.function(step, jit_compile=mode == "xla")
    got, cache = self._decode(layer, x, step, value_mask=value_mask)
    bounds.assert_close(got, full, bounds.LAYER_ULPS)
    # The cache holds the projected keys and values of every token.
    keys = layer.key_dense(x)
    bounds.assert_close(cache[:, 0, :9], keys, bounds.LAYER_ULPS)
    self.assertAllClose(cache[:, 0, 9:], tf.zeros_like(cache[:, 0, 9:]))

  @parameterized.named_parameters(("float16", "mixed_float16", 1e-2),
                                  ("bfloat16", "mixed_bfloat16", 5e-2))
  def test_decode_in_mixed_precision(self, policy, tolerance):
    tf_keras.mixed_precision.set_global_policy(policy)
    try:
      layer = self._layer("gqa2")
      x = tf.constant(_normal(_B, 9, _D))
      full = tf.cast(layer(x, x, use_causal_mask=True), tf.float32)
      step = lambda xi, cache, i, masks: layer(xi, xi, cache=cache,
                                               cache_update_index=i)
      got, _ = self._decode(layer, x, step)
    finally:
      tf_keras.mixed_precision.set_global_policy("float32")
    self.assertAllClose(tf.cast(got, tf.float32), full, atol=tolerance,
                        rtol=tolerance)

  def test_read_only_cache_and_scores(self):
    layer = self._layer("gqa2")
    x = tf.constant(_normal(_B, 6, _D))
    cache = tf.zeros([_B, 2, 6, 2, _H])
    _, cache = layer(x, x, cache=cache, cache_update_index=0)
    out, scores, same = layer(x[:, -1:], x[:, -1:], cache=cache,
                              return_attention_scores=True)
    self.assertAllEqual(same, cache)
    self.assertEqual(scores.shape, (_B, _N, 1, 6))
    bounds.assert_close(out, layer(x[:, -1:], x), bounds.LAYER_ULPS)

  def test_decode_step_compiles_with_static_shapes_and_no_host_transfers(self):
    layer = self._layer("gqa2")
    cache = tf.zeros([1, 2, 64, 2, _H])
    x = tf.constant(_normal(1, 1, _D))
    layer(x, x, cache=cache, cache_update_index=0)
    step = tf.function(lambda xi, c, i: layer(xi, xi, cache=c, cache_update_index=i),
                       jit_compile=True)
    hlo = step.experimental_get_compiler_ir(x, cache, tf.constant(5))(stage="hlo")
    for op in ("send", "recv", "infeed", "outfeed", "custom-call"):
      self.assertNotRegex(hlo, rf"= \S+ {op}\(", op)
    self.assertRegex(hlo, r"dynamic-update-slice\(")
    self.assertNotRegex(hlo, r"\[\?|<=", "dynamic shapes")

  def test_bad_caches_are_named(self):
    layer = self._layer("gqa2")
    x = tf.constant(_normal(_B, 3, _D))
    good = tf.zeros([_B, 2, 8, 2, _H])
    for cache, message in ((tf.zeros([_B, 2, 8, 4, _H]), "cache` must have shape"),
                           (tf.zeros([_B, 8, 2, _H]), "cache` must have shape"),
                           (tf.zeros([_B, 2, 8, 2, _H], tf.float16), "compute dtype"),
                           (tf.zeros([3, 2, 8, 2, _H]), "batch size")):
      with self.assertRaisesRegex(ValueError, message):
        layer(x, x, cache=cache, cache_update_index=0)
    for index in (6, -1, 8):
      with self.assertRaisesRegex(ValueError, f"cache_update_index`={index} does not fit"):
        layer(x, x, cache=good, cache_update_index=index)
    with self.assertRaisesRegex(ValueError, "must be an integer"):
      layer(x, x, cache=good, cache_update_index=1.5)
    with self.assertRaisesRegex(ValueError, "needs a `cache`"):
      layer(x, x, cache_update_index=0)
    nd = tf_mha.MultiHeadAttention(2, 4, attention_axes=(1, 2))
    with self.assertRaisesRegex(ValueError, "one attention axis"):
      nd(tf.ones([1, 3, 3, 8]), tf.ones([1, 3, 3, 8]), cache=good,
         cache_update_index=0)
    # Under XLA the index is a run-time value: an overflow is NaN, not a
    # silently clamped write.
    step = tf.function(lambda i: layer(x, x, cache=good, cache_update_index=i)[0],
                       jit_compile=True)
    self.assertTrue(np.all(np.isfinite(step(tf.constant(5)).numpy())))
    self.assertTrue(np.all(np.isnan(step(tf.constant(6)).numpy())))


if __name__ == "__main__":
  tf.test.main()
