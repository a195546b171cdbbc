"""Export library: SavedModels laid out for TF Serving, and TFLite models."""
