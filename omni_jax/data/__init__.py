"""Data: media decoding, features and (later) the input pipeline."""
