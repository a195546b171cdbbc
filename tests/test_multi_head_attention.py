"""MultiHeadAttention against the float64 reference and tf_keras' layer."""

import os

import numpy as np
import tensorflow as tf
import tf_keras
from absl.testing import parameterized

import tf_mha
from tests import bounds
from tests import reference

_RNG = np.random.default_rng(1234)


def _normal(*shape):
  return _RNG.normal(size=shape).astype(np.float32)


def _pair(**kwargs):
  """Our layer and tf_keras' on the same weights, both built."""
  return tf_mha.MultiHeadAttention(**kwargs), tf_keras.layers.MultiHeadAttention(**kwargs)


def _share(ours, theirs, query, value, key=None):
  theirs(query, value, key)
  ours(query, value, key)
  ours.set_weights(theirs.get_weights())


# name, layer kwargs, query shape, value shape, key shape (None: = value).
# Sizes are distinct primes where they can be, so swapped axes show.
_GRID = (
    ("self_attention", dict(num_heads=2, key_dim=3), (2, 5, 7), None, None),
    ("cross_t_ne_s", dict(num_heads=3, key_dim=5), (2, 5, 7), (2, 11, 7), None),
    ("batch1_len1", dict(num_heads=2, key_dim=3), (1, 1, 7), (1, 3, 7), None),
    ("value_dim", dict(num_heads=2, key_dim=3, value_dim=5), (2, 5, 7), (2, 3, 11), None),
    ("separate_key", dict(num_heads=2, key_dim=3), (2, 5, 7), (2, 3, 11), (2, 3, 13)),
    ("no_bias", dict(num_heads=2, key_dim=3, use_bias=False), (2, 5, 7), (2, 3, 7), None),
    ("output_int", dict(num_heads=2, key_dim=3, output_shape=13), (2, 5, 7), (2, 3, 7), None),
    ("output_tuple", dict(num_heads=2, key_dim=3, output_shape=(2, 3)), (2, 5, 7), (2, 3, 7), None),
    ("4d_axis2", dict(num_heads=2, key_dim=3, attention_axes=(2,)), (2, 3, 5, 7), (2, 3, 11, 7), None),
    ("5d_axes23", dict(num_heads=3, key_dim=2, attention_axes=(2, 3)), (2, 3, 5, 2, 7), (2, 3, 2, 3, 7), None),
    ("5d_axes13", dict(num_heads=2, key_dim=3, attention_axes=(1, 3)), (2, 3, 5, 2, 7), (2, 2, 5, 3, 7), None),
    ("6d_default", dict(num_heads=2, key_dim=2), (1, 2, 3, 2, 5), (1, 3, 2, 2, 5), None),
    ("negative_axis", dict(num_heads=2, key_dim=3, attention_axes=-2), (2, 3, 5, 7), (2, 3, 11, 7), None),
)


class ParityTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(*_GRID)
  def test_matches_reference_and_tf_keras(self, kwargs, q_shape, v_shape, k_shape):
    query = _normal(*q_shape)
    value = query if v_shape is None else _normal(*v_shape)
    key = None if k_shape is None else _normal(*k_shape)
    ours, theirs = _pair(**kwargs)
    theirs_kwargs = dict(kwargs)
    if "attention_axes" in kwargs and kwargs["attention_axes"] == -2:
      theirs_kwargs["attention_axes"] = (q_shape.__len__() - 2,)
      theirs = tf_keras.layers.MultiHeadAttention(**theirs_kwargs)
    _share(ours, theirs, query, value, key)
    out, scores = ours(query, value, key, return_attention_scores=True)
    ref_out, ref_scores = reference.multi_head_attention(
        ours.get_weights(), query, value, key, num_heads=kwargs["num_heads"],
        attention_axes=kwargs.get("attention_axes"),
        use_bias=kwargs.get("use_bias", True))
    bounds.assert_close(out, ref_out, bounds.LAYER_ULPS)
    bounds.assert_close(scores, ref_scores, bounds.LAYER_ULPS)
    their_out, their_scores = theirs(query, value, key, return_attention_scores=True)
    bounds.assert_close(out, their_out, bounds.LAYER_ULPS)
    bounds.assert_close(scores, their_scores, bounds.LAYER_ULPS)
    self.assertEqual([w.shape for w in ours.weights], [w.shape for w in theirs.weights])
    self.assertEqual([w.name.split("/", 1)[1] for w in ours.weights],
                     [w.name.split("/", 1)[1] for w in theirs.weights])


