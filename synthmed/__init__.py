"""synthmed: train, sample and evaluate generative models of medical images."""

__version__ = "0.1.0"
