"""Temporary: the section is still built by tinylm.report.sections."""
from tinylm.report.sections import batch_size as build  # noqa: F401
