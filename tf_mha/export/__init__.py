"""Export library: SavedModels laid out for TF Serving, and TFLite models
(conversion, checks, LiteRT runners) for any model, the demos' included.

May import generation, layers, ops and models (and `tf_mha` to register the
layers);
not demo, training, benchmarks or cli.
"""
