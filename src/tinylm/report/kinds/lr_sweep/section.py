"""Temporary: the section is still built by tinylm.report.sections."""
from tinylm.report.sections import lr_sweep as build  # noqa: F401
