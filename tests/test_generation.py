"""Greedy generation with the cache equals recomputing the whole prefix."""

import numpy as np
import tensorflow as tf
import tf_keras
from absl.testing import parameterized

import tf_mha
from tf_mha import generation

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


if __name__ == "__main__":
  tf.test.main()
