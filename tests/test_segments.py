"""Packed sequences (issue 24): segment ids in the op and the layers, the
in-segment positions, and packing in tf.data. Each packed example must give
what it gives alone, against the float64 reference and on every path."""

import numpy as np
import tensorflow as tf
import tf_keras
from absl.testing import parameterized

import tf_mha
import tf_mha.data
import tf_mha.keras3
from tests import bounds
from tests import reference
from tf_mha.ops import segments

# Two packed rows of 21: (5, 9, 6 + padding) and (11, 10).
_LENGTHS = ((5, 9, 6), (11, 10))
_T = 21


def _ids():
  ids = np.zeros([2, _T], np.int32)
  for row, lengths in enumerate(_LENGTHS):
    at = 0
    for s, n in enumerate(lengths):
      ids[row, at:at + n] = s + 1
      at += n
  return ids


def _examples():
  """`(row, start, length)` of every packed example."""
  out = []
  for row, lengths in enumerate(_LENGTHS):
    at = 0
    for n in lengths:
      out.append((row, at, n))
      at += n
  return out


def _qkv(heads=4, kv_heads=2, size=8, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal([2, _T, heads, size]).astype(np.float32),
          rng.standard_normal([2, _T, kv_heads, size]).astype(np.float32),
          rng.standard_normal([2, _T, kv_heads, size]).astype(np.float32))


def _with_grads(fn, *inputs, real=None):
  """`fn`'s output and the gradients of a loss on it, over the `real`
  tokens `[B, T]` only: padding (id 0) attends to its whole row's values,
  as any row with no visible key does."""
  inputs = [tf.constant(x) for x in inputs]
  with tf.GradientTape() as tape:
    tape.watch(inputs)
    out = fn(*inputs)
    loss = tf.sin(out)
    if real is not None:
      loss *= tf.reshape(tf.cast(real, loss.dtype),
                         real.shape + (1,) * (loss.shape.rank - 2))
    loss = tf.reduce_sum(loss)
  return out, tape.gradient(loss, inputs)


class OpTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.product(flash=(False, True), causal=(False, True),
                         kv_heads=(4, 2), jit=(False, True))
  def test_packed_examples_equal_themselves_alone(self, flash, causal, kv_heads, jit):
    q, k, v = _qkv(kv_heads=kv_heads)
    ids = _ids()
    kwargs = dict(is_causal=causal, flash_attention=flash,
                  block_sizes=(4, 4) if flash else None)
    packed = lambda q, k, v: tf_mha.dot_product_attention(
        q, k, v, segment_ids=ids, **kwargs)
    alone = lambda q, k, v: tf_mha.dot_product_attention(q, k, v, **kwargs)
    if jit:
      packed, alone = (tf.function(f, jit_compile=True) for f in (packed, alone))
    out, grads = _with_grads(packed, q, k, v, real=ids != 0)
    for row, start, n in _examples():
      piece = [x[row:row + 1, start:start + n] for x in (q, k, v)]
      want, want_grads = _with_grads(alone, *piece)
      bounds.assert_close(out[row:row + 1, start:start + n], want, bounds.LAYER_ULPS)
      for got, expected in zip(grads, want_grads):
        bounds.assert_close(got[row:row + 1, start:start + n], expected,
                            bounds.LAYER_ULPS, scale_of=bounds.joint_scale(want_grads))
      # The float64 reference, keys repeated for grouped heads.
      rq, rk, rv = piece
      group = rq.shape[2] // rk.shape[2]
      ref, _ = reference.attention(rq, np.repeat(rk, group, 2),
                                   np.repeat(rv, group, 2), causal=causal)
      bounds.assert_close(want, ref, bounds.LAYER_ULPS)
    self.assertTrue(np.all(np.isfinite(out)))  # padding rows too

  @parameterized.named_parameters(("plain", False), ("flash", True))
  def test_no_token_sees_another_segment(self, flash):
    q, k, v = _qkv(seed=1)
    ids = _ids()
    run = lambda q, k, v: tf_mha.dot_product_attention(
        q, k, v, segment_ids=ids, flash_attention=flash, block_sizes=(4, 4),
        dropout_rate=0.3, dropout_seed=[1, 2], sliding_window=7)
    before = run(q, k, v).numpy()
    changed = [x.copy() for x in (q, k, v)]
    for x in changed:  # the second example of the first row only
      x[0, 5:14] += 3.0
    after = run(*changed).numpy()
    moved = np.any(np.abs(after - before) > 0, axis=(2, 3))
    expected = np.zeros_like(moved)
    expected[0, 5:14] = True
    real = ids != 0  # padding attends to its whole row, as unseen rows do
    self.assertAllEqual(moved[real], expected[real])

  def test_blocks_between_segments_are_skipped(self):
    """Query block i's key range covers only its segments' keys."""
    ids = tf.constant([[1] * 8 + [2] * 8 + [3] * 4 + [0] * 4])
    key_ranges, query_ranges = segments.block_ranges(ids, 1, 4, 4, 6, 6)
    self.assertAllEqual(key_ranges, [[0, 2], [0, 2], [2, 4], [2, 4], [4, 5],
                                     [0, 0]])
    self.assertAllEqual(query_ranges, [[0, 2], [0, 2], [2, 4], [2, 4], [4, 5],
                                       [0, 0]])
    # Ids that are not contiguous runs (2 reappears) need every block.
    ids = tf.constant([[1] * 4 + [2] * 4 + [1] * 4])
    key_ranges, _ = segments.block_ranges(ids, 1, 4, 4, 3, 3)
    self.assertAllEqual(key_ranges, [[0, 3]] * 3)
    q, k, v = (np.random.default_rng(2).standard_normal([1, 12, 2, 4]).astype(
        np.float32) for _ in range(3))
    flash = tf_mha.dot_product_attention(q, k, v, segment_ids=ids,
                                         flash_attention=True, block_sizes=(4, 4))
    plain = tf_mha.dot_product_attention(q, k, v, segment_ids=ids,
                                         flash_attention=False)
    bounds.assert_close(flash, plain, bounds.LAYER_ULPS)

  @parameterized.named_parameters(("eager", False), ("jit", True))
  def test_examples_that_fit_their_blocks(self, jit):
    """Every band one block wide: the packed path takes its first step and
    no loop. Outputs and gradients equal the plain path's."""
    ids = np.array([[1, 1, 1, 0, 2, 2, 2, 2, 3, 3, 0, 0],
                    [1, 1, 1, 1, 2, 2, 0, 0, 3, 3, 3, 3]], np.int32)
    key_ranges, _ = segments.block_ranges(segments.one_row(ids), 1, 4, 4, 6, 6)
    self.assertAllEqual(key_ranges[:, 1] - key_ranges[:, 0], [1] * 6)
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal([2, 12, 2, 4]).astype(np.float32)
               for _ in range(3))
    run = lambda flash: lambda q, k, v: tf_mha.dot_product_attention(
        q, k, v, segment_ids=ids, flash_attention=flash, block_sizes=(4, 4),
        is_causal=True)
    band, plain = run(True), run(False)
    if jit:
      band = tf.function(band, jit_compile=True)
    out, grads = _with_grads(band, q, k, v, real=ids != 0)
    want, want_grads = _with_grads(plain, q, k, v, real=ids != 0)
    bounds.assert_close(out, want, bounds.LAYER_ULPS)
    for got, expected in zip(grads, want_grads):
      bounds.assert_close(got, expected, bounds.LAYER_ULPS,
                          scale_of=bounds.joint_scale(want_grads))

  def test_ids_interleaved_inside_a_block(self):
    """Ids that are not contiguous runs: in one block only (no other block
    holds them, so only the diagonal is visited), and across blocks."""
    rng = np.random.default_rng(6)
    q, k, v = (rng.standard_normal([1, 12, 2, 4]).astype(np.float32)
               for _ in range(3))
    for ids in ([[1, 2, 1, 2, 3, 3, 3, 3, 4, 0, 4, 4]],
                [[1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 0, 0]]):
      ids = np.array(ids, np.int32)
      run = lambda flash, ids=ids: tf_mha.dot_product_attention(
          q, k, v, segment_ids=ids, flash_attention=flash, block_sizes=(4, 4))
      real = (ids != 0)[..., None, None]
      bounds.assert_close(run(True) * real, run(False) * real, bounds.LAYER_ULPS)

  def test_dropout_gradients_on_the_packed_path(self):
    """The packed path redraws each step's dropout mask in the backward
    pass: its gradients equal the numerical ones (float64)."""
    ids = np.array([[1, 1, 1, 2, 2, 2, 2, 2, 2, 0]], np.int32)
    rng = np.random.default_rng(5)
    inputs = [tf.constant(rng.standard_normal([1, 10, 2, 4])) for _ in range(3)]
    real = tf.constant((ids != 0)[:, :, None, None], tf.float64)
    for causal in (False, True):
      run = tf.function(lambda q, k, v, causal=causal: real * (
          tf_mha.dot_product_attention(
              q, k, v, segment_ids=ids, flash_attention=True,
              block_sizes=(2, 2), is_causal=causal, dropout_rate=0.3,
              dropout_seed=[1, 2])))
      theoretical, numerical = tf.test.compute_gradient(run, inputs, delta=1e-6)
      for got, want in zip(theoretical, numerical):  # float64
        self.assertAllClose(got, want, atol=1e-7)

  def test_cross_attention_and_other_masks(self):
    rng = np.random.default_rng(3)
    q = rng.standard_normal([2, 6, 2, 4]).astype(np.float32)
    kv = rng.standard_normal([2, 9, 2, 4]).astype(np.float32)
    q_ids = np.array([[1, 1, 1, 2, 2, 0], [1, 2, 2, 2, 2, 2]])
    k_ids = np.array([[1, 1, 2, 2, 2, 2, 2, 0, 0], [1, 1, 1, 1, 2, 2, 2, 2, 2]])
    mask = rng.random([2, 1, 6, 9]) > 0.2
    dense = (q_ids[:, None, :, None] == k_ids[:, None, None, :]) & (
        q_ids[:, None, :, None] != 0)
    want, _ = reference.attention(q, kv, kv, mask=dense & mask)
    for flash in (False, True):
      got = tf_mha.dot_product_attention(
          q, kv, kv, segment_ids=q_ids, key_segment_ids=k_ids, mask=mask,
          flash_attention=flash, block_sizes=(4, 4))
      bounds.assert_close(got, want, bounds.LAYER_ULPS)

  def test_bad_segment_ids_are_named(self):
    q, k, v = _qkv()
    with self.assertRaisesRegex(ValueError, r"`segment_ids` must have shape "
                                r"\[batch, length\] = \[2, 21\].*\(2, 20\)"):
      tf_mha.dot_product_attention(q, k, v, segment_ids=np.ones([2, 20], np.int32))
    with self.assertRaisesRegex(TypeError, r"`segment_ids` must hold integers"):
      tf_mha.dot_product_attention(q, k, v, segment_ids=np.ones([2, 21]))
    with self.assertRaisesRegex(ValueError, r"`key_segment_ids` needs `segment_ids`"):
      tf_mha.dot_product_attention(q, k, v, key_segment_ids=_ids())
    with self.assertRaisesRegex(ValueError, r"`key_segment_ids` is required"):
      tf_mha.dot_product_attention(q[:, :5], k, v, segment_ids=_ids()[:, :5])

  def test_positions_restart_in_every_segment(self):
    got = tf_mha.segment_positions(_ids()).numpy()
    want = np.zeros([2, _T], np.int32)
    for row, start, n in _examples():
      want[row, start:start + n] = np.arange(n)
    self.assertAllEqual(got, want)
    jit = tf.function(tf_mha.segment_positions, jit_compile=True)
    self.assertAllEqual(jit(tf.constant(_ids())), want)


