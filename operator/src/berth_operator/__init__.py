"""Berth's kopf operator for BertTraining resources."""

__version__ = "0.1.0"
