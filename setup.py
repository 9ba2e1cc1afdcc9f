"""The compiled parts of tinylm; everything else about the package is in pyproject.toml.

Both extensions are optional: where they cannot be built (no C compiler), installing still succeeds
and the tokenizer trains and encodes with its pure-Python paths, which give the same results, only
slower.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension(f"tinylm.tokenizer.{name}", [f"src/tinylm/tokenizer/{name}.c"],
                             depends=["src/tinylm/tokenizer/_common.h"], optional=True)
                   for name in ("_encoder", "_trainer")])