class LayerTest(tf.test.TestCase, parameterized.TestCase):

  def _layer_case(self, make_layer, jit):
    tf_keras.utils.set_random_seed(4)
    layer = make_layer()
    x = np.random.default_rng(5).standard_normal([2, _T, 12]).astype(np.float32)
    ids = _ids()
    packed = lambda x: layer(x, x, segment_ids=ids, use_causal_mask=True)
    alone = lambda x: layer(x, x, use_causal_mask=True)
    if jit:
      packed, alone = (tf.function(f, jit_compile=True) for f in (packed, alone))
    out, (grad,) = _with_grads(packed, x, real=ids != 0)
    for row, start, n in _examples():
      piece = x[row:row + 1, start:start + n]
      want, (want_grad,) = _with_grads(alone, piece)
      bounds.assert_close(out[row:row + 1, start:start + n], want, bounds.LAYER_ULPS)
      bounds.assert_close(grad[row:row + 1, start:start + n], want_grad,
                          bounds.LAYER_ULPS)

  @parameterized.product(flash=(None, True), jit=(False, True))
  def test_multi_head_attention(self, flash, jit):
    self._layer_case(lambda: tf_mha.MultiHeadAttention(
        num_heads=4, key_dim=8, flash_attention=flash), jit)

  @parameterized.parameters(False, True)
  def test_grouped_query_attention(self, jit):
    self._layer_case(lambda: tf_mha.GroupedQueryAttention(
        head_dim=8, num_query_heads=4, num_key_value_heads=2), jit)

  @parameterized.parameters("MultiHeadAttention", "GroupedQueryAttention")
  def test_keras3_layers(self, name):
    import keras  # pylint: disable=g-import-not-at-top
    keras.utils.set_random_seed(6)
    if name == "MultiHeadAttention":
      layer = tf_mha.keras3.MultiHeadAttention(num_heads=4, key_dim=8)
    else:
      layer = tf_mha.keras3.GroupedQueryAttention(
          head_dim=8, num_query_heads=4, num_key_value_heads=2)
    x = np.random.default_rng(7).standard_normal([2, _T, 12]).astype(np.float32)
    out = np.asarray(layer(x, x, segment_ids=_ids()))
    for row, start, n in _examples():
      want = np.asarray(layer(x[row:row + 1, start:start + n],
                              x[row:row + 1, start:start + n]))
      bounds.assert_close(out[row:row + 1, start:start + n], want, bounds.LAYER_ULPS)

  def test_subclass_computing_attention_itself_gets_the_mask(self):
    class Own(tf_mha.MultiHeadAttention):  # tf.keras' contract: one mask

      def _compute_attention(self, query, key, value, attention_mask=None,
                             training=None):
        self.seen = attention_mask
        return super()._compute_attention(query, key, value, attention_mask,
                                          training)

    tf_keras.utils.set_random_seed(8)
    layer = Own(num_heads=2, key_dim=4)
    x = np.random.default_rng(9).standard_normal([2, _T, 6]).astype(np.float32)
    out = layer(x, x, segment_ids=_ids())
    self.assertAllEqual(layer.seen, segments.mask(_ids(), _ids())[:, 0])
    row, start, n = _examples()[1]
    piece = x[row:row + 1, start:start + n]
    bounds.assert_close(out[row:row + 1, start:start + n], layer(piece, piece),
                        bounds.LAYER_ULPS)

  def test_layer_names_bad_segment_ids(self):
    layer = tf_mha.MultiHeadAttention(num_heads=2, key_dim=4, attention_axes=(1, 2))
    x = tf.ones([2, 3, 4, 6])
    with self.assertRaisesRegex(ValueError, r"`segment_ids` need .* one "
                                r"attention axis.*query rank 4"):
      layer(x, x, segment_ids=tf.ones([2, 3], tf.int32))


