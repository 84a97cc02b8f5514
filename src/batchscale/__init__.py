"""batchscale: how batch size and learning-rate scaling change neural-network training."""

__version__ = "0.1.0"
