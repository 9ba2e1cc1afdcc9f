"""The compiled part of tinylm; everything else about the package is in pyproject.toml.

The extension is optional: where it cannot be built (no C compiler), installing still succeeds and
the tokenizer encodes with its pure-Python path, which gives the same ids, only slower.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("tinylm.tokenizer._encoder", ["src/tinylm/tokenizer/_encoder.c"],
                             extra_compile_args=["-O3"], optional=True)])