class LongCausalTest(tf.test.TestCase, parameterized.TestCase):
  """Lengths where the plain path splits causal queries into chunks under
  XLA (not without it), and flash; with a padding mask (and so fully masked
  rows) and T != S."""

  @parameterized.named_parameters(
      ("self", (2, 300, 16), None, None),
      ("cross_t_gt_s", (1, 300, 16), (1, 270, 16), (1, 270)),
      ("padding_mask", (2, 290, 16), None, (2, 290)),
  )
  def test_matches_tf_keras(self, q_shape, v_shape, key_mask_shape):
    query = _normal(*q_shape)
    value = query if v_shape is None else _normal(*v_shape)
    mask = None
    if key_mask_shape is not None:
      keep = _RNG.random(key_mask_shape) > 0.2
      keep[:, :3] = False  # the first queries see no key at all
      mask = np.broadcast_to(keep[:, None, :], (q_shape[0], q_shape[1], keep.shape[1]))
    ours, theirs = _pair(num_heads=2, key_dim=8)
    _share(ours, theirs, query, value)
    expected = theirs(query, value, attention_mask=mask, use_causal_mask=True)
    xla = tf.function(jit_compile=True)(
        lambda q, v: ours(q, v, attention_mask=mask, use_causal_mask=True))
    for flash in (None, True):
      ours._flash_attention = flash
      got = ours(query, value, attention_mask=mask, use_causal_mask=True)
      bounds.assert_close(got, expected, bounds.LAYER_ULPS, msg=f"flash={flash}")
    ours._flash_attention = None
    bounds.assert_close(xla(query, value), expected, bounds.LAYER_ULPS)

  def test_functional_model_with_dynamic_batch_mask(self):
    # T=520 is chunked without XLA too; the mask's batch axis is unknown
    # when the model is built.
    x = _normal(2, 520, 16)
    keep = _RNG.random((2, 520, 520)) > 0.2
    ours, theirs = _pair(num_heads=2, key_dim=8)
    _share(ours, theirs, x, x)
    self.assertLen(tf_mha.ops.chunked.causal_chunks(tf.zeros([2, 520, 2, 8]),
                                             tf.zeros([2, 520, 2, 8]), None), 2)
    inputs = tf_keras.Input((520, 16))
    mask = tf_keras.Input((520, 520), dtype="bool")
    model = tf_keras.Model(
        [inputs, mask],
        ours(inputs, inputs, attention_mask=mask, use_causal_mask=True))
    expected = theirs(x, x, attention_mask=keep, use_causal_mask=True)
    bounds.assert_close(model.predict([x, keep], verbose=0), expected, bounds.LAYER_ULPS)


class HighDimMaskTest(tf.test.TestCase, parameterized.TestCase):
  """tf.keras inserts missing mask axes before the T axes, not numpy-style."""

  @parameterized.named_parameters(
      ("4d_mask_batch_only", (2,), (3, 3, 4, 8), (3, 3, 2, 8), (3, 4, 2)),
      ("4d_mask_with_heads", (2,), (3, 3, 4, 8), (3, 3, 2, 8), (3, 3, 2, 4, 2)),
      ("5d_2d_attention", (2, 3), (3, 5, 3, 4, 8), (3, 5, 3, 2, 8), (3, 3, 4, 3, 2)),
      ("5d_full_mask", (2, 3), (3, 5, 3, 4, 8), (3, 5, 3, 2, 8), (3, 5, 3, 4, 3, 2)))
  def test_matches_tf_keras(self, axes, q_shape, v_shape, mask_shape):
    ours, theirs = _pair(num_heads=2, key_dim=2, attention_axes=axes)
    query, value = _normal(*q_shape), _normal(*v_shape)
    _share(ours, theirs, query, value)
    mask = _RNG.random(mask_shape) > 0.3
    # Every query sees its first key: on a row with no visible key, tf.keras'
    # softmax over several axes sums the values instead of averaging them
    # (log-sum-exp rounds away at -1e9); that row is tested against the
    # float64 reference below instead.
    mask[(Ellipsis,) + (0,) * len(axes)] = True
    bounds.assert_close(ours(query, value, attention_mask=mask),
                        theirs(query, value, attention_mask=mask), bounds.LAYER_ULPS)

  def test_fully_masked_query_with_two_attention_axes_averages(self):
    layer = tf_mha.MultiHeadAttention(2, 2, attention_axes=(2, 3))
    query, value = _normal(3, 5, 3, 4, 8), _normal(3, 5, 3, 2, 8)
    mask = np.random.default_rng(5).random((3, 5, 3, 4, 3, 2)) > 0.3
    mask[0, 3, 1, 1] = False  # this query sees no key
    out = layer(query, value, attention_mask=mask)
    expected, _ = reference.multi_head_attention(
        layer.get_weights(), query, value, num_heads=2, attention_axes=(2, 3),
        mask=mask)
    bounds.assert_close(out, expected, bounds.LAYER_ULPS)

  def test_compute_output_shape_errors_match_tf_keras(self):
    layer = tf_mha.MultiHeadAttention(4, 2)
    for shapes in (((None, 40, 80), (None, 20, 70), None),
                   ((None, 40, 80), (None, 20, 80), (None, 10, 70))):
      with self.assertRaisesRegex(ValueError, "must be equal"):
        layer.compute_output_shape(*shapes)


