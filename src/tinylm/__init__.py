"""tinylm: small Transformer language models trained from scratch, and the pipeline around them."""

__version__ = "0.1.0"
