"""itrbench: a reproducibility and benchmark suite for image-text retrieval (CODER, AsCL)."""

__version__ = "0.1.0"
