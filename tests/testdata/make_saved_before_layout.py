"""Writes the models that tests/test_layout.py loads (run once, at 1944842).

These files were saved by tf_mha before its modules moved into folders
(issue 25); the test checks that they still load and give the same outputs.
  python tests/testdata/make_saved_before_layout.py
"""

import os

import numpy as np
import tf_keras

import tf_mha

_HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                     "saved_before_layout")


def tf_keras_model():
  tf_keras.utils.set_random_seed(7)
  tokens = tf_keras.Input([None, 12], name="x")
  h = tf_mha.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")(
      tokens, tokens, use_causal_mask=True)
  h = tf_mha.GroupedQueryAttention(head_dim=3, num_query_heads=4,
                                   num_key_value_heads=2, name="gqa")(h, h)
  h = tf_mha.Attention(name="dot")([h, h])
  return tf_keras.Model(tokens, h)


def keras3_model():
  import keras  # pylint: disable=g-import-not-at-top
  import tf_mha.keras3  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(7)
  tokens = keras.Input([None, 12], name="x")
  h = tf_mha.keras3.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")(
      tokens, tokens, use_causal_mask=True)
  h = tf_mha.keras3.GroupedQueryAttention(head_dim=3, num_query_heads=4,
                                        num_key_value_heads=2, name="gqa")(h, h)
  return keras.Model(tokens, h)


def main():
  os.makedirs(_HERE, exist_ok=True)
  x = np.random.default_rng(0).normal(size=[2, 5, 12]).astype("float32")
  model = tf_keras_model()
  model.save(os.path.join(_HERE, "tf_keras.keras"))
  model.save(os.path.join(_HERE, "tf_keras.h5"))
  k3 = keras3_model()
  k3.save(os.path.join(_HERE, "keras3.keras"))
  np.savez(os.path.join(_HERE, "expected.npz"), x=x,
           tf_keras=model(x).numpy(), keras3=np.asarray(k3(x)))


if __name__ == "__main__":
  main()
