"""Loading the config file: YAML, then the models, every error naming the file and the key.

The one path rule: a relative path in the config is relative to the config file's folder (the
models resolve it against `base_dir`), wherever the exporter is started from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mlops_kpi_exporter.config.common import ConfigError, describe, location
from mlops_kpi_exporter.config.models import Config


def load_config(path: str | os.PathLike[str]) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        raise ConfigError(f"{path}: the config file is empty (at least mlflow.tracking_uri is needed)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return config_from_dict(data, source=str(path), base_dir=path.parent)


def config_from_dict(data: dict[str, Any], source: str = "<config>", base_dir: Path | None = None) -> Config:
    try:
        return Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        lines = [f"{source}: {location(e['loc'])}: {describe(e)}" for e in exc.errors()]
        raise ConfigError("\n".join(lines)) from None
