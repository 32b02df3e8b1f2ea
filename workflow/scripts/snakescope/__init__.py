"""snakescope: train, evaluate and compare deep-learning models on microscopy images (see README.md)."""

__version__ = "0.1.0"
