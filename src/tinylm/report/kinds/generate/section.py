"""Temporary: the section is still built by tinylm.report.sections."""
from tinylm.report.sections import generate as build  # noqa: F401
