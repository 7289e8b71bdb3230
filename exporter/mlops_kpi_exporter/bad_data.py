"""The one error type for data that cannot be counted, runs and traces alike.

Apart so that the run side (pricing.py, runs.py) and the trace side (trace_facts.py) share it
without importing each other.
"""

from __future__ import annotations


class BadData(ValueError):
    """A run or trace whose data cannot be counted; `reason` becomes the skip counter's label."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason = reason
