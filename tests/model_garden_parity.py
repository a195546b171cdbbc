"""Model Garden's attention layers, blocks and encoders, run for a parity test.

  python -m tests.model_garden_parity keras OUT.npz
  python -m tests.model_garden_parity tf_mha OUT.npz KERAS_OUT.npz

Model Garden binds its base class when it is imported (and registers its
classes with gin and Keras, which refuse a second import), so each side runs
in its own process: `keras` builds every case on tf_keras' layer and saves
its weights and outputs; `tf_mha` patches tf_keras first, builds the same
cases on tf_mha's layer, loads those weights and saves its outputs, eager and
under `jit_compile=True`. tests/test_model_garden.py compares them.
"""

import sys

import numpy as np
import tensorflow as tf
import tf_keras

import tf_mha


def _normal(*shape, seed=0):
  return tf.constant(np.random.default_rng(seed).standard_normal(shape), tf.float32)


def _mask(batch, t, s, seed=1):
  mask = np.random.default_rng(seed).random((batch, t, s)) < 0.8
  mask[:, :, 0] = True
  return tf.constant(mask.astype(np.float32))


def _called(layer, **kwargs):
  return layer, lambda: layer(**kwargs)


def _cached_decode(layers, tpu_step):
  """CachedAttention decoding token by token, with the cache grown by
  concat or written at `decode_loop_step` (Model Garden's TPU path)."""
  batch, length, heads, size = 2, 6, 4, 8
  layer = layers.CachedAttention(num_heads=heads, key_dim=size)
  x = _normal(batch, length, 16)
  causal = np.tril(np.ones((length, length), np.float32))

  def decode():
    slots = length if tpu_step else 0
    cache = {"key": tf.zeros([batch, slots, heads, size]),
             "value": tf.zeros([batch, slots, heads, size])}
    outs = []
    for i in range(length):
      mask = np.repeat(causal[None, i:i + 1, :length if tpu_step else i + 1],
                       batch, 0)
      out, cache = layer(x[:, i:i + 1], x[:, i:i + 1], attention_mask=mask,
                         cache=cache, decode_loop_step=i if tpu_step else None)
      outs.append(out)
    return tf.concat(outs, 1), cache["key"], cache["value"]

  return layer, decode


def _relative(layers, two_stream):
  from official.nlp.modeling.layers import relative_attention_test  # pylint: disable=g-import-not-at-top
  tf_keras.utils.set_random_seed(3)
  np.random.seed(3)
  kwargs = dict(num_heads=4, key_dim=8, value_dim=8, seq_length=6,
                memory_length=2, batch_size=2, include_state=True,
                include_mask=True, include_segment=True, two_stream=two_stream)
  if two_stream:
    kwargs["num_predictions"] = 3
  data = relative_attention_test._create_mock_attention_data(**kwargs)  # pylint: disable=protected-access
  data = {k: None if v is None else tf.convert_to_tensor(v) for k, v in data.items()}
  cls = (layers.TwoStreamRelativeAttention if two_stream else
         layers.MultiHeadRelativeAttention)
  return _called(cls(num_heads=4, key_dim=8, value_dim=8), **data)


def _bigbird(layers):
  q = _normal(2, 128, 16)
  padding = np.ones((2, 128))
  padding[1, 100:] = 0
  masks = layers.BigBirdMasks(block_size=16)(q, tf.constant(padding, tf.float64))
  return _called(layers.BigBirdAttention(num_heads=2, key_dim=16,
                                         from_block_size=16, to_block_size=16,
                                         max_rand_mask_length=128, seed=0),
                 query=q, value=q, attention_mask=masks)


def _multi_channel(layers):
  mask = np.random.default_rng(5).integers(0, 2, (3, 5, 4, 2)).astype(np.float32)
  probs = np.random.default_rng(6).random((3, 2, 4, 5)).astype(np.float32)
  return _called(layers.MultiChannelAttention(num_heads=2, key_dim=2),
                 query=_normal(3, 4, 8), value=_normal(3, 5, 2, 8, seed=2),
                 context_attention_weights=tf.constant(probs),
                 attention_mask=tf.constant(mask))


def _bert(networks):
  ids = tf.constant(np.random.default_rng(8).integers(1, 50, (2, 12)), tf.int32)
  padding = np.ones((2, 12), np.int32)
  padding[1, 8:] = 0
  encoder = networks.BertEncoderV2(vocab_size=50, hidden_size=32, num_layers=2,
                                   num_attention_heads=4, inner_dim=64,
                                   max_sequence_length=16)
  inputs = dict(input_word_ids=ids, input_mask=tf.constant(padding),
                input_type_ids=tf.zeros_like(ids))
  return encoder, lambda: encoder(inputs)["sequence_output"]


