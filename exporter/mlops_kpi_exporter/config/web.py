"""The HTTP side's settings: the listen address and the exporter-toolkit web config (TLS, basic auth)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from mlops_kpi_exporter.config.common import ConfigError, _Strict, describe, location

DEFAULT_PORT = 10150  # outside the community exporter port range 9100-9999


def parse_listen(value: str) -> tuple[str, int]:
    """'HOST:PORT', ':PORT' (all interfaces) or '[::1]:PORT' -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid listen address {value!r}; use HOST:PORT such as 127.0.0.1:{DEFAULT_PORT}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class TlsServerConfig(_Strict):
    cert_file: Path
    key_file: Path
    min_version: Literal["TLS12", "TLS13"] = "TLS12"


class WebConfig(_Strict):
    """The Prometheus exporter-toolkit `web-config.yml`: TLS and basic auth with bcrypt hashes.
    Keys of the toolkit this exporter does not implement are refused, never silently ignored."""

    tls_server_config: TlsServerConfig | None = None
    basic_auth_users: dict[str, str] = Field(default_factory=dict)

    @field_validator("basic_auth_users")
    @classmethod
    def _bcrypt(cls, value: dict[str, str]) -> dict[str, str]:
        for user, hashed in value.items():
            if not re.fullmatch(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}", hashed):
                raise ValueError(f"the password of {user!r} is not a bcrypt hash (htpasswd -nBC 10 \"\" | tr -d ':\\n')")
        return value


def load_web_config(path: str | os.PathLike[str]) -> WebConfig:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read web config: {exc}") from None
    tls = data.get("tls_server_config") if isinstance(data, dict) else None
    if isinstance(tls, dict):  # files are relative to the web config, as in the exporter-toolkit
        for key in ("cert_file", "key_file"):
            if isinstance(tls.get(key), str):
                tls[key] = str(path.parent / tls[key])
                if not Path(tls[key]).is_file():
                    raise ConfigError(f"{path}: tls_server_config.{key}: no such file: {tls[key]}")
    try:
        return WebConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(f"{path}: {location(e['loc'])}: {describe(e)}" for e in exc.errors())) from None
