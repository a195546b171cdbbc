"""Greedy generation with the cache equals recomputing the whole prefix."""

import numpy as np
import tensorflow as tf
import tf_keras
from absl.testing import parameterized

import tf_mha
from tf_mha import generation
from tf_mha.generation import numpy_samplers
from tf_mha.generation import samplers

_VOCAB, _DIM, _HEADS, _KV_HEADS, _SLOTS = 13, 16, 4, 2, 24


class TinyDecoder(tf.Module):
  """Two causal blocks of GroupedQueryAttention with learned positions."""

  def __init__(self, kv_heads=_KV_HEADS):
    super().__init__()
    tf_keras.utils.set_random_seed(3)
    self.embed = tf_keras.layers.Embedding(_VOCAB, _DIM)
    self.position = tf_keras.layers.Embedding(_SLOTS, _DIM)
    self.blocks = [tf_mha.GroupedQueryAttention(
        head_dim=_DIM // _HEADS, num_query_heads=_HEADS,
        num_key_value_heads=kv_heads) for _ in range(2)]
    self.head = tf_keras.layers.Dense(_VOCAB)
    self.full(tf.zeros([1, 2], tf.int32))  # builds every weight

  def _inputs(self, ids, start):
    positions = start + tf.range(tf.shape(ids)[1])
    return self.embed(ids) * 3.0 + self.position(positions)[None]

  def full(self, ids):
    """Logits `[B, L, V]` recomputed over the whole sequence."""
    x = self._inputs(ids, 0)
    for block in self.blocks:
      x = x + block(x, x, use_causal_mask=True)
    return self.head(x)

  def step(self, ids, caches, index):
    x = self._inputs(ids, index)
    updated = []
    for block, cache in zip(self.blocks, caches):
      y, cache = block(x, x, cache=cache, cache_update_index=index)
      x = x + y
      updated.append(cache)
    return self.head(x), updated


def _uncached(model, prompt, count, end_id=None):
  ids = tf.constant(prompt)
  out = []
  for _ in range(count):
    token = tf.argmax(model.full(ids)[:, -1], -1, output_type=tf.int32)
    out.append(token)
    ids = tf.concat([ids, token[:, None]], 1)
  tokens = tf.stack(out, 1).numpy()
  if end_id is not None:
    ended = np.cumsum(tokens == end_id, axis=1) > 0
    tokens = np.where(ended, end_id, tokens)
  return tokens


