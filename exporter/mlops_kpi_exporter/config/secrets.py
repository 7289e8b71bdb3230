"""Secrets the config points to (environment variables, secret files), read once the config is valid.

They never sit in the config file itself, and never reach a log, a label or an error message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from mlops_kpi_exporter.config.common import ConfigError
from mlops_kpi_exporter.config.models import MlflowAuth

_inherited: dict[str, str | None] = {}  # variables the exporter took over, as the process was given them


def take_over(names: tuple[str, ...]) -> None:
    """The exporter is about to set these variables itself (MLflow's client settings): remember what
    the process was given, so that a config naming one of them (token_env: MLFLOW_TRACKING_TOKEN)
    still reads the given value after a reload."""
    for name in names:
        _inherited.setdefault(name, os.environ.get(name))


def environment_variable(name: str) -> str | None:
    return _inherited[name] if name in _inherited else os.environ.get(name)


@dataclass(frozen=True)
class Credentials:
    token: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None


def _read_secret(kind: str, env: str | None, file: Path | None) -> SecretStr | None:
    if env:
        value = environment_variable(env)
        if not value:
            raise ConfigError(f"mlflow.auth.{kind}_env: environment variable {env} is not set or empty")
        return SecretStr(value)
    if file:
        try:
            value = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"mlflow.auth.{kind}_file: cannot read {file}: {exc.strerror or exc}") from None
        if not value:
            raise ConfigError(f"mlflow.auth.{kind}_file: {file} is empty")
        return SecretStr(value)
    return None


def resolve_credentials(auth: MlflowAuth) -> Credentials:
    """Read the secrets mlflow.auth points to; ConfigError when one is missing or empty."""
    return Credentials(
        token=_read_secret("token", auth.token_env, auth.token_file),
        username=auth.username,
        password=_read_secret("password", auth.password_env, auth.password_file),
    )
