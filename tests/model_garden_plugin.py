"""A pytest plugin (`-p tests.model_garden_plugin`) that runs Model Garden's
own test files on tf_mha: `tf_mha.patch_tf_keras()` before anything imports
`official`, and a check, once the files are collected, that Model Garden's
attention classes really are built on tf_mha's layer."""

import sys

import tf_keras

import tf_mha


def pytest_configure(config):
  del config
  assert not any(name.split(".")[0] == "official" for name in sys.modules), (
      "Model Garden was imported before the patch")
  tf_mha.patch_tf_keras()
  assert tf_keras.layers.MultiHeadAttention is tf_mha.MultiHeadAttention


def pytest_collection_finish(session):
  from official.nlp.modeling import layers  # pylint: disable=g-import-not-at-top
  for cls in (layers.CachedAttention, layers.TalkingHeadsAttention,
              layers.MultiHeadRelativeAttention, layers.KernelAttention):
    assert issubclass(cls, tf_mha.MultiHeadAttention), cls
  session.config.stash_model_garden_on_tf_mha = True
  print("\nmodel_garden_plugin: Model Garden's attention layers are built on "
        "tf_mha.MultiHeadAttention", file=sys.stderr)