class PackedClassifierTest(tf.test.TestCase):
  """The demo classifier trained on packed rows, one prediction per sentence."""

  def test_trains_on_packed_rows_and_predicts_as_unpacked(self):
    from tf_mha.demo import packed_classifier  # pylint: disable=g-import-not-at-top
    classifier, packed, corpus, accuracy, padding = (
        packed_classifier.train_packed(epochs=6))
    self.assertGreaterEqual(accuracy, 0.95)  # the classifier, on unpacked test data
    self.assertLess(padding, 0.05)
    rows = packed_classifier.pack_corpus(corpus.test_ids, corpus.test_labels)
    got = packed.predict([rows["token_ids"], rows["segment_ids"],
                          rows["positions"]], verbose=0)  # [R, M, C]
    alone = classifier.predict(corpus.test_ids, verbose=0)
    count = rows["segment_ids"].max(axis=1)
    checked = 0
    for r, n in enumerate(count):
      bounds.assert_close(got[r, :n], alone[rows["index"][r, :n]], bounds.LAYER_ULPS)
      checked += n
    self.assertEqual(checked, len(corpus.test_ids))


class PackingTest(tf.test.TestCase):

  def _dataset(self, lengths):
    def examples():
      for i, n in enumerate(lengths):
        yield {"ids": np.arange(n, dtype=np.int32) + 1000 * i,
               "label": np.int32(i)}
    return tf.data.Dataset.from_generator(examples, output_signature={
        "ids": tf.TensorSpec([None], tf.int32),
        "label": tf.TensorSpec([], tf.int32)})

  def test_every_example_comes_out_whole_once(self):
    lengths = np.random.default_rng(10).integers(1, 40, 300)
    packed = tf_mha.data.pack(self._dataset(lengths), 64, buffer_size=50,
                              max_segments=8)
    self.assertEqual(packed.element_spec["ids"].shape, [64])
    self.assertEqual(packed.element_spec["label"].shape, [8])
    seen = []
    for row in packed.as_numpy_iterator():
      positions = tf_mha.segment_positions(row["segment_ids"][None])[0]
      self.assertAllEqual(row["positions"], positions)
      for s in range(1, row["segment_ids"].max() + 1):
        ids = row["ids"][row["segment_ids"] == s]
        example = row["label"][s - 1]
        self.assertAllEqual(ids, np.arange(lengths[example]) + 1000 * example)
        seen.append(example)
      self.assertTrue(np.all(row["ids"][row["segment_ids"] == 0] == 0))
    self.assertCountEqual(seen, range(len(lengths)))

  def test_rows_are_mostly_real_tokens(self):
    lengths = np.random.default_rng(11).integers(16, 257, 1000)
    packed = tf_mha.data.pack(self._dataset(lengths), 512)
    self.assertLess(tf_mha.data.padding_fraction(packed), 0.10)

  def test_an_example_longer_than_the_row(self):
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                r"length 70 does not fit a row of `length`=64"):
      list(tf_mha.data.pack(self._dataset([10, 70]), 64).as_numpy_iterator())
    rows = list(tf_mha.data.pack(self._dataset([10, 70]), 64,
                                 truncate=True).as_numpy_iterator())
    self.assertEqual(sum(int(np.count_nonzero(r["segment_ids"])) for r in rows), 74)
    with self.assertRaisesRegex(ValueError, r"`length` must be a positive integer"):
      tf_mha.data.pack(self._dataset([3]), 0)


if __name__ == "__main__":
  tf.test.main()
