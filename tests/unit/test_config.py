"""Bad config is refused before anything starts, and every error names the file and the field."""

from __future__ import annotations

import textwrap

import pytest

from mlops_kpi_exporter.config.secrets import resolve_credentials
from mlops_kpi_exporter.config import (
    ConfigError,
    config_from_dict,
    load_config,
    parse_duration,
    redact_uri,
)
from mlops_kpi_exporter.pricing import Pricer

GOOD = "mlflow:\n  tracking_uri: http://127.0.0.1:5000\n"


def write(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    message = str(exc.value)
    assert str(path) in message  # every error names the file
    return message


@pytest.mark.parametrize(
    "text, field, words",
    [
        (GOOD + "  tracking_urii: x\n", "mlflow.tracking_urii", "unknown key"),
        ("mlflow:\n  poll_interval: 30s\n", "mlflow.tracking_uri", "required"),
        (GOOD + "  poll_interval: 5 minutes\n", "mlflow.poll_interval", "invalid duration"),
        (GOOD + "  poll_interval: 60\n", "mlflow.poll_interval", "no unit"),
        (GOOD + "  poll_interval: 0s\n", "mlflow.poll_interval", "at least 1s"),
        (GOOD + "  resync_interval: 10s\n  poll_interval: 1m\n", "mlflow", "resync_interval"),
        (GOOD + "  page_size: many\n", "mlflow.page_size", "integer"),
        (GOOD + "  experiments: []\n", "mlflow.experiments", "at least 1"),
        (GOOD + "  auth:\n    token: abc123\n", "mlflow.auth", "token_env"),
        (GOOD + "  auth:\n    password_env: PW\n", "mlflow.auth", "username"),
        ("mlflow:\n  tracking_uri: http://bob:hunter2@mlflow:5000\n", "mlflow.tracking_uri", "mlflow.auth"),
        (GOOD + "runs:\n  max_run_series: lots\n", "runs.max_run_series", "integer"),
        (GOOD + "runs:\n  max_run_series: -1\n", "runs.max_run_series", "greater than or equal"),
        (GOOD + "runs:\n  timezone: Mars/Olympus\n", "runs.timezone", "unknown time zone"),
        (GOOD + "runs:\n  duration_buckets: [1h, 30m]\n", "runs.duration_buckets", "increasing"),
        (GOOD + "runs:\n  activity_window: 1x\n", "runs.activity_window", "invalid duration"),
        (GOOD + "pricing:\n  currency: dollars\n", "pricing.currency", "pattern"),
        (GOOD + "pricing:\n  default_hourly_cost: -1\n", "pricing.default_hourly_cost", "greater than or equal"),
        (GOOD + "pricing:\n  instances: {p3.2xlarge: cheap}\n", "pricing.instances.p3.2xlarge", "number"),
        (GOOD + "server:\n  listen: localhost\n", "server.listen", "HOST:PORT"),
        (GOOD + "endpoint: {}\n", "endpoint", "unknown key"),
    ],
)
def test_each_error_names_its_field(tmp_path, text, field, words):
    message = error_of(tmp_path, text)
    assert f": {field}:" in message, message
    assert words in message, message


def test_secret_values_never_echoed(tmp_path):
    message = error_of(tmp_path, GOOD + "  auth:\n    password: s3cr3t-value\n    username: u\n")
    assert "s3cr3t-value" not in message
    message = error_of(tmp_path, "mlflow:\n  tracking_uri: https://bob:hunter2@mlflow.example:5000\n")
    assert "hunter2" not in message


def test_yaml_and_file_errors(tmp_path):
    assert "not valid YAML at line 2" in error_of(tmp_path, "mlflow:\n\ttracking_uri: x\n")
    assert "empty" in error_of(tmp_path, "")
    assert "mapping" in error_of(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_valid_config_defaults(tmp_path):
    config = load_config(write(tmp_path, GOOD + "  poll_interval: 1m30s\n"))
    assert config.mlflow.poll_interval == 90
    assert config.mlflow.resync_interval == 3600
    assert config.runs.max_run_series == 100
    assert config.pricing.currency == "USD"


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("30d", 2592000), ("250ms", 0.25)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_currency_other_than_catalog_needs_own_prices():
    config = config_from_dict({"mlflow": {"tracking_uri": "sqlite:///x.db"}, "pricing": {"currency": "EUR"}})
    with pytest.raises(ConfigError, match="pricing.currency.*use_catalog"):
        Pricer(config.pricing)
    config = config_from_dict(
        {"mlflow": {"tracking_uri": "sqlite:///x.db"}, "pricing": {"currency": "EUR", "use_catalog": False, "instances": {"a": 1}}}
    )
    assert Pricer(config.pricing).price_of("a") == (1, "config")


def test_secrets_from_env_and_file(tmp_path, monkeypatch):
    secret = tmp_path / "pw"
    secret.write_text("file-password\n")
    monkeypatch.setenv("TOKEN_VAR", "env-token")
    config = config_from_dict(
        {"mlflow": {"tracking_uri": "http://127.0.0.1:1", "auth": {"token_env": "TOKEN_VAR", "username": "u", "password_file": str(secret)}}}
    )
    creds = resolve_credentials(config.mlflow.auth)
    assert creds.token.get_secret_value() == "env-token"
    assert creds.password.get_secret_value() == "file-password"
    assert "env-token" not in repr(creds) and "file-password" not in repr(creds)
    monkeypatch.delenv("TOKEN_VAR")
    with pytest.raises(ConfigError, match="mlflow.auth.token_env: environment variable TOKEN_VAR"):
        resolve_credentials(config.mlflow.auth)


def test_redact_uri():
    assert redact_uri("https://u:p@host:5000/path?token=x") == "https://host:5000/path?<redacted>"
    assert redact_uri("sqlite:////data/mlflow.db") == "sqlite:////data/mlflow.db"
