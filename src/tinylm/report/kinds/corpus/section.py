"""Temporary: the section is still built by tinylm.report.sections."""
from tinylm.report.sections import corpus as build  # noqa: F401
