"""The demo text classifier: generated data, offline vocabulary, model."""
