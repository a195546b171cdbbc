"""The generator demo's decoder: one more configuration of `transformer`.

What differs from the Llama block: LayerNorm (with a bias) instead of
RMSNorm, a GELU feed-forward net with biases instead of SwiGLU, biases on
every attention projection, an output tied to the token embedding, and
embeddings drawn from N(0, 0.02^2). The step loop, the cache shape and the
serving path are `transformer.CausalLM`'s.
"""

from tf_mha.models import transformer


def config(vocab_size, *, dim=64, num_query_heads=4, num_key_value_heads=2,
           num_layers=2, ff_dim=128):
  """The demo decoder's `transformer.DecoderConfig`."""
  return transformer.DecoderConfig(
      family="demo", vocabulary_size=vocab_size, num_layers=num_layers,
      hidden_dim=dim, num_query_heads=num_query_heads,
      num_key_value_heads=num_key_value_heads, head_dim=dim // num_query_heads,
      intermediate_dim=ff_dim, attention_bias=True, tie_word_embeddings=True,
      norm="layer", feedforward="gelu", embeddings_stddev=0.02)


def decoder(vocab_size, *, max_length=48, name="decoder", **sizes):
  """The demo's decoder with `max_length` cache slots: a
  `transformer.CausalLM` of `config(vocab_size, **sizes)`.

  Examples:
    >>> decoder(11, max_length=8)(tf.constant([[2, 5, 6]])).shape.as_list()
    [1, 3, 11]
  """
  return transformer.CausalLM(config(vocab_size, **sizes), max_length, name=name)