class MaskTest(tf.test.TestCase, parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.query = _normal(3, 5, 7)
    self.value = _normal(3, 6, 7)
    self.ours, self.theirs = _pair(num_heads=2, key_dim=4)
    _share(self.ours, self.theirs, self.query, self.value)

  def _ref(self, mask=None, causal=False, value=None):
    value = self.value if value is None else value
    return reference.multi_head_attention(
        self.ours.get_weights(), self.query, value, num_heads=2, mask=mask,
        causal=causal)

  @parameterized.named_parameters(
      ("full", (3, 5, 6)), ("batch_broadcast", (1, 5, 6)),
      ("query_broadcast", (3, 1, 6)), ("rank2", (5, 6)))
  def test_attention_mask_broadcasts(self, shape):
    mask = _RNG.random(shape) > 0.4
    out, scores = self.ours(self.query, self.value, attention_mask=mask,
                            return_attention_scores=True)
    ref_out, ref_scores = self._ref(mask=mask)
    bounds.assert_close(out, ref_out, bounds.LAYER_ULPS)
    bounds.assert_close(scores, ref_scores, bounds.LAYER_ULPS)
    bounds.assert_close(out, self.theirs(self.query, self.value, attention_mask=mask),
                        bounds.LAYER_ULPS)

  def test_fully_masked_row_is_uniform_and_finite(self):
    mask = np.ones((3, 5, 6), bool)
    mask[0, 2, :] = False
    query = tf.constant(self.query)
    with tf.GradientTape() as tape:
      tape.watch(query)
      out, scores = self.ours(query, self.value, attention_mask=mask,
                              return_attention_scores=True)
      loss = tf.reduce_sum(out)
    grads = tape.gradient(loss, [query] + self.ours.trainable_weights)
    bounds.assert_close(scores[0, :, 2], np.full((2, 6), 1 / 6), bounds.LAYER_ULPS)
    bounds.assert_close(out, self._ref(mask=mask)[0], bounds.LAYER_ULPS)
    for g in grads:
      self.assertTrue(np.all(np.isfinite(g)))

  def test_causal_self_attention(self):
    query = self.query
    ours, theirs = _pair(num_heads=2, key_dim=4)
    _share(ours, theirs, query, query)
    out = ours(query, query, use_causal_mask=True)
    ref_out, _ = reference.multi_head_attention(
        ours.get_weights(), query, query, num_heads=2, causal=True)
    bounds.assert_close(out, ref_out, bounds.LAYER_ULPS)
    bounds.assert_close(out, theirs(query, query, use_causal_mask=True),
                        bounds.LAYER_ULPS)

  def test_causal_cross_attention_t_ne_s(self):
    out, scores = self.ours(self.query, self.value, use_causal_mask=True,
                            return_attention_scores=True)
    ref_out, ref_scores = self._ref(causal=True)
    bounds.assert_close(out, ref_out, bounds.LAYER_ULPS)
    bounds.assert_close(scores, ref_scores, bounds.LAYER_ULPS)
    bounds.assert_close(out, self.theirs(self.query, self.value, use_causal_mask=True),
                        bounds.LAYER_ULPS)

  def test_explicit_masks_match_keras_masks(self):
    q_mask = _RNG.random((3, 5)) > 0.3
    v_mask = _RNG.random((3, 6)) > 0.3
    v_mask[:, 0] = True
    explicit = self.ours(self.query, self.value, query_mask=q_mask,
                         value_mask=v_mask, use_causal_mask=True)
    query = tf.constant(self.query)
    value = tf.constant(self.value)
    query._keras_mask = tf.constant(q_mask)
    value._keras_mask = tf.constant(v_mask)
    implicit = self.ours(query, value, use_causal_mask=True)
    theirs = self.theirs(query, value, use_causal_mask=True)
    combined = q_mask[:, :, None] & v_mask[:, None, :]
    ref_out, _ = self._ref(mask=combined, causal=True)
    bounds.assert_close(explicit, ref_out, bounds.LAYER_ULPS)
    bounds.assert_close(implicit, ref_out, bounds.LAYER_ULPS)
    bounds.assert_close(theirs, ref_out, bounds.LAYER_ULPS)

  def test_every_mask_combined(self):
    key = _normal(3, 6, 7)
    ours, theirs = _pair(num_heads=2, key_dim=4)
    _share(ours, theirs, self.query, self.value, key)
    masks = dict(attention_mask=_RNG.random((3, 5, 6)) > 0.2,
                 query_mask=_RNG.random((3, 5)) > 0.2,
                 value_mask=_RNG.random((3, 6)) > 0.2,
                 key_mask=_RNG.random((3, 6)) > 0.2)
    out = ours(self.query, self.value, key, use_causal_mask=True, **masks)
    combined = (masks["attention_mask"] & masks["query_mask"][:, :, None] &
                masks["value_mask"][:, None] & masks["key_mask"][:, None])
    ref_out, _ = reference.multi_head_attention(
        ours.get_weights(), self.query, self.value, key, num_heads=2,
        mask=combined, causal=True)
    bounds.assert_close(out, ref_out, bounds.LAYER_ULPS)

  def test_embedding_mask_propagates_in_a_model(self):
    tokens = tf_keras.Input((None,), dtype="int32")
    x = tf_keras.layers.Embedding(20, 8, mask_zero=True)(tokens)
    y = tf_mha.MultiHeadAttention(2, 4, name="mha")(x, x)
    model = tf_keras.Model(tokens, y)
    ids = np.array([[3, 4, 5, 0, 0], [1, 2, 0, 0, 0]])
    emb = model.layers[1](ids).numpy()
    layer = model.get_layer("mha")
    out = model(ids)
    mask = ids != 0
    ref_out, _ = reference.multi_head_attention(
        layer.get_weights(), emb, emb, num_heads=2,
        mask=mask[:, :, None] & mask[:, None, :])
    bounds.assert_close(out, ref_out, bounds.LAYER_ULPS)
    self.assertAllEqual(y._keras_mask.shape.as_list(), [None, None])


class ModesTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(("plain", False), ("flash", True))
  def test_eager_function_and_xla_agree(self, flash):
    layer = tf_mha.MultiHeadAttention(2, 4, flash_attention=flash)
    x = tf.constant(_normal(2, 9, 6))
    mask = tf.constant(_RNG.random((2, 9, 9)) > 0.3)
    eager = layer(x, x, attention_mask=mask, use_causal_mask=True)
    fn = tf.function(lambda a, m: layer(a, a, attention_mask=m, use_causal_mask=True))
    xla = tf.function(lambda a, m: layer(a, a, attention_mask=m, use_causal_mask=True),
                      jit_compile=True)
    bounds.assert_close(eager, fn(x, mask), bounds.LAYER_ULPS)
    bounds.assert_close(eager, xla(x, mask), bounds.LAYER_ULPS)

  def test_flash_matches_plain_in_layer(self):
    x = _normal(2, 33, 8)
    plain = tf_mha.MultiHeadAttention(2, 4, flash_attention=False)
    flash = tf_mha.MultiHeadAttention(2, 4, flash_attention=True)
    plain(x, x)
    flash(x, x)
    flash.set_weights(plain.get_weights())
    bounds.assert_close(plain(x, x, use_causal_mask=True),
                        flash(x, x, use_causal_mask=True), bounds.LAYER_ULPS)

  def test_flash_true_refuses_scores(self):
    layer = tf_mha.MultiHeadAttention(2, 4, flash_attention=True)
    x = _normal(1, 3, 4)
    with self.assertRaisesRegex(ValueError, "flash_attention"):
      layer(x, x, return_attention_scores=True)

  def test_dropout_only_in_training_and_seeded(self):
    x = _normal(2, 7, 6)
    a = tf_mha.MultiHeadAttention(2, 4, dropout=0.5, seed=7)
    a(x, x)
    self.assertAllClose(a(x, x), a(x, x, training=False))
    self.assertNotAllClose(a(x, x, training=True), a(x, x, training=False))
    weights = a.get_weights()

    def seeded_run():
      # A fresh process is what `seed` reproduces; set_seed stands in for it.
      tf.random.set_seed(0)
      layer = tf_mha.MultiHeadAttention(2, 4, dropout=0.5, seed=7)
      layer(x, x)
      layer.set_weights(weights)
      return [layer(x, x, training=True) for _ in range(2)]

    first, second = seeded_run(), seeded_run()
    self.assertAllClose(first, second)
    self.assertNotAllClose(first[0], first[1])

  def test_mixed_precision_softmax_in_float32(self):
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    try:
      layer = tf_mha.MultiHeadAttention(2, 4)
      x = _normal(2, 5, 8) * 100.0
      out, scores = layer(x, x, return_attention_scores=True)
      self.assertEqual(out.dtype, tf.float16)
      self.assertEqual(layer.weights[0].dtype, tf.float32)
      self.assertTrue(np.all(np.isfinite(out.numpy())))
      self.assertAllClose(np.sum(scores.numpy().astype(np.float32), -1),
                          np.ones((2, 2, 5)), atol=2e-3)
    finally:
      tf_keras.mixed_precision.set_global_policy("float32")

  def test_graph_mode_v1(self):
    x = _normal(2, 5, 6)
    with tf.Graph().as_default():
      layer = tf_mha.MultiHeadAttention(2, 3)
      out = layer(tf.constant(x), tf.constant(x), use_causal_mask=True)
      with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        value, weights = sess.run([out, layer.weights])
    ref_out, _ = reference.multi_head_attention(weights, x, x, num_heads=2, causal=True)
    bounds.assert_close(value, ref_out, bounds.LAYER_ULPS)

  def test_ragged_query(self):
    layer = tf_mha.MultiHeadAttention(2, 3)
    rt = tf.ragged.constant([[[1.0, 2.0]] * 3, [[0.5, 1.0]] * 2], ragged_rank=1)
    out = layer(rt, rt)
    self.assertIsInstance(out, tf.RaggedTensor)
    self.assertAllEqual(out.row_lengths(), [3, 2])


class SlidingWindowTest(tf.test.TestCase, parameterized.TestCase):
  """Keras 3's `sliding_window`: the band |t - s| < W, alone or causal."""

  @parameterized.named_parameters(("band", False), ("causal_band", True))
  def test_scores_vanish_outside_the_window_and_match_a_mask(self, causal):
    x = _normal(2, 9, 8)
    ours, theirs = _pair(num_heads=2, key_dim=4)
    _share(ours, theirs, x, x)
    windowed = tf_mha.MultiHeadAttention(2, 4, sliding_window=3)
    windowed(x, x)
    windowed.set_weights(ours.get_weights())
    out, scores = windowed(x, x, use_causal_mask=causal, return_attention_scores=True)
    t, s = np.arange(9)[:, None], np.arange(9)[None, :]
    band = (np.abs(t - s) < 3) & ((t >= s) if causal else True)
    self.assertAllEqual(scores.numpy() > 0, np.broadcast_to(band, scores.shape))
    expected = theirs(x, x, attention_mask=np.broadcast_to(band, (2, 9, 9)))
    bounds.assert_close(out, expected, bounds.LAYER_ULPS)
    windowed._flash_attention = True  # the band also reaches the blockwise path
    bounds.assert_close(windowed(x, x, use_causal_mask=causal), expected,
                        bounds.LAYER_ULPS)

  def test_long_window_builds_no_length_squared_tensor(self):
    # The band goes to the op (flash skips the blocks outside it), not into
    # a [T, S] mask: no tensor in the traced graph is anywhere near T * S.
    t = 4096
    layer = tf_mha.MultiHeadAttention(2, 4, sliding_window=16, flash_attention=True)
    x = tf.zeros([1, t, 8])
    layer(x[:, :8], x[:, :8])
    graph = tf.function(lambda x: layer(x, x, use_causal_mask=True)).get_concrete_function(
        tf.TensorSpec([1, t, 8])).graph
    sizes = [out.shape.num_elements() for op in graph.get_operations()
             for out in op.outputs if out.shape.is_fully_defined()]
    self.assertLess(max(sizes), t * t // 16)

  def test_masked_softmax_override_gets_causal_and_window_masks(self):
    def subclass(base, **kwargs):
      class Custom(base):
        def _masked_softmax(self, attention_scores, attention_mask=None):
          return super()._masked_softmax(attention_scores, attention_mask)
      return Custom(num_heads=2, key_dim=3, **kwargs)

    x = _normal(2, 7, 6)
    ours, theirs = subclass(tf_mha.MultiHeadAttention), subclass(
        tf_keras.layers.MultiHeadAttention)
    _share(ours, theirs, x, x)
    bounds.assert_close(ours(x, x, use_causal_mask=True),
                        theirs(x, x, use_causal_mask=True), bounds.LAYER_ULPS)
    windowed = subclass(tf_mha.MultiHeadAttention, sliding_window=2)
    windowed(x, x)
    windowed.set_weights(theirs.get_weights())
    t, s = np.arange(7)[:, None], np.arange(7)[None, :]
    band = np.broadcast_to((np.abs(t - s) < 2) & (t >= s), (2, 7, 7))
    bounds.assert_close(windowed(x, x, use_causal_mask=True),
                        theirs(x, x, attention_mask=band), bounds.LAYER_ULPS)

  def test_validation_and_config(self):
    for bad in (0, -3, 1.5, True):
      with self.assertRaisesRegex(ValueError, "sliding_window"):
        tf_mha.MultiHeadAttention(2, 4, sliding_window=bad)
    layer = tf_mha.MultiHeadAttention(2, 4, sliding_window=5)
    config = layer.get_config()
    self.assertEqual(config["sliding_window"], 5)
    self.assertEqual(tf_mha.MultiHeadAttention.from_config(config).sliding_window, 5)
    two_axes = tf_mha.MultiHeadAttention(2, 4, attention_axes=(1, 2), sliding_window=2)
    with self.assertRaisesRegex(ValueError, "single attention axis"):
      two_axes(np.ones((1, 3, 4, 8)), np.ones((1, 3, 4, 8)))


class KerasThreeAdditionsTest(tf.test.TestCase):
  """Keras 3's `use_gate` and `build(query_shape, value_shape, key_shape)`."""

  def test_gate_matches_keras3_on_shared_weights(self):
    import keras  # Keras 3, installed with TensorFlow: the peer, not our base
    query, value = _normal(2, 5, 8), _normal(2, 7, 6)
    theirs = keras.layers.MultiHeadAttention(2, 4, use_gate=True)
    expected = np.asarray(theirs(query, value))
    ours = tf_mha.MultiHeadAttention(2, 4, use_gate=True)
    ours.build(query.shape, value.shape)
    self.assertEqual([w.name.split("/", 1)[1].split(":")[0] for w in ours.weights],
                     [w.path.split("/", 1)[1] for w in theirs.weights])
    ours.set_weights(theirs.get_weights())
    bounds.assert_close(ours(query, value), expected, bounds.LAYER_ULPS)
    plain = tf_mha.MultiHeadAttention(2, 4)
    plain(query, value)
    weights = ours.get_weights()
    plain.set_weights(weights[:4] + weights[6:])  # the same layer without gate
    gate = tf.sigmoid(tf.einsum("btd,dnv->btnv", query, weights[4]) + weights[5])
    self.assertNotAllClose(plain(query, value), expected)
    self.assertTrue(np.all((gate.numpy() > 0) & (gate.numpy() < 1)))
    config = ours.get_config()
    self.assertTrue(config["use_gate"])
    self.assertTrue(tf_mha.MultiHeadAttention.from_config(config).use_gate)

  def test_build_from_shapes_creates_the_variables(self):
    layer = tf_mha.MultiHeadAttention(2, 4, value_dim=3)
    layer.build((2, 5, 8), (2, 7, 6), (2, 7, 10))
    self.assertEqual([tuple(w.shape) for w in layer.weights[::2]],
                     [(8, 2, 4), (10, 2, 4), (6, 2, 3), (2, 3, 8)])
    self.assertEqual(layer(np.ones((2, 5, 8)), np.ones((2, 7, 6)),
                           np.ones((2, 7, 10))).shape, (2, 5, 8))

  def test_key_and_value_length_mismatch_says_must_be_equal(self):
    layer = tf_mha.MultiHeadAttention(4, 2)
    for shapes in (((2, 4, 8), (2, 2, 7), (2,)), ((2, 4, 8), (2, 2, 8), (2, 1, 7))):
      with self.assertRaisesRegex(ValueError, "must be equal"):
        layer.compute_output_shape(*shapes)
      with self.assertRaisesRegex(ValueError, "must be equal"):
        layer(*(np.ones(shape) for shape in shapes))


class ErrorsTest(tf.test.TestCase, parameterized.TestCase):
  """Bad input: a ValueError (or TypeError) naming the argument and echoing
  what was received; never an IndexError or a bare InvalidArgumentError.
  Messages also match Keras 3's own tests ("argument `num_heads`", "Invalid
  `output_shape`", "Returning attention scores is not supported")."""

  @parameterized.named_parameters(
      *[(f"num_heads_{bad}", dict(num_heads=bad), r"argument `num_heads`.*Received: num_heads=")
        for bad in (0, -2, 1.5)],
      *[(f"key_dim_{bad}", dict(key_dim=bad), r"argument `key_dim`.*Received: key_dim=")
        for bad in (0, -2, 1.5)],
      ("value_dim", dict(value_dim=0), r"argument `value_dim`.*Received: value_dim=0"),
      ("dropout_one", dict(dropout=1.0), r"`dropout`.*Received: dropout=1.0"),
      ("dropout_negative", dict(dropout=-0.1), r"`dropout`.*Received: dropout=-0.1"),
      ("output_shape_float", dict(output_shape=8.0), r"Invalid `output_shape`.*8.0"),
      ("output_shape_zero", dict(output_shape=(2, 0)), r"Invalid `output_shape`.*\(2, 0\)"),
      ("flash_flag", dict(flash_attention="yes"), r"`flash_attention`.*'yes'"),
  )
  def test_constructor(self, kwargs, pattern):
    with self.assertRaisesRegex(ValueError, pattern):
      tf_mha.MultiHeadAttention(**{"num_heads": 2, "key_dim": 4, **kwargs})

  def test_seed_type(self):
    with self.assertRaisesRegex(TypeError, r"`seed`.*Received: seed='x'"):
      tf_mha.MultiHeadAttention(2, 4, seed="x")

  @parameterized.named_parameters(
      ("axes_out_of_range", dict(attention_axes=(5,)), {}, "attention_axes"),
      ("axes_negative", dict(attention_axes=-7), {}, "attention_axes"),
      ("rank", {}, dict(value=np.ones((2, 5, 4, 8))), "same rank"),
      ("batch", {}, dict(value=np.ones((3, 5, 8))), "same batch size"),
      ("missing_value", {}, dict(value=None), "`value` is required"),
      ("key_value_lengths", {}, dict(key=np.ones((2, 6, 8))), "`key` and `value`"),
      ("attention_mask", {}, dict(attention_mask=np.ones((2, 4, 5))),
       r"`attention_mask` must broadcast.*\[2, 3, 5\].*\(2, 4, 5\)"),
      ("attention_mask_rank", {}, dict(attention_mask=np.ones((2, 3, 5, 1, 1))),
       "`attention_mask` must broadcast"),
      ("attention_mask_no_t_axis", {}, dict(attention_mask=np.ones((5,))),
       "`attention_mask` must broadcast"),
      ("query_mask", {}, dict(query_mask=np.ones((2, 4))), r"`query_mask`.*\(2, 4\)"),
      ("value_mask", {}, dict(value_mask=np.ones((2, 4))), r"`value_mask`.*\(2, 4\)"),
      ("key_mask", {}, dict(key=np.ones((2, 5, 8)), key_mask=np.ones((2, 6))),
       r"`key_mask`.*\(2, 6\)"),
      ("flash_scores", dict(flash_attention=True), dict(return_attention_scores=True),
       "Returning attention scores is not supported when flash attention is enabled"),
  )
  def test_first_call(self, kwargs, call_kwargs, pattern):
    layer = tf_mha.MultiHeadAttention(2, 4, **kwargs)
    args = {"query": np.ones((2, 3, 8)), "value": np.ones((2, 5, 8)), **call_kwargs}
    with self.assertRaisesRegex(ValueError, pattern):
      layer(**args)

  def test_non_numeric_inputs_are_named(self):
    layer = tf_mha.MultiHeadAttention(2, 4)
    with self.assertRaisesRegex(TypeError, "`query` must be a numeric.*string"):
      layer(tf.fill([2, 3, 8], "a"), np.ones((2, 5, 8)))
    with self.assertRaisesRegex(TypeError, "`key`.*array of numbers.*object"):
      layer(np.ones((2, 3, 8)), np.ones((2, 5, 8)), object())
    self.assertEqual(layer.weights, [])

  def test_refused_first_call_leaves_the_layer_unbuilt(self):
    layer = tf_mha.MultiHeadAttention(2, 4, attention_axes=(5,))
    with self.assertRaisesRegex(ValueError, "attention_axes"):
      layer(np.ones((2, 3, 8)), np.ones((2, 5, 8)))
    self.assertEqual(layer.weights, [])
    layer = tf_mha.MultiHeadAttention(2, 4)
    with self.assertRaisesRegex(ValueError, "must be equal"):
      layer(np.ones((2, 3, 8)), np.ones((2, 5, 8)), np.ones((2, 4, 8)))
    self.assertEqual(layer(np.ones((2, 3, 8)), np.ones((2, 6, 7))).shape, (2, 3, 8))

  def test_broadcastable_masks_are_accepted(self):
    layer = tf_mha.MultiHeadAttention(2, 4)
    query, value = np.ones((2, 3, 8)), np.ones((2, 5, 8))
    for shape in ((2, 3, 5), (1, 3, 5), (2, 1, 5), (3, 5), (2, 2, 3, 5)):
      out = layer(query, value, attention_mask=np.ones(shape, bool))
      self.assertEqual(out.shape, (2, 3, 8), shape)


class SerializationTest(tf.test.TestCase):

  def _model(self, layer_cls):
    inp = tf_keras.Input((6, 8))
    out = layer_cls(num_heads=2, key_dim=4, name="mha")(inp, inp)
    return tf_keras.Model(inp, tf_keras.layers.Dense(3, name="head")(out))

  def test_config_round_trip_built_and_unbuilt(self):
    layer = tf_mha.MultiHeadAttention(2, 4, value_dim=3, dropout=0.1,
                                      output_shape=(5,), attention_axes=(1,),
                                      seed=3, flash_attention=False)
    clone = tf_mha.MultiHeadAttention.from_config(layer.get_config())
    self.assertEqual(clone.get_config(), layer.get_config())
    x = _normal(2, 4, 6)
    layer(x, x)
    built = tf_mha.MultiHeadAttention.from_config(layer.get_config())
    self.assertEqual(len(built.weights), 8)
    built.set_weights(layer.get_weights())
    self.assertAllClose(built(x, x), layer(x, x))

  def test_accepts_tf_keras_config(self):
    theirs = tf_keras.layers.MultiHeadAttention(2, 4)
    x = _normal(2, 3, 6)
    theirs(x, x)
    ours = tf_mha.MultiHeadAttention.from_config(theirs.get_config())
    ours.set_weights(theirs.get_weights())
    bounds.assert_close(ours(x, x), theirs(x, x), bounds.LAYER_ULPS)

  def test_save_formats_round_trip(self):
    model = self._model(tf_mha.MultiHeadAttention)
    x = _normal(2, 6, 8)
    expected = model(x)
    tmp = self.get_temp_dir()
    for path in (os.path.join(tmp, "m.h5"), os.path.join(tmp, "m.keras"),
                 os.path.join(tmp, "saved")):
      model.save(path)
      loaded = tf_keras.models.load_model(path)
      bounds.assert_close(loaded(x), expected, bounds.LAYER_ULPS, msg=path)

  def test_tf_keras_weights_and_checkpoint_load_into_ours(self):
    theirs = self._model(tf_keras.layers.MultiHeadAttention)
    ours = self._model(tf_mha.MultiHeadAttention)
    x = _normal(2, 6, 8)
    tmp = self.get_temp_dir()
    theirs.save_weights(os.path.join(tmp, "w.h5"))
    ours.load_weights(os.path.join(tmp, "w.h5"))
    bounds.assert_close(ours(x), theirs(x), bounds.LAYER_ULPS)
    fresh = self._model(tf_mha.MultiHeadAttention)
    path = tf.train.Checkpoint(model=theirs).save(os.path.join(tmp, "ckpt"))
    tf.train.Checkpoint(model=fresh).restore(path).assert_existing_objects_matched()
    bounds.assert_close(fresh(x), theirs(x), bounds.LAYER_ULPS)


class TalkingHeads(tf_mha.MultiHeadAttention):
  """Model Garden's TalkingHeadsAttention pattern, written for tf.keras."""

  def _build_attention(self, qkv_rank):
    super()._build_attention(qkv_rank)
    self._pre_softmax_weight = self.add_weight(
        "pre_softmax_weight", shape=(self._num_heads, self._num_heads),
        initializer="identity")

  def _compute_attention(self, query, key, value, attention_mask=None, training=None):
    query = query * (1.0 / np.sqrt(float(self._key_dim)))
    scores = tf.einsum(self._dot_product_equation, key, query)
    scores = tf.einsum("abcd,be->aecd", scores, self._pre_softmax_weight)
    scores = self._masked_softmax(scores, attention_mask)
    dropped = self._dropout_layer(scores, training=training)
    return tf.einsum(self._combine_equation, dropped, value), scores


class SubclassTest(tf.test.TestCase, parameterized.TestCase):

  def test_autograph_converts_users_code_not_ours(self):
    """As with tf_keras' own layer, autograph runs tf_mha's layers and ops as
    written (converting them doubled the time to build a Model Garden
    encoder), and still converts a subclass's own methods."""
    from tensorflow.python.autograph.impl import conversion  # pylint: disable=g-import-not-at-top

    class Doubling(tf_mha.MultiHeadAttention):

      def call(self, query, value, **kwargs):
        out = super().call(query, value, **kwargs)
        if tf.reduce_sum(query) > 0:  # a tensor decides: autograph's tf.cond
          out = 2.0 * out
        return out

    for ours in (tf_mha.MultiHeadAttention.call,
                 tf_mha.MultiHeadAttention._compute_attention,
                 tf_mha.dot_product_attention, tf_keras.layers.MultiHeadAttention.call):
      self.assertTrue(conversion.is_allowlisted(ours), ours)
    for users in (Doubling.call, TalkingHeads._compute_attention):
      self.assertFalse(conversion.is_allowlisted(users), users)
    layer, plain = Doubling(2, 4), tf_mha.MultiHeadAttention(2, 4)
    x = _normal(2, 5, 6)
    layer(x, x)
    plain(x, x)
    plain.set_weights(layer.get_weights())
    inputs = tf_keras.Input([5, 6])
    model = tf_keras.Model(inputs, layer(inputs, inputs))
    for sign, factor in ((1.0, 2.0), (-1.0, 1.0)):
      query = sign * tf.abs(x)
      bounds.assert_close(model(query), factor * plain(query, query),
                          bounds.LAYER_ULPS)

  def test_compute_attention_override_keeps_working(self):
    x = _normal(2, 5, 6)
    talking = TalkingHeads(2, 4)
    plain = tf_mha.MultiHeadAttention(2, 4)
    talking(x, x)
    plain(x, x)
    plain.set_weights([w.numpy() for w in talking.weights
                       if "pre_softmax" not in w.name])
    # With the identity head mix, the override equals plain attention.
    bounds.assert_close(talking(x, x, use_causal_mask=True),
                        plain(x, x, use_causal_mask=True), bounds.LAYER_ULPS)

  def test_mask_hook_overrides_are_honoured(self):
    # Subclasses that change how the causal mask or the attention mask is
    # made get their mask, as in tf.keras (the op would otherwise apply its
    # own causal mask and ignore the override).
    def prefix_lm(self, query, value=None):  # the first 3 keys are seen by all
      del self
      t, s = tf.shape(query)[1], tf.shape(query if value is None else value)[1]
      return tf.expand_dims(tf_mha.ops.masks.causal_mask(t, s) |
                            tf_mha.ops.masks.prefix_mask(s, 3), 0)

    def no_causal(self, query, value, key=None, attention_mask=None,
                  use_causal_mask=False, **masks):
      del use_causal_mask  # ignores the flag: the override's choice
      return super(type(self), self)._compute_attention_mask(
          query, value, key, attention_mask, **masks)

    x = _normal(2, 7, 6)
    for hook, override in (("_compute_causal_mask", prefix_lm),
                           ("_compute_attention_mask", no_causal)):
      ours = type("Ours", (tf_mha.MultiHeadAttention,), {hook: override})(2, 3)
      theirs = type("Theirs", (tf_keras.layers.MultiHeadAttention,),
                    {hook: override})(2, 3)
      _share(ours, theirs, x, x)
      bounds.assert_close(ours(x, x, use_causal_mask=True),
                          theirs(x, x, use_causal_mask=True), bounds.LAYER_ULPS, msg=hook)

  def test_sliding_window_mask_override_is_honoured(self):
    def wide(self, query, value=None):  # |t - s| < 4, not the layer's 2
      del self
      t, s = tf.shape(query)[1], tf.shape(query if value is None else value)[1]
      return tf.expand_dims(tf_mha.ops.masks.band_mask(t, s, 4), 0)

    x = _normal(2, 7, 6)
    layer = type("Wide", (tf_mha.MultiHeadAttention,),
                 {"_compute_sliding_window_mask": wide})(2, 3, sliding_window=2)
    plain = tf_mha.MultiHeadAttention(2, 3)
    layer(x, x)
    plain(x, x)
    plain.set_weights(layer.get_weights())
    t, s = np.arange(7)[:, None], np.arange(7)[None, :]
    band = np.broadcast_to(np.abs(t - s) < 4, (2, 7, 7))
    bounds.assert_close(layer(x, x), plain(x, x, attention_mask=band), bounds.LAYER_ULPS)

  def test_make_output_dense_override_is_called(self):
    # The projections run as matmuls on the kernels only for the layer's own
    # linear EinsumDense; a subclass's own output layer must still be called.
    class Scaled(tf_keras.layers.EinsumDense):
      def call(self, inputs):
        return 2.0 * super().call(inputs)

    class Custom(tf_mha.MultiHeadAttention):
      def _make_output_dense(self, free_dims, common_kwargs, name=None):
        plain = super()._make_output_dense(free_dims, common_kwargs, name)
        return Scaled(**plain.get_config())

    x = _normal(2, 5, 6)
    custom, plain = Custom(2, 4), tf_mha.MultiHeadAttention(2, 4)
    custom(x, x)
    plain(x, x)
    plain.set_weights(custom.get_weights())
    bounds.assert_close(custom(x, x), 2.0 * plain(x, x), bounds.LAYER_ULPS)

  @parameterized.parameters("ed", None)
  def test_replaced_projections_are_called_as_in_tf_keras(self, bias_axes):
    # A subclass that builds its own query projection (kernel [D, H, N],
    # transposed heads) with tf.keras' `_get_common_kwargs_for_sublayer`,
    # and normalises with tf.keras' `_softmax` sublayer: both bases must
    # give the same outputs on the same weights.
    def subclass(base):
      class Custom(base):
        def _build_from_signature(self, query, value, key=None):
          super()._build_from_signature(query, value, key)
          with tf.init_scope():
            self._query_dense = tf_keras.layers.EinsumDense(
                "abc,cde->abed", output_shape=[None, self._num_heads, self._key_dim],
                bias_axes=bias_axes, name="query",
                **self._get_common_kwargs_for_sublayer())

        def _compute_attention(self, query, key, value, attention_mask=None,
                               training=None):
          scores = tf.einsum(self._dot_product_equation, key, query)
          probs = self._softmax(scores / np.sqrt(float(self._key_dim)),
                                attention_mask)
          return tf.einsum(self._combine_equation, probs, value), probs
      return Custom(num_heads=2, key_dim=3)

    x = _normal(2, 5, 6)
    ours, theirs = subclass(tf_mha.MultiHeadAttention), subclass(
        tf_keras.layers.MultiHeadAttention)
    _share(ours, theirs, x, x)
    self.assertEqual(ours._query_dense.kernel.shape, (6, 3, 2))
    bounds.assert_close(ours(x, x, use_causal_mask=True),
                        theirs(x, x, use_causal_mask=True), bounds.LAYER_ULPS)

  def test_projections_follow_the_compiler(self):
    # Under XLA the projections are matmuls on the reshaped kernels (no
    # transposed gradient copies); without it, one einsum op each.
    layer = tf_mha.MultiHeadAttention(2, 4)
    x = tf.zeros([2, 5, 6])
    layer(x, x)
    for jit, matmuls in ((True, 4), (False, 0)):
      graph = tf.function(lambda x: layer(x, x), jit_compile=jit).get_concrete_function(
          x).graph
      types = [op.type for op in graph.get_operations()]
      self.assertEqual(types.count("MatMul"), matmuls, f"jit={jit}")
      self.assertEqual(types.count("Einsum"), 6 - matmuls, f"jit={jit}")
      # Each kernel behind a barrier: XLA:CPU would otherwise fuse its
      # reshape into a one-row product as a slow naive loop (issue 26).
      self.assertEqual(types.count("XlaOptimizationBarrier"), matmuls, f"jit={jit}")

  def test_projection_gradients_pass_the_barrier(self):
    layer = tf_mha.MultiHeadAttention(2, 4)
    x = tf.constant(_normal(2, 5, 6))
    layer(x, x)

    def gradients(x):
      with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x, x) ** 2)
      return tape.gradient(loss, [x] + layer.trainable_variables)

    want = gradients(x)  # the key bias's is 0 but for rounding
    for got, expected in zip(tf.function(gradients, jit_compile=True)(x), want):
      bounds.assert_close(got, expected, bounds.LAYER_ULPS,
                          scale_of=bounds.joint_scale(want))

  def test_activity_regularizer_losses_match_tf_keras(self):
    x = _normal(2, 5, 6)
    for q, v in ((x, x), (x, _normal(2, 3, 6))):
      ours, theirs = _pair(num_heads=2, key_dim=4, activity_regularizer="l2")
      _share(ours, theirs, q, v)
      ours(q, v)
      theirs(q, v)
      self.assertLen(ours.losses, len(theirs.losses))
      self.assertAllClose(tf.add_n(ours.losses), tf.add_n(theirs.losses),
                          rtol=1e-5)


class FitTest(tf.test.TestCase):

  def test_model_fit_reduces_loss(self):
    x = _normal(32, 6, 8)
    y = x.mean(axis=1)[:, :2]
    inp = tf_keras.Input((6, 8))
    h = tf_mha.MultiHeadAttention(2, 4, dropout=0.1)(inp, inp)
    out = tf_keras.layers.Dense(2)(tf_keras.layers.GlobalAveragePooling1D()(h))
    model = tf_keras.Model(inp, out)
    model.compile(tf_keras.optimizers.Adam(0.01), "mse")
    history = model.fit(x, y, epochs=15, batch_size=8, verbose=0)
    self.assertLess(history.history["loss"][-1], history.history["loss"][0] * 0.5)


if __name__ == "__main__":
  tf.test.main()