# name -> (build(layers, networks) -> (layer, run), whether XLA compiles it).
CASES = {
    "cached_attention": (lambda l, n: _called(
        l.CachedAttention(num_heads=4, key_dim=8), query=_normal(2, 5, 16),
        value=_normal(2, 7, 16, seed=2), attention_mask=_mask(2, 5, 7)), True),
    "cached_decode_concat": (lambda l, n: _cached_decode(l, False), False),
    "cached_decode_loop_step": (lambda l, n: _cached_decode(l, True), True),
    "talking_heads": (lambda l, n: _called(
        l.TalkingHeadsAttention(num_heads=4, key_dim=8), query=_normal(2, 5, 16),
        value=_normal(2, 5, 16), attention_mask=_mask(2, 5, 5)), True),
    "relative": (lambda l, n: _relative(l, False), True),
    "two_stream_relative": (lambda l, n: _relative(l, True), True),
    "kernel_exp": (lambda l, n: _called(
        l.KernelAttention(num_heads=4, key_dim=8, feature_transform="exp",
                          num_random_features=16, seed=7),
        query=_normal(2, 8, 16), value=_normal(2, 8, 16),
        attention_mask=tf.constant((np.random.default_rng(4).random((2, 8)) < 0.8)
                                   .astype(np.float32))), True),
    "kernel_elu": (lambda l, n: _called(
        l.KernelAttention(num_heads=4, key_dim=8, feature_transform="elu"),
        query=_normal(2, 8, 16), value=_normal(2, 8, 16)), True),
    "bigbird": (lambda l, n: _bigbird(l), False),
    "block_sparse": (lambda l, n: _called(
        l.block_sparse_attention.MultiHeadAttention(
            num_heads=4, key_dim=8, src_block_size=5, tgt_block_size=5),
        query=_normal(2, 20, 16), value=_normal(2, 20, 16),
        attention_mask=_mask(2, 20, 20)), True),
    "multi_channel": (lambda l, n: _multi_channel(l), True),
    "multi_query": (lambda l, n: _called(
        l.multi_query_attention.MultiHeadAttention(num_heads=4, key_dim=8,
                                                   num_kv_heads=1),
        query=_normal(2, 5, 16), value=_normal(2, 7, 16, seed=2),
        attention_mask=_mask(2, 5, 7)), True),
    "grouped_query": (lambda l, n: _called(
        l.multi_query_attention.MultiHeadAttention(num_heads=4, key_dim=8,
                                                   num_kv_heads=2),
        query=_normal(2, 5, 16), value=_normal(2, 7, 16, seed=2),
        attention_mask=_mask(2, 5, 7)), True),
    "encoder_block_post_norm": (lambda l, n: _called(
        l.TransformerEncoderBlock(num_attention_heads=4, inner_dim=64,
                                  inner_activation="relu"),
        inputs=[_normal(2, 9, 32), _mask(2, 9, 9)]), True),
    "encoder_block_pre_norm": (lambda l, n: _called(
        l.TransformerEncoderBlock(num_attention_heads=4, inner_dim=64,
                                  inner_activation="relu", norm_first=True),
        inputs=[_normal(2, 9, 32), _mask(2, 9, 9)]), True),
    "bert_encoder": (lambda l, n: _bert(n), True),
}


def _flat(value):
  return [np.asarray(v) for v in tf.nest.flatten(value) if v is not None]


def main(argv):
  mode, out_path = argv[1], argv[2]
  if mode == "tf_mha":
    tf_mha.patch_tf_keras()  # before Model Garden binds its base class
    reference = dict(np.load(argv[3]))
  from official.nlp.modeling import layers  # pylint: disable=g-import-not-at-top
  from official.nlp.modeling import networks  # pylint: disable=g-import-not-at-top
  from official.nlp.modeling.layers import block_sparse_attention  # pylint: disable=g-import-not-at-top,unused-import
  from official.nlp.modeling.layers import multi_query_attention  # pylint: disable=g-import-not-at-top,unused-import
  results = {}
  for name, (build, jit) in CASES.items():
    tf_keras.utils.set_random_seed(0)
    layer, run = build(layers, networks)
    run()  # builds the weights
    on_tf_mha = any(isinstance(m, tf_mha.MultiHeadAttention)
                    for m in [layer, *layer.submodules])
    results[f"{name}/on_tf_mha"] = np.array(on_tf_mha)
    if mode == "keras":
      for i, w in enumerate(layer.get_weights()):
        results[f"{name}/weight{i}"] = w
    else:
      count = len([k for k in reference if k.startswith(f"{name}/weight")])
      layer.set_weights([reference[f"{name}/weight{i}"] for i in range(count)])
    for i, v in enumerate(_flat(run())):
      results[f"{name}/eager{i}"] = v
    if mode == "tf_mha" and jit:
      for i, v in enumerate(_flat(tf.function(run, jit_compile=True)())):
        results[f"{name}/jit{i}"] = v
  np.savez(out_path, **results)


if __name__ == "__main__":
  main(sys.argv)
