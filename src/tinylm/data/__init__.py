"""Data: raw text downloads (`download`) and token arrays on disk turned into batches (`tokens`).

`get_batch` (the API contract's) is re-exported here.
"""
from tinylm.data.tokens import get_batch

__all__ = ["get_batch"]
