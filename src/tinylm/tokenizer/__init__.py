"""Byte-level BPE tokenizer: training (`train_bpe`), encoding/decoding (`Tokenizer`), and the
`train-bpe`, `tokenize` and `tokenizer-report` commands."""
from tinylm.tokenizer.tokenizer import Tokenizer
from tinylm.tokenizer.training import train_bpe

__all__ = ["Tokenizer", "train_bpe"]
