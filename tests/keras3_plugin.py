"""A pytest plugin (`-p tests.keras3_plugin`) that runs Keras 3's own test
files for its attention layers on `tf_mha.keras3`'s: Keras' layer classes
are swapped for ours before the files are imported, and a check once they
are collected that the swap took."""

import sys

import keras
from keras.src import layers

import tf_mha.keras3 as ours


def pytest_configure(config):
  del config
  for module in (layers, keras.layers):
    module.MultiHeadAttention = ours.MultiHeadAttention
    module.GroupQueryAttention = ours.GroupedQueryAttention


def pytest_collection_finish(session):
  del session
  assert layers.MultiHeadAttention is ours.MultiHeadAttention
  assert layers.GroupQueryAttention is ours.GroupedQueryAttention
  print("\nkeras3_plugin: Keras' attention layers are tf_mha.keras3's",
        file=sys.stderr)