def _tensor_caches(batch):
  return [tf.zeros(generation.cache_shape(batch, _SLOTS, _KV_HEADS, _DIM // _HEADS))
          for _ in range(2)]


class GreedyGenerateTest(tf.test.TestCase, parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.model = TinyDecoder()
    self.prompt = np.random.default_rng(0).integers(0, _VOCAB, (3, 5)).astype(np.int32)
    self.want = _uncached(self.model, self.prompt, 12)

  @parameterized.named_parameters(("eager", None), ("function", False), ("xla", True))
  def test_tensor_caches_match_recomputing(self, jit):
    run = lambda p: generation.greedy_generate(self.model.step, p, 12,
                                               _tensor_caches(3))[0]
    if jit is not None:
      run = tf.function(run, jit_compile=jit)
    self.assertAllEqual(run(self.prompt), self.want)
    self.assertGreater(len(np.unique(self.want)), 2)  # not a constant output

  def test_variable_caches_match_recomputing_under_xla(self):
    cache = generation.KVCache(2, batch=3, max_length=_SLOTS,
                               num_key_value_heads=_KV_HEADS, head_dim=_DIM // _HEADS)
    run = tf.function(lambda p: generation.greedy_generate(
        self.model.step, p, 12, cache.layers)[0], jit_compile=True)
    self.assertAllEqual(run(self.prompt), self.want)
    cache.reset()
    self.assertAllEqual(run(self.prompt), self.want)  # a second generation

  def test_end_token_ends_each_row(self):
    end_id = int(self.want[0, 3])
    want = _uncached(self.model, self.prompt, 12, end_id=end_id)
    got, _ = generation.greedy_generate(self.model.step, self.prompt, 12,
                                        _tensor_caches(3), end_id=end_id)
    self.assertAllEqual(got, want)
    self.assertTrue(np.all(want[0, 3:] == end_id))

  def test_multi_query_model(self):
    model = TinyDecoder(kv_heads=1)
    caches = [tf.zeros(generation.cache_shape(3, _SLOTS, 1, _DIM // _HEADS))
              for _ in range(2)]
    got, _ = generation.greedy_generate(model.step, self.prompt, 8, caches)
    self.assertAllEqual(got, _uncached(model, self.prompt, 8))

  def test_bad_arguments_are_named(self):
    with self.assertRaisesRegex(ValueError, "max_new_tokens"):
      generation.greedy_generate(self.model.step, self.prompt, 0, _tensor_caches(3))
    with self.assertRaisesRegex(ValueError, "need 28 cache slots"):
      generation.greedy_generate(self.model.step, self.prompt, 24, _tensor_caches(3))
    with self.assertRaisesRegex(ValueError, "prompt_ids"):
      generation.greedy_generate(self.model.step, self.prompt[0], 4, _tensor_caches(3))


class SamplingTest(tf.test.TestCase, parameterized.TestCase):
  """Samplers in the compiled loop (issue 26): greedy's limits, the top-k /
  top-p sets, seeds, and the distribution drawn from."""

  def setUp(self):
    super().setUp()
    self.model = TinyDecoder()
    self.prompt = np.random.default_rng(0).integers(0, _VOCAB, (3, 5)).astype(np.int32)

  def _generate(self, sampling, count=10, jit=None, limit=None):
    run = lambda p: generation.generate(self.model.step, p, count,
                                        _tensor_caches(3), sampling=sampling,
                                        limit=limit)[0]
    if jit is not None:
      run = tf.function(run, jit_compile=jit)
    return run(self.prompt).numpy()

  @parameterized.named_parameters(
      ("top_k_1", dict(temperature=1.0, top_k=1)),
      ("temperature_0", dict(temperature=0.0)),
      ("tiny_top_p", dict(temperature=2.0, top_p=1e-6)))
  def test_degenerate_sampling_is_greedy(self, options):
    greedy = self._generate(None)
    self.assertAllEqual(self._generate(generation.Sampling(seed=(1, 2), **options)),
                        greedy)

  @parameterized.named_parameters(("eager", None), ("xla", True))
  def test_the_same_seed_gives_the_same_tokens(self, jit):
    sampling = generation.Sampling(temperature=1.5, top_k=6, top_p=0.9, seed=(4, 5))
    first = self._generate(sampling, jit=jit)
    self.assertAllEqual(self._generate(sampling, jit=not jit if jit else True), first)
    other = self._generate(generation.Sampling(temperature=1.5, top_k=6, top_p=0.9,
                                               seed=(4, 6)), jit=jit)
    self.assertNotAllEqual(other, first)  # the seed matters
    self.assertNotAllEqual(first, self._generate(None))  # and it samples

  def test_per_row_parameters_and_limits(self):
    greedy = self._generate(None)
    sampling = generation.Sampling(temperature=[0.0, 1.5, 0.0], seed=(7, 7))
    got = self._generate(sampling, limit=tf.constant([10, 4, 7]))
    self.assertAllEqual(got[0], greedy[0])  # greedy rows stay greedy
    self.assertAllEqual(got[2, :7], greedy[2, :7])
    self.assertAllEqual(got[1, 4:], np.zeros(6))  # past its own limit
    self.assertAllEqual(got[2, 7:], np.zeros(3))

  def test_samples_stay_in_the_top_k_and_top_p_sets(self):
    rng = np.random.default_rng(8)
    logits = rng.standard_normal([64, 20]).astype(np.float32) * 2.0
    for top_k, top_p in ((3, None), (None, 0.7), (5, 0.5)):
      allowed = np.ones_like(logits, bool)
      order = np.argsort(-logits, axis=1)
      if top_k:
        allowed &= logits >= np.take_along_axis(logits, order[:, top_k - 1:top_k], 1)
      if top_p:
        z = np.where(allowed, logits, -np.inf)
        probs = np.exp(z - z.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        ranked = np.take_along_axis(probs, order, 1)
        before = np.cumsum(ranked, 1) - ranked
        keep = np.zeros_like(allowed)
        np.put_along_axis(keep, order, before < top_p, 1)
        allowed &= keep
      sampling = generation.Sampling(temperature=1.0, top_k=top_k, top_p=top_p)
      for step in range(20):
        tokens = generation.sample(logits, sampling, step).numpy()
        self.assertTrue(np.all(allowed[np.arange(64), tokens]), (top_k, top_p))

  def test_a_row_with_its_own_seed_draws_the_same_in_any_batch(self):
    sampling = lambda seed: generation.Sampling(temperature=1.5, top_k=8, seed=seed)
    batch = self._generate(sampling([[3, 0], [4, 0], [5, 0]]))
    for row in range(3):
      alone = generation.generate(
          self.model.step, self.prompt[row:row + 1], 10, _tensor_caches(1),
          sampling=sampling([[3 + row, 0]]))[0].numpy()
      self.assertAllEqual(alone[0], batch[row])
    # A batch seed s gives row r the seed (s[0], s[1] + r).
    self.assertAllEqual(self._generate(sampling((3, 7))),
                        self._generate(sampling([[3, 7], [3, 8], [3, 9]])))

  def test_numpy_sampler_picks_the_same_tokens(self):
    """The phone side's sampler (`numpy_samplers`) against the graph's, on
    the same logits, seeds and steps: the same draws, the same tokens."""
    logits = (np.random.default_rng(4).standard_normal([40, 300]) * 3).astype(np.float32)
    for options in (dict(temperature=1.0), dict(temperature=0.7, top_k=10),
                    dict(temperature=1.3, top_p=0.8),
                    dict(temperature=2.0, top_k=50, top_p=0.9),
                    dict(temperature=0.0, top_k=3)):
      for step in (0, 5):
        seeds = np.stack([np.full(40, 11), np.arange(40)], 1)
        want = generation.sample(logits, generation.Sampling(seed=seeds, **options),
                                 step).numpy()
        got = [numpy_samplers.sample(logits[r], generation.Sampling(
            seed=(11, r), **options), step) for r in range(40)]
        self.assertAllEqual(got, want, msg=str(options))
    self.assertAllEqual(numpy_samplers.uniform(300, (5, 7), 3),
                        samplers.uniform([1, 300], [[5, 7]], 3).numpy()[0])
    self.assertEqual(numpy_samplers.sample(logits[0], None), int(np.argmax(logits[0])))

  def test_draws_follow_the_distribution(self):
    """Chi-square on 40000 seeded draws from a fixed 5-token distribution
    (temperature 2 and top-k 4 applied): the statistic is 2.4, far below
    the 0.1% critical value of 16.3 for 3 degrees of freedom."""
    logits = np.log(np.array([0.4, 0.25, 0.2, 0.1, 0.05], np.float32))
    draws = generation.sample(np.tile(logits, [40000, 1]), generation.Sampling(
        temperature=2.0, top_k=4, seed=(9, 9))).numpy()
    expected = np.exp(logits[:4] / 2.0)
    expected = expected / expected.sum() * len(draws)
    counts = np.bincount(draws, minlength=5)
    self.assertEqual(counts[4], 0)  # outside the top 4
    chi2 = float(np.sum((counts[:4] - expected) ** 2 / expected))
    self.assertLess(chi2, 16.27)


class GenerationBenchmarkTableTest(tf.test.TestCase):

  def test_table_states_the_targets_and_marks_what_was_not_timed(self):
    from tf_mha.benchmarks import generation as benchmark  # pylint: disable=g-import-not-at-top
    rows = [benchmark.Row("TensorFlow, XLA (tf_mha)", 9000.0, 600.0, 36.0, 1.6, 1.7, 580.0),
            benchmark.Row("LiteRT, float32", 5000.0, 400.0, 20.0, 2.0, 2.0, 390.0),
            benchmark.Row("KerasHub LlamaCausalLM.generate", 5000.0, 150.0, None, None,
                          None, 145.0)]
    text = benchmark.table(rows)
    self.assertIn("| KerasHub LlamaCausalLM.generate | 5000 | 150.0 | 145.0 | - | - "
                  "| - | - |", text)
    self.assertIn("| TensorFlow, XLA (tf_mha) | 9000 | 600.0 | 580.0 | 36.0 | 16.7x "
                  "| 1.60 / 1.70 | 1.06 |", text)
    self.assertIn("LiteRT float32: 1.50x", text)
    self.assertIn("end to end / KerasHub's generate: 4.00x", text)
    self.assertIn("cached decoding / KerasHub's: 4.00x", text)


if __name__ == "__main__":
  tf.test.main()
