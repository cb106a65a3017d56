"""Multinomial logistic regression on MNIST, as a reproducible DVC pipeline."""

__version__ = "0.1.0"
