"""What every part of the config shares: its error, strict models, the path rule, bounds, redaction."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import math
from collections.abc import Callable

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationInfo

from mlops_kpi_exporter.config.durations import format_duration, parse_duration

# Sane bounds for prices and machine counts, in the config and in run tags (README: "Skipped runs").
# More is a unit or typing mistake, and would make the integer cost overflow.
MAX_HOURLY_COST = 1_000_000.0  # per hour (the largest cloud machines cost about 100 an hour)
MAX_INSTANCE_COUNT = 100_000
LABEL_SAFE = r"^[A-Za-z0-9_.:-]{1,80}$"  # names that become label values people type in PromQL


class ConfigError(Exception):
    """A config problem, worded for the person who wrote the file."""


Duration = Annotated[float, BeforeValidator(parse_duration)]


def at_least(seconds: float, why: str = "") -> Callable[[float], float]:
    """A floor for a duration key: `Annotated[Duration, AfterValidator(at_least(60, "why"))]`."""
    def check(value: float) -> float:
        if value < seconds:
            raise ValueError(f"must be at least {format_duration(seconds)}" + (f" ({why})" if why else ""))
        return value
    return check


def _increasing(value: list[float]) -> list[float]:
    if any(not math.isfinite(v) or v <= 0 for v in value):
        raise ValueError("bucket bounds must be positive finite numbers")
    if any(b <= a for a, b in zip(value, value[1:])):
        raise ValueError("bucket bounds must be strictly increasing")
    return value


def _durations(value: Any) -> Any:
    if isinstance(value, list):
        return [parse_duration(v) if isinstance(v, str) else v for v in value]
    return value


# Histogram bucket bounds: positive, strictly increasing; of durations, "5m" as well as 300.
Bounds = Annotated[list[float], AfterValidator(_increasing)]
DurationBounds = Annotated[list[float], BeforeValidator(_durations), AfterValidator(_increasing)]


def redact_uri(uri: str) -> str:
    """Drop user info and query strings from a URI before it reaches a log, a label or a page."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable uri>"
    if "@" not in parts.netloc and not parts.query:
        return uri  # nothing secret in it; also keeps 'sqlite:////abs/path' intact
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _relative_to_config(value: Path, info: ValidationInfo) -> Path:
    """The one path rule: a relative path in the config is relative to the config file's folder,
    wherever the exporter is started from (in a container the working directory is elsewhere)."""
    base = (info.context or {}).get("base_dir")
    return value if value.is_absolute() or base is None else Path(base) / value


def _existing_file(value: Path) -> Path:
    if not value.is_file():
        raise ValueError(f"no such file: {value}")
    return value


ConfigPath = Annotated[Path, AfterValidator(_relative_to_config)]
ExistingFile = Annotated[Path, AfterValidator(_relative_to_config), AfterValidator(_existing_file)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def location(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as the dotted path of the config key."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("function-before", "function-after") or "[" in str(part):
            continue  # pydantic's validator frames, not config keys
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def describe(error: dict[str, Any]) -> str:
    """A pydantic error in the words of the config file."""
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required key is missing"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")
