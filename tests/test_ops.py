"""The pure op, plain and blockwise, against the float64 reference."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

import tf_mha
from tf_mha.ops import blocks
from tf_mha.ops import chunked
from tf_mha.ops import flash
from tf_mha.ops import groups
from tf_mha.ops import masks
from tests import bounds
from tests import reference

_RNG = np.random.default_rng(3)


def _inputs(b, t, s, n, h, v):
  return (_RNG.normal(size=(b, t, n, h)).astype(np.float32),
          _RNG.normal(size=(b, s, n, h)).astype(np.float32),
          _RNG.normal(size=(b, s, n, v)).astype(np.float32))


# name, (B, T, S, N, H, V), causal, block sizes, mask shape or None
_GRID = (
    ("square", (2, 13, 13, 2, 5, 5), False, (4, 3), None),
    ("square_causal", (2, 13, 13, 2, 5, 5), True, (4, 3), None),
    ("cross_causal", (1, 7, 11, 3, 2, 3), True, (3, 4), None),
    ("cross_causal_t_gt_s", (1, 11, 5, 1, 3, 2), True, (2, 2), None),
    ("exact_blocks", (2, 16, 16, 2, 8, 8), True, (8, 8), (2, 1, 16, 16)),
    ("padding_mask", (2, 9, 17, 2, 4, 3), False, (4, 8), (2, 1, 1, 17)),
    ("head_mask", (2, 9, 7, 3, 4, 4), True, (5, 3), (1, 3, 9, 7)),
    ("length_one", (3, 1, 1, 2, 3, 3), True, (1, 1), None),
    ("default_blocks", (1, 37, 29, 2, 4, 4), False, None, (1, 1, 37, 29)),
)


class DotProductAttentionTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(*_GRID)
  def test_flash_and_plain_match_reference(self, dims, causal, blocks, mask_shape):
    q, k, v = _inputs(*dims)
    mask = None
    if mask_shape is not None:
      mask = _RNG.random(mask_shape) > 0.3
      mask.reshape(-1)[::7] = False
    ref_out, ref_probs = reference.attention(q, k, v, mask=mask, causal=causal)
    plain, probs = tf_mha.dot_product_attention(
        q, k, v, mask=mask, is_causal=causal, flash_attention=False,
        return_scores=True)
    blockwise = tf_mha.dot_product_attention(
        q, k, v, mask=mask, is_causal=causal, flash_attention=True,
        block_sizes=blocks)
    scale = np.abs(ref_out).max()
    self.assertAllClose(plain, ref_out, rtol=1e-5, atol=1e-5 * scale)
    bounds.assert_close(probs, ref_probs, bounds.LAYER_ULPS)
    self.assertAllClose(blockwise, ref_out, rtol=1e-5, atol=1e-5 * scale)

  @parameterized.named_parameters(*_GRID)
  def test_flash_gradients_match_plain(self, dims, causal, blocks, mask_shape):
    q, k, v = (tf.constant(x) for x in _inputs(*dims))
    mask = None if mask_shape is None else _RNG.random(mask_shape) > 0.3
    cotangent = tf.constant(_RNG.normal(size=dims[:2] + (dims[3], dims[5])),
                            tf.float32)
    grads = []
    for use_flash in (False, True):
      with tf.GradientTape() as tape:
        tape.watch([q, k, v])
        out = tf_mha.dot_product_attention(
            q, k, v, mask=mask, is_causal=causal, flash_attention=use_flash,
            block_sizes=blocks if use_flash else None)
        loss = tf.reduce_sum(out * cotangent)
      grads.append(tape.gradient(loss, [q, k, v]))
    size = bounds.joint_scale(grads[0])  # dq of a lone key is 0 but for rounding
    for plain, blockwise in zip(*grads):
      bounds.assert_close(blockwise, plain, bounds.LAYER_ULPS, scale_of=size)

  def test_fully_masked_rows_uniform_with_finite_gradients(self):
    q, k, v = (tf.constant(x) for x in _inputs(2, 8, 8, 2, 4, 4))
    mask = np.ones((2, 1, 8, 8), bool)
    mask[0, 0, 5] = False
    mask[1, 0, 0] = False
    ref_out, _ = reference.attention(q, k, v, mask=mask, causal=True)
    for use_flash in (False, True):
      with tf.GradientTape() as tape:
        tape.watch([q, k, v])
        out = tf_mha.dot_product_attention(q, k, v, mask=mask, is_causal=True,
                                           flash_attention=use_flash,
                                           block_sizes=(2, 2))
        loss = tf.reduce_sum(out ** 2)
      bounds.assert_close(out, ref_out, bounds.LAYER_ULPS)
      bounds.assert_close(out[0, 5], tf.reduce_mean(v[0], axis=0), bounds.LAYER_ULPS)
      for g in tape.gradient(loss, [q, k, v]):
        self.assertTrue(np.all(np.isfinite(g.numpy())))

  @parameterized.named_parameters(("plain", False), ("flash", True))
  def test_xla_and_dynamic_shapes_agree_with_eager(self, use_flash):
    q, k, v = _inputs(2, 19, 23, 2, 4, 4)
    fn = lambda a, b, c: tf_mha.dot_product_attention(
        a, b, c, is_causal=True, flash_attention=use_flash, block_sizes=(8, 8))
    eager = fn(q, k, v)
    spec = tf.TensorSpec([None, None, 2, 4], tf.float32)
    dynamic = tf.function(fn, input_signature=[spec] * 3)(q, k, v)
    xla = tf.function(fn, jit_compile=True)(q, k, v)
    bounds.assert_close(dynamic, eager, bounds.LAYER_ULPS)
    bounds.assert_close(xla, eager, bounds.LAYER_ULPS)

  def test_flash_gradient_under_xla(self):
    q, k, v = (tf.constant(x) for x in _inputs(1, 24, 24, 2, 4, 4))

    @tf.function(jit_compile=True)
    def grads(a, b, c, use_flash):
      with tf.GradientTape() as tape:
        tape.watch([a, b, c])
        out = tf_mha.dot_product_attention(a, b, c, is_causal=True,
                                           flash_attention=use_flash,
                                           block_sizes=(8, 8))
        loss = tf.reduce_sum(tf.sin(out))
      return tape.gradient(loss, [a, b, c])

    want = grads(q, k, v, False)
    for plain, blockwise in zip(want, grads(q, k, v, True)):
      bounds.assert_close(blockwise, plain, bounds.LAYER_ULPS,
                          scale_of=bounds.joint_scale(want))

  @parameterized.named_parameters(("plain", False), ("flash", True))
  def test_dropout_is_unbiased_and_seeded(self, use_flash):
    q, k, v = _inputs(1, 6, 6, 1, 4, 4)
    seed = tf.constant([1, 2])
    run = lambda s: tf_mha.dot_product_attention(
        q, k, v, dropout_rate=0.3, dropout_seed=s, flash_attention=use_flash,
        block_sizes=(2, 3))
    self.assertAllClose(run(seed), run(seed))
    mean = np.mean([run(tf.constant([i, 7])).numpy() for i in range(400)], axis=0)
    self.assertAllClose(mean, reference.attention(q, k, v)[0], atol=0.15)

  def test_flash_dropout_gradient_matches_numeric(self):
    q, k, v = (tf.constant(x, tf.float64) for x in _inputs(1, 5, 5, 1, 3, 3))
    seed = tf.constant([4, 5])
    fn = lambda a, b, c: tf_mha.dot_product_attention(
        a, b, c, dropout_rate=0.4, dropout_seed=seed, flash_attention=True,
        is_causal=True, block_sizes=(2, 2))
    theoretical, numerical = tf.test.compute_gradient(fn, [q, k, v])
    for t, n in zip(theoretical, numerical):  # float64
      self.assertAllClose(t, n, rtol=1e-5, atol=1e-6)

  @parameterized.named_parameters(
      ("rank", dict(query=tf.ones([2, 3, 4])), "query.*rank 4"),
      ("lengths", dict(value=tf.ones([1, 6, 2, 4])), "same length"),
      ("heads", dict(key=tf.ones([1, 5, 3, 4]), value=tf.ones([1, 5, 3, 4])),
       "number of heads"),
      ("head_size", dict(key=tf.ones([1, 5, 2, 3])), "head size"),
      ("dropout", dict(dropout_rate=1.0), r"dropout_rate=1\.0"),
      ("dropout_type", dict(dropout_rate="0.1"), "dropout_rate='0.1'"),
      ("flash_scores", dict(flash_attention=True, return_scores=True),
       "flash_attention=True"),
      ("flash_type", dict(flash_attention="yes"), "flash_attention='yes'"),
      ("missing_key", dict(key=None), "`key` is required"),
      ("mask_shape", dict(mask=tf.ones([1, 1, 3, 4], tf.bool)),
       r"`mask` must broadcast to \[B, N, T, S\] = \[1, 2, 3, 5\].*\(1, 1, 3, 4\)"),
      ("mask_rank", dict(mask=tf.ones([1, 1, 1, 3, 5], tf.bool)), "`mask`"),
      ("scale", dict(scale="0.5"), "scale='0.5'"),
      ("scale_tensor", dict(scale=tf.ones([2])), "`scale`"),
      ("window", dict(sliding_window=0), "sliding_window=0"),
      ("blocks", dict(block_sizes=(0, 4), flash_attention=True),
       r"block_sizes=\(0, 4\)"),
      ("blocks_type", dict(block_sizes="ab", flash_attention=True),
       "block_sizes='ab'"))
  def test_errors_name_the_argument(self, overrides, pattern):
    args = dict(query=tf.ones([1, 3, 2, 4]), key=tf.ones([1, 5, 2, 4]),
                value=tf.ones([1, 5, 2, 4]))
    args.update(overrides)
    with self.assertRaisesRegex(ValueError, pattern):
      tf_mha.dot_product_attention(**args)

  @parameterized.named_parameters(
      ("int_query", "query", tf.ones([1, 3, 2, 4], tf.int32), "dtype int32"),
      ("string_value", "value", tf.fill([1, 5, 2, 4], "a"), "dtype string"),
      ("object", "key", object(), "an array of numbers"))
  def test_inputs_must_be_floating_point(self, name, bad, pattern):
    args = dict(query=tf.ones([1, 3, 2, 4]), key=tf.ones([1, 5, 2, 4]),
                value=tf.ones([1, 5, 2, 4]))
    args[name] = bad
    with self.assertRaisesRegex(TypeError, f"`{name}`.*{pattern}"):
      tf_mha.dot_product_attention(**args)

  def test_mask_checks_accept_what_broadcasts(self):
    q, k, v = _inputs(2, 3, 5, 2, 4, 4)
    ref = tf_mha.dot_product_attention(q, k, v)
    for shape in ([5], [3, 1], [1, 3, 5], [2, 1, 1, 5]):
      out = tf_mha.dot_product_attention(q, k, v, mask=tf.ones(shape, tf.bool))
      self.assertAllClose(out, ref)

  def test_bfloat16_and_float16_accuracy(self):
    q, k, v = _inputs(2, 40, 40, 2, 8, 8)
    ref, _ = reference.attention(q, k, v, causal=True)
    for dtype, tol in ((tf.float16, 1e-2), (tf.bfloat16, 5e-2)):
      for use_flash in (False, True):
        out = tf_mha.dot_product_attention(
            *(tf.cast(x, dtype) for x in (q * 30, k, v)), is_causal=True,
            scale=1 / (30 * np.sqrt(8)), flash_attention=use_flash,
            block_sizes=(16, 16))
        self.assertEqual(out.dtype, dtype)
        err = np.abs(out.numpy().astype(np.float64) - ref).max() / np.abs(ref).max()
        self.assertLess(err, tol, msg=f"{dtype} flash={use_flash}")


class CausalChunksTest(tf.test.TestCase, parameterized.TestCase):
  """The plain causal path splits static queries into chunks that skip the
  keys above the diagonal; it must equal the unchunked path exactly."""

  def setUp(self):
    super().setUp()
    # Small chunks, so that small shapes take (and test) the chunked path.
    self._rows = chunked._chunk_rows
    chunked._chunk_rows = lambda length: 3
    self.addCleanup(setattr, chunked, "_chunk_rows", self._rows)

  @parameterized.named_parameters(
      ("self", (2, 11, 11, 2, 4, 3), None),
      ("t_gt_s", (1, 11, 7, 2, 3, 3), None),
      ("t_lt_s", (2, 8, 13, 1, 4, 5), None),
      ("padding_mask", (2, 11, 11, 2, 4, 4), (2, 1, 1, 11)),
      ("full_mask_rows", (2, 10, 12, 2, 3, 3), (2, 2, 10, 12)),
      ("two_d_mask", (1, 9, 9, 2, 3, 3), (9, 9)),
  )
  def test_matches_reference_and_unchunked_gradients(self, dims, mask_shape):
    q, k, v = (tf.constant(x, tf.float64) for x in _inputs(*dims))
    mask = None
    if mask_shape is not None:
      mask = _RNG.random(mask_shape) > 0.4
      if len(mask_shape) == 4 and mask_shape[2] > 1:
        mask[:, :, 4, :] = False  # row 4 sees nothing (falls in a short chunk)
    self.assertIsNotNone(chunked.causal_chunks(q, k, None))
    cotangent = tf.constant(_RNG.normal(size=dims[:2] + (dims[3], dims[5])))

    def run(chunked):
      with tf.GradientTape() as tape:
        tape.watch([q, k, v])
        # return_scores=True forces the unchunked path.
        out = tf_mha.dot_product_attention(
            q, k, v, mask=mask, is_causal=True, flash_attention=False,
            return_scores=not chunked)
        out = out if chunked else out[0]
        loss = tf.reduce_sum(out * cotangent)
      return out, tape.gradient(loss, [q, k, v])

    out, grads = run(True)
    ref_out, ref_grads = run(False)
    expected, _ = reference.attention(q.numpy(), k.numpy(), v.numpy(), mask=mask,
                                      causal=True)
    self.assertAllClose(out, expected, rtol=1e-10, atol=1e-10)
    self.assertAllClose(ref_out, expected, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, ref_grads):
      self.assertAllClose(got, want, rtol=1e-9, atol=1e-10)

  def test_dropout_seeded_unbiased_and_gradient_matches_numeric(self):
    q, k, v = (tf.constant(x, tf.float64) for x in _inputs(1, 7, 7, 1, 3, 3))
    run = lambda seed, a=q, b=k, c=v: tf_mha.dot_product_attention(
        a, b, c, is_causal=True, dropout_rate=0.3, dropout_seed=seed,
        flash_attention=False)
    self.assertAllClose(run(tf.constant([1, 2])), run(tf.constant([1, 2])))
    mean = np.mean([run(tf.constant([i, 7])).numpy() for i in range(400)], axis=0)
    expected, _ = reference.attention(q.numpy(), k.numpy(), v.numpy(), causal=True)
    self.assertAllClose(mean, expected, atol=0.15)
    seed = tf.constant([4, 5])
    theoretical, numerical = tf.test.compute_gradient(
        lambda a, b, c: run(seed, a, b, c), [q, k, v])
    for t, n in zip(theoretical, numerical):  # float64
      self.assertAllClose(t, n, rtol=1e-6, atol=1e-6)

  def test_chunking_applies_only_to_static_long_causal_queries(self):
    chunked._chunk_rows = self._rows
    q, k = tf.zeros([1, 512, 2, 4]), tf.zeros([1, 300, 2, 4])
    # Without XLA: at least 256 rows, at most four chunks.
    self.assertEqual(chunked.causal_chunks(q, k, None),
                     [(0, 256, 0, 256), (256, 512, 0, 300)])
    # A sliding window starts each chunk's keys W - 1 before its first row.
    self.assertEqual(chunked.causal_chunks(q, k, None, window=100),
                     [(0, 256, 0, 256), (256, 512, 157, 300)])
    self.assertLen(chunked.causal_chunks(tf.zeros([1, 2048, 2, 4]), q, None), 4)
    self.assertIsNone(chunked.causal_chunks(tf.zeros([1, 511, 2, 4]), q, None))
    # Compiled by XLA (traced in a jit function): 128 rows.
    traced = []
    record = lambda a, b: traced.append(chunked.causal_chunks(a, b, None)) or a
    tf.function(record, jit_compile=True)(q, k)
    tf.function(record)(q, k)
    self.assertEqual(traced[0][:2], [(0, 128, 0, 128), (128, 256, 0, 256)])
    self.assertEqual(traced[0][-1], (384, 512, 0, 300))
    self.assertLen(traced[1], 2)
    self.assertIsNone(chunked.causal_chunks(tf.zeros([1, 255, 2, 4]), q, None))
    dynamic = tf.TensorSpec([None, None, 2, 4])
    self.assertIsNone(tf.function(lambda x: chunked.causal_chunks(x, x, None))
                      .get_concrete_function(dynamic).structured_outputs)


class SlidingWindowTest(tf.test.TestCase, parameterized.TestCase):
  """`sliding_window` on every path (plain, causal chunks, blockwise with
  block skipping) against the reference, values and gradients."""

  @parameterized.named_parameters(
      ("self_causal", (2, 23, 23, 2, 4, 3), True, None),
      ("self_band", (1, 23, 23, 2, 3, 3), False, None),
      ("cross_t_gt_s_causal", (1, 29, 11, 2, 3, 4), True, None),  # rows see nothing
      ("cross_t_lt_s_band", (2, 9, 26, 1, 4, 3), False, None),
      ("masked_causal", (2, 23, 23, 2, 3, 3), True, (2, 1, 23, 23)),
  )
  def test_every_path_matches_reference(self, dims, causal, mask_shape):
    q, k, v = (tf.constant(x, tf.float64) for x in _inputs(*dims))
    mask = None if mask_shape is None else _RNG.random(mask_shape) > 0.3
    cotangent = tf.constant(_RNG.normal(size=dims[:2] + (dims[3], dims[5])))
    rows = chunked._chunk_rows
    chunked._chunk_rows = lambda length: 5  # small chunks at small lengths
    self.addCleanup(setattr, chunked, "_chunk_rows", rows)
    for window in (1, 4, 9):
      expected, _ = reference.attention(q.numpy(), k.numpy(), v.numpy(), mask=mask,
                                        causal=causal, window=window)
      results = {}
      for path, kwargs in (("plain", dict(flash_attention=False, return_scores=True)),
                           ("chunked", dict(flash_attention=False)),
                           ("flash", dict(flash_attention=True, block_sizes=(4, 3)))):
        with tf.GradientTape() as tape:
          tape.watch([q, k, v])
          out = tf_mha.dot_product_attention(
              q, k, v, mask=mask, is_causal=causal, sliding_window=window, **kwargs)
          out = out[0] if path == "plain" else out
          loss = tf.reduce_sum(out * cotangent)
        results[path] = tape.gradient(loss, [q, k, v])
        self.assertAllClose(out, expected, rtol=1e-9, atol=1e-10,
                            msg=f"{path} window={window}")
      for path in ("chunked", "flash"):
        for got, want in zip(results[path], results["plain"]):
          self.assertAllClose(got, want, rtol=1e-8, atol=1e-9,
                              msg=f"{path} window={window}")
    if causal and mask_shape is None and dims[1] == dims[2]:
      chunks = chunked.causal_chunks(q, k, None, window=4)
      self.assertGreater(chunks[-1][2], 0)  # the chunked path skips keys

  def test_blockwise_visits_only_blocks_in_the_band(self):
    plan = blocks.make_plan(tf.zeros([1, 64, 1, 2]), tf.zeros([1, 64, 1, 2]),
                            8, 8, True, 10, 0.0)
    ranges = [tuple(int(x) for x in blocks.key_block_range(plan, i))
              for i in range(8)]
    self.assertEqual(ranges[0], (0, 1))
    self.assertEqual(ranges[5], (3, 6))  # rows 40-47 see keys 31-47
    plan = plan._replace(is_causal=False)
    self.assertEqual(tuple(int(x) for x in blocks.key_block_range(plan, 5)),
                     (3, 8))  # and keys up to 56
    self.assertEqual(tuple(int(x) for x in blocks.query_block_range(plan, 3)),
                     (1, 6))  # keys 24-31 are seen by rows 15-40

  def test_bad_window(self):
    x = tf.ones([1, 3, 1, 2])
    for bad in (0, -2, 1.5, True):
      with self.assertRaisesRegex(ValueError, "sliding_window="):
        tf_mha.dot_product_attention(x, x, x, sliding_window=bad)
    self.assertAllClose(  # a NumPy integer is an integer
        tf_mha.dot_product_attention(x, x, x, sliding_window=np.int64(2)),
        tf_mha.dot_product_attention(x, x, x, sliding_window=2))


class MasksTest(tf.test.TestCase):

  def test_causal_mask_is_top_left_aligned(self):
    self.assertAllEqual(masks.causal_mask(2, 4),
                        [[True, False, False, False], [True, True, False, False]])
    # An offset block is the same block of the full mask.
    full = masks.causal_mask(7, 9).numpy()
    self.assertAllEqual(masks.causal_mask(3, 4, query_offset=2, key_offset=5),
                        full[2:5, 5:9])

  def test_combine_and_large_negative(self):
    self.assertIsNone(masks.combine_masks(None, None))
    self.assertAllEqual(masks.combine_masks([1, 0, 1], [True, True, False]),
                        [True, False, False])
    for dtype in (tf.float16, tf.bfloat16, tf.float32):
      fill = tf.constant(masks.large_negative(dtype), dtype)
      self.assertTrue(np.isfinite(float(fill + fill)))

  def test_block_size_choice(self):
    self.assertEqual(flash.choose_block_sizes(7, 3000), (7, 1024))
    self.assertEqual(flash.choose_block_sizes(None, None), flash.DEFAULT_BLOCK_SIZES)
    self.assertEqual(flash.choose_block_sizes(4096, 4096, batch_heads=8), (1024, 1024))
    self.assertEqual(flash.choose_block_sizes(4096, 4096, batch_heads=32), (512, 512))
    self.assertEqual(flash.choose_block_sizes(4096, 4096, batch_heads=512), (128, 128))
    self.assertEqual(flash.choose_block_sizes(300, 4096, batch_heads=32), (300, 512))


class GroupedQueryTest(tf.test.TestCase, parameterized.TestCase):
  """Keys and values with K heads (K divides N), on every path, against
  the float64 reference with the keys repeated in NumPy."""

  def _inputs(self, t, s, n, k, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, t, n, 8)).astype(np.float32)
    kk = rng.standard_normal((2, s, k, 8)).astype(np.float32)
    v = rng.standard_normal((2, s, k, 6)).astype(np.float32)
    return q, kk, v

  def _reference(self, q, k, v, **kwargs):
    group = q.shape[2] // k.shape[2]
    return reference.attention(q, np.repeat(k, group, 2), np.repeat(v, group, 2),
                               **kwargs)

  @parameterized.named_parameters(
      *[(f"{path}_k{k}_{'causal' if causal else 'full'}{'_window' if w else ''}",
         path, k, causal, w)
        for path in ("plain", "chunked", "flash") for k in (4, 2, 1)
        for causal in (False, True) for w in (None, 5)
        if not (path == "chunked" and not causal)])
  def test_matches_reference(self, path, kv_heads, causal, window):
    t = 520 if path == "chunked" else 13
    q, k, v = self._inputs(t, t if causal else 11, 4, kv_heads)
    mask = np.random.default_rng(5).random((2, 1, t, k.shape[1])) < 0.8
    kwargs = dict(flash_attention=path == "flash",
                  block_sizes=(4, 3) if path == "flash" else None)
    if path == "chunked":
      chunks = chunked.causal_chunks(groups.rows_of_groups(tf.constant(q), 4 // kv_heads),
                                 tf.constant(k), None, window, 4 // kv_heads)
      self.assertGreater(len(chunks), 1)
    got = tf_mha.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                       sliding_window=window, **kwargs)
    want, _ = self._reference(q, k, v, mask=mask, causal=causal, window=window)
    bounds.assert_close(got, want, bounds.LAYER_ULPS)

  @parameterized.named_parameters(("k2", 2), ("k1", 1))
  def test_scores_and_head_mask(self, kv_heads):
    q, k, v = self._inputs(5, 7, 4, kv_heads)
    mask = np.random.default_rng(6).random((2, 4, 5, 7)) < 0.7  # per query head
    out, scores = tf_mha.dot_product_attention(q, k, v, mask=mask,
                                               return_scores=True)
    want, probs = self._reference(q, k, v, mask=mask)
    bounds.assert_close(out, want, bounds.LAYER_ULPS)
    bounds.assert_close(scores, probs, bounds.LAYER_ULPS)

  @parameterized.named_parameters(("plain", False, 13), ("chunked", False, 520),
                                  ("flash", True, 13))
  def test_gradients_match_repeated_keys(self, flash_attention, t):
    q, k, v = (tf.constant(x) for x in self._inputs(t, t, 4, 2))
    kwargs = dict(is_causal=True, sliding_window=9, flash_attention=flash_attention,
                  block_sizes=(4, 3) if flash_attention else None)
    with tf.GradientTape(persistent=True) as tape:
      tape.watch([q, k, v])
      grouped = tf.reduce_sum(tf_mha.dot_product_attention(q, k, v, **kwargs) ** 2)
      repeated = tf.reduce_sum(tf_mha.dot_product_attention(
          q, tf.repeat(k, 2, axis=2), tf.repeat(v, 2, axis=2), **kwargs) ** 2)
    want = tape.gradient(repeated, [q, k, v])
    for a, b in zip(tape.gradient(grouped, [q, k, v]), want):
      bounds.assert_close(a, b, bounds.LAYER_ULPS, scale_of=bounds.joint_scale(want))

  def test_heads_must_divide(self):
    q, k, v = self._inputs(3, 3, 4, 3)
    with self.assertRaisesRegex(ValueError, "4 query heads.*3 key heads"):
      tf_mha.dot_product_attention(q, k, v)

  @parameterized.named_parameters(("plain", False), ("flash", True))
  def test_query_start_is_a_decode_step(self, flash_attention):
    """Queries at positions [i, i + L) over keys [0, S): the same rows as
    causal attention over the whole sequence, the keys past them ignored."""
    q, k, v = self._inputs(12, 12, 4, 2)
    full, _ = self._reference(q, k, v, causal=True, window=5)
    step = tf.function(lambda i, length: tf_mha.dot_product_attention(
        q[:, 7:7 + length], k, v, is_causal=True, sliding_window=5,
        flash_attention=flash_attention, block_sizes=(2, 3) if flash_attention else None,
        query_start=i), jit_compile=True)
    bounds.assert_close(step(tf.constant(7), 2), full[:, 7:9], bounds.LAYER_ULPS)
    bounds.assert_close(step(tf.constant(7), 1), full[:, 7:8], bounds.LAYER_ULPS)


class HostileInputTest(tf.test.TestCase):

  def test_flash_with_no_keys_matches_the_plain_path(self):
    q = tf.constant(np.random.default_rng(0).standard_normal((2, 3, 4, 8)), tf.float32)
    empty = tf.zeros([2, 0, 4, 8])
    flash = tf_mha.dot_product_attention(q, empty, empty, flash_attention=True)
    plain = tf_mha.dot_product_attention(q, empty, empty, flash_attention=False)
    self.assertTrue(np.all(np.isfinite(flash.numpy())))
    self.assertAllEqual(flash, plain)

  def test_string_masks_are_named(self):
    q = tf.ones([2, 3, 4, 8])
    with self.assertRaisesRegex(TypeError, "`mask` must be boolean or numeric.*string"):
      tf_mha.dot_product_attention(q, q, q, mask=tf.constant("x"))
    layer = tf_mha.MultiHeadAttention(2, 4)
    x = tf.ones([2, 3, 8])
    with self.assertRaisesRegex(TypeError, "`attention_mask` must be boolean or numeric"):
      layer(x, x, attention_mask=np.full((2, 3, 3), "a"))
    with self.assertRaisesRegex(TypeError, "`query_mask` must be boolean or numeric"):
      layer(x, x, query_mask=np.full((2, 3), "a"))


if __name__ == "__main__":
  tf.test.main()
