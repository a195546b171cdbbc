"""Attention (Luong) against the float64 reference and tf_keras.layers.Attention."""

import numpy as np
import tensorflow as tf
import tf_keras
from absl.testing import parameterized

import tf_mha

from tests import bounds

_RNG = np.random.default_rng(7)


def _normal(*shape):
  return _RNG.normal(size=shape).astype(np.float32)


def _reference(q, v, k=None, q_mask=None, v_mask=None, causal=False,
               score_mode="dot", scale=1.0, concat_weight=1.0):
  q, v = q.astype(np.float64), v.astype(np.float64)
  k = v if k is None else k.astype(np.float64)
  if score_mode == "dot":
    scores = scale * np.einsum("btd,bsd->bts", q, k)
  else:
    scores = concat_weight * np.tanh(scale * (q[:, :, None] + k[:, None])).sum(-1)
  keep = np.ones(scores.shape, bool)
  if v_mask is not None:
    keep &= v_mask[:, None, :]
  if causal:
    keep &= np.tril(np.ones(scores.shape[1:], bool))
  scores = np.where(keep, scores, -1e300)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  out = probs @ v
  if q_mask is not None:
    out = out * q_mask[..., None]
  return out, probs


class AttentionTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(
      ("dot", dict(), "dot", False), ("dot_scaled", dict(use_scale=True), "dot", False),
      ("concat", dict(score_mode="concat"), "concat", False),
      ("concat_scaled_causal", dict(score_mode="concat", use_scale=True), "concat", True),
      ("dot_causal", dict(), "dot", True))
  def test_matches_reference_and_tf_keras(self, kwargs, mode, causal):
    q, v, k = _normal(2, 5, 7), _normal(2, 3, 11), _normal(2, 3, 7)
    q_mask = _RNG.random((2, 5)) > 0.3
    v_mask = _RNG.random((2, 3)) > 0.3
    v_mask[:, 0] = True
    ours, theirs = tf_mha.Attention(**kwargs), tf_keras.layers.Attention(**kwargs)
    theirs([q, v, k])
    ours([q, v, k])
    ours.set_weights([w + 0.5 for w in theirs.get_weights()])
    theirs.set_weights(ours.get_weights())
    args = dict(mask=[q_mask, v_mask], use_causal_mask=causal,
                return_attention_scores=True)
    out, scores = ours([q, v, k], **args)
    their_out, their_scores = theirs([q, v, k], **args)
    weights = ours.get_weights()
    scale = weights[0] if kwargs.get("use_scale") else 1.0
    concat_weight = weights[-1] if mode == "concat" else 1.0
    ref_out, ref_scores = _reference(q, v, k, q_mask, v_mask, causal, mode,
                                     scale, concat_weight)
    bounds.assert_close(out, ref_out, bounds.LAYER_ULPS)
    bounds.assert_close(scores, ref_scores, bounds.LAYER_ULPS)
    bounds.assert_close(out, their_out, bounds.LAYER_ULPS)
    bounds.assert_close(scores, their_scores, bounds.LAYER_ULPS)
    self.assertEqual([w.name.split("/", 1)[1] for w in ours.weights],
                     [w.name.split("/", 1)[1] for w in theirs.weights])

  def test_deprecated_causal_argument(self):
    q = _normal(2, 4, 3)
    layer = tf_mha.Attention(causal=True)
    _, scores = layer([q, q], return_attention_scores=True)
    self.assertAllEqual(np.triu(scores.numpy()[0], 1), np.zeros((4, 4)))
    self.assertTrue(layer.causal)

  def test_dropout_only_in_training(self):
    q = _normal(2, 6, 4)
    layer = tf_mha.Attention(dropout=0.5, seed=1)
    self.assertAllClose(layer([q, q]), layer([q, q], training=False))
    self.assertNotAllClose(layer([q, q], training=True), layer([q, q], training=False))
    # Returned scores are the weights applied: after dropout, as in tf.keras.
    out, scores = layer([q, q], training=True, return_attention_scores=True)
    bounds.assert_close(out, tf.matmul(scores, q), bounds.LAYER_ULPS)
    self.assertNotAllClose(tf.reduce_sum(scores, -1), tf.ones([2, 6]))
    _, scores = layer([q, q], training=False, return_attention_scores=True)
    self.assertAllClose(tf.reduce_sum(scores, -1), tf.ones([2, 6]))

  def test_score_mask_helper_as_in_keras3(self):
    layer = tf_mha.Attention()
    scores = np.zeros((2, 3, 4))
    self.assertIsNone(layer._calculate_score_mask(scores, None, False))
    causal = np.tril(np.ones((1, 3, 4), bool))
    self.assertAllEqual(layer._calculate_score_mask(scores, None, True), causal)
    v_mask = np.array([[True, False, True, False]])
    self.assertAllEqual(layer._calculate_score_mask(scores, v_mask, True),
                        causal & v_mask[:, None, :])

  def test_numpy_inputs_masks_and_float64(self):
    q = np.random.default_rng(0).random((2, 3, 4))  # float64
    layer = tf_mha.Attention(use_scale=True)
    layer([q, q])
    self.assertEqual(layer._calculate_scores(q, q).dtype, tf.float64)
    mask = [np.array([[True, True, False]] * 2), np.array([[True, False, True]] * 2)]
    self.assertAllEqual(layer.compute_mask([q, q], mask), mask[0])
    self.assertIsNone(layer.compute_mask([q, q], None))
    with self.assertRaisesRegex(ValueError, "mask must be a list"):
      layer([q, q], mask=np.ones((2, 3), bool))

  def test_config_round_trip_and_keras_mask(self):
    layer = tf_mha.Attention(use_scale=True, score_mode="concat", dropout=0.2, seed=3)
    clone = tf_mha.Attention.from_config(layer.get_config())
    self.assertEqual(clone.get_config(), layer.get_config())
    tokens = tf_keras.Input((None,), dtype="int32")
    x = tf_keras.layers.Embedding(10, 4, mask_zero=True)(tokens)
    y = tf_mha.Attention()([x, x])
    self.assertIsNotNone(y._keras_mask)

  @parameterized.named_parameters(
      ("not_list", lambda: tf.ones([1, 2, 3]), None, "list of inputs"),
      ("too_many", lambda: [tf.ones([1, 2, 3])] * 4, None, "length 2 or 3"),
      ("mask_not_list", lambda: [tf.ones([1, 2, 3])] * 2, "m", "mask must be a list"),
      ("mask_too_short", lambda: [tf.ones([1, 2, 3])] * 2, [tf.ones([1, 2])],
       "mask list of length 2 or 3"),
      ("key_dim", lambda: [tf.ones([1, 2, 3]), tf.ones([1, 2, 4])], None, "last dimension"),
      ("lengths", lambda: [tf.ones([1, 2, 3]), tf.ones([1, 2, 3]), tf.ones([1, 4, 3])],
       None, "same length"),
      ("batch", lambda: [tf.ones([3, 2, 3]), tf.ones([2, 4, 3])], None,
       r"batch dimensions.*\(3, 2, 3\).*\(2, 4, 3\)"),
      ("missing_value", lambda: [tf.ones([1, 2, 3]), None], None,
       "`value` is required"),
      ("query_mask", lambda: [tf.ones([2, 3, 4]), tf.ones([2, 5, 4])],
       [tf.ones([2, 4], tf.bool), None], r"`mask\[0\]` \(query_mask\).*\(2, 4\)"),
      ("value_mask", lambda: [tf.ones([2, 3, 4]), tf.ones([2, 5, 4])],
       [None, tf.ones([2, 6], tf.bool)], r"`mask\[1\]` \(value_mask\).*\(2, 6\)"))
  def test_bad_inputs(self, make, mask, pattern):
    with self.assertRaisesRegex(ValueError, pattern):
      tf_mha.Attention()(make(), mask=mask)

  def test_non_numeric_input_is_named(self):
    with self.assertRaisesRegex(TypeError, "`key` must be a numeric.*string"):
      tf_mha.Attention()([tf.ones([1, 2, 3]), tf.ones([1, 4, 3]),
                          tf.fill([1, 4, 3], "a")])

  def test_batch_of_one_broadcasts_as_in_tf_keras(self):
    query, value = tf.ones([3, 2, 4]), _RNG.normal(size=(1, 5, 4)).astype("float32")
    self.assertAllClose(tf_mha.Attention()([query, value]),
                        tf_keras.layers.Attention()([query, value]))

  def test_bad_constructor_arguments(self):
    with self.assertRaisesRegex(
        ValueError, "Invalid value for argument score_mode. Expected one of "
        "{'dot', 'concat'}.*Received: score_mode='add'"):
      tf_mha.Attention(score_mode="add")
    with self.assertRaisesRegex(ValueError, "dropout.*Received: dropout=1.5"):
      tf_mha.Attention(dropout=1.5)
    with self.assertRaisesRegex(TypeError, r"`seed`.*Received: seed='x'"):
      tf_mha.Attention(seed="x")
    self.assertAllClose(tf_mha.Attention(dropout=np.float32(0.25)).dropout, 0.25)


if __name__ == "__main__":
  tf.test.main()
