"""Durations as Prometheus writes them ('90s', '5m', '1h30m', '30d'): the one parser of the exporter's
config and of the dashboards' and rules' generators. Strict: a bare number or junk is an error."""

from __future__ import annotations

import re
from typing import Any

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def parse_duration(value: Any) -> float:
    """'90s', '5m', '1h30m', '30d' -> seconds. Bare numbers are refused: the unit must be said."""
    if isinstance(value, bool) or not isinstance(value, str):
        if isinstance(value, (int, float)):
            raise ValueError(f"{value!r} has no unit; write e.g. '{value}s' (units: ms, s, m, h, d, w, y)")
        raise ValueError(f"expected a duration such as '30s', '5m' or '1h', got {value!r}")
    text = value.strip()
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"invalid duration {value!r}; use e.g. '30s', '5m', '1h', '1h30m', '30d'")
    return total


def format_duration(seconds: float) -> str:
    for unit in ("w", "d", "h", "m", "s"):
        size = UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds}s"
