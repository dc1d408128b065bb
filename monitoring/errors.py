"""The one error type for bad monitoring input (the CLI maps it to exit code 2)."""

from __future__ import annotations


class MonitoringInputError(ValueError):
    """The input cannot give a meaningful report: an empty window, missing logs or reference data,
    a schema mismatch between reference and current data, an unknown variant ... The message says
    what is wrong and, where it can, what to do about it."""
