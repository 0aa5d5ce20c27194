"""Berth's tf.keras BERT trainer. Importing this package does not import TensorFlow."""

__version__ = "0.1.0"
