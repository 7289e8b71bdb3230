"""The YAML config file: parsed and validated once, before anything starts.

Every error names the file and the dotted path of the offending field. Secrets are never read from
the file itself, only from environment variables or secret files it points to.
"""

from __future__ import annotations

import math
import os
import re
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

DEFAULT_PORT = 10150  # outside the community exporter port range 9100-9999
# Sane bounds for prices and machine counts, in the config and in run tags (README: "Skipped runs").
# More is a unit or typing mistake, and would make the integer cost overflow.
MAX_HOURLY_COST = 1_000_000.0  # per hour (the largest cloud machines cost about 100 an hour)
MAX_INSTANCE_COUNT = 100_000

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class ConfigError(Exception):
    """A config problem, worded for the person who wrote the file."""


def parse_duration(value: Any) -> float:
    """'90s', '5m', '1h30m', '30d' -> seconds. Bare numbers are refused: the unit must be said."""
    if isinstance(value, bool) or not isinstance(value, str):
        if isinstance(value, (int, float)):
            raise ValueError(f"{value!r} has no unit; write e.g. '{value}s' (units: ms, s, m, h, d, w)")
        raise ValueError(f"expected a duration such as '30s', '5m' or '1h', got {value!r}")
    text = value.strip()
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"invalid duration {value!r}; use e.g. '30s', '5m', '1h', '1h30m', '30d'")
    return total


def format_duration(seconds: float) -> str:
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds}s"


Duration = Annotated[float, BeforeValidator(parse_duration)]


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


class MlflowAuth(_Strict):
    """Where credentials come from. Values themselves never sit in the config file."""

    token_env: str | None = None
    token_file: ConfigPath | None = None
    username: str | None = None
    password_env: str | None = None
    password_file: ConfigPath | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("token", "password"):
                if key in data:
                    raise ValueError(
                        f"'{key}' may not be written in the config file; "
                        f"use {key}_env (an environment variable) or {key}_file (a secret file)"
                    )
        return data

    @model_validator(mode="after")
    def _one_source_each(self) -> MlflowAuth:
        if self.token_env and self.token_file:
            raise ValueError("set token_env or token_file, not both")
        if self.password_env and self.password_file:
            raise ValueError("set password_env or password_file, not both")
        if (self.password_env or self.password_file) and not self.username:
            raise ValueError("a password needs a username")
        return self


class MlflowConfig(_Strict):
    tracking_uri: str
    poll_interval: Duration = 60.0
    resync_interval: Duration = 3600.0
    experiments: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    exclude_experiments: list[str] = Field(default_factory=list)
    timeout: Duration = 30.0
    retry_backoff: Duration = 5.0
    watermark_overlap: Duration = 300.0
    page_size: int = Field(1000, ge=1, le=50000)
    auth: MlflowAuth = Field(default_factory=MlflowAuth)
    ui_url: str | None = None
    ca_bundle: ExistingFile | None = None  # TLS verification is always on

    @field_validator("tracking_uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        parts = urlsplit(value)
        if parts.scheme in ("http", "https"):
            if not parts.hostname:
                raise ValueError(f"{redact_uri(value)!r} has no host")
            if parts.username or parts.password:
                raise ValueError("credentials may not be written in the URI; use mlflow.auth")
        return value

    @field_validator("poll_interval", "resync_interval", "timeout", "retry_backoff")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value < 1:
            raise ValueError("must be at least 1s")
        return value

    @model_validator(mode="after")
    def _resync_after_poll(self) -> MlflowConfig:
        if self.resync_interval < self.poll_interval:
            raise ValueError("resync_interval must not be shorter than poll_interval")
        return self


class PricingConfig(_Strict):
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$")
    default_hourly_cost: float = Field(0.0, ge=0, le=MAX_HOURLY_COST, allow_inf_nan=False)
    hourly_cost_tag: str = "mlops.hourly_cost"
    instance_type_keys: list[str] = Field(default_factory=lambda: ["instance_type"])
    instance_count_keys: list[str] = Field(default_factory=lambda: ["instance_count"])
    instances: dict[str, Annotated[float, Field(ge=0, le=MAX_HOURLY_COST, allow_inf_nan=False)]] = Field(default_factory=dict)
    use_catalog: bool = True
    storage_gb_month: float = Field(0.023, ge=0, allow_inf_nan=False)  # S3 Standard list price, per GB-month


DEFAULT_DURATION_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 259200)
DEFAULT_COST_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 10, 50, 100, 500, 1000)


def _buckets(value: Any) -> Any:
    if isinstance(value, list):
        return [parse_duration(v) if isinstance(v, str) else v for v in value]
    return value


class RunsConfig(_Strict):
    # `estimator` for runs that say it themselves; the two tags MLflow's autologging writes
    # (scikit-learn, XGBoost, LightGBM...): the class name, and its full path (shortened in the label).
    estimator_keys: list[str] = Field(default_factory=lambda: ["estimator", "estimator_name", "estimator_class"])
    max_run_series: int = Field(100, ge=0, le=10000)
    max_estimators: int = Field(20, ge=1, le=1000)
    activity_window: Duration = 30 * 86400.0
    timezone: str = "UTC"
    duration_buckets: Annotated[list[float], BeforeValidator(_buckets)] = Field(
        default_factory=lambda: [float(b) for b in DEFAULT_DURATION_BUCKETS], min_length=1, max_length=30
    )
    cost_buckets: list[float] = Field(
        default_factory=lambda: [float(b) for b in DEFAULT_COST_BUCKETS], min_length=1, max_length=30
    )

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as 'UTC' or 'Europe/Paris'")
        return value

    @field_validator("duration_buckets", "cost_buckets")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if any(not math.isfinite(v) or v <= 0 for v in value):
            raise ValueError("bucket bounds must be positive finite numbers")
        if any(b <= a for a, b in zip(value, value[1:])):
            raise ValueError("bucket bounds must be strictly increasing")
        return value

    @field_validator("activity_window")
    @classmethod
    def _window(cls, value: float) -> float:
        if value < 3600:
            raise ValueError("must be at least 1h")
        return value


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
        raise ConfigError("\n".join(f"{path}: {_location(e['loc'])}: {_describe(e)}" for e in exc.errors())) from None


class ServerConfig(_Strict):
    listen: str = f":{DEFAULT_PORT}"
    web_config_file: ExistingFile | None = None  # TLS and basic auth, exporter-toolkit format

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value


LABEL_SAFE = r"^[A-Za-z0-9_.:-]{1,80}$"  # names that become label values people type in PromQL


class KpiConfig(_Strict):
    name: str = Field(pattern=LABEL_SAFE)
    metric: str = Field(min_length=1)
    source: Literal["latest_finished_run", "best_run", "model_alias"] = "latest_finished_run"
    experiment: str | None = None
    model: str | None = None
    alias: str | None = None
    target: float | None = Field(None, allow_inf_nan=False)
    direction: Literal["higher_is_better", "lower_is_better"] = "higher_is_better"
    description: str = ""

    @model_validator(mode="after")
    def _source_needs(self) -> KpiConfig:
        if self.source == "model_alias":
            if not self.model or not self.alias:
                raise ValueError("source model_alias needs model and alias")
        elif not self.experiment:
            raise ValueError(f"source {self.source} needs experiment")
        return self

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "higher_is_better"


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class BudgetConfig(_Strict):
    name: str = Field(pattern=LABEL_SAFE)
    experiments: Annotated[list[str], BeforeValidator(_one_or_many)] = Field(min_length=1)
    monthly: float = Field(gt=0, allow_inf_nan=False)


class FixedCostConfig(_Strict):
    """A monthly cost that no run shows: the chapter's data, personnel, software, operational overhead."""

    category: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")
    monthly: float = Field(ge=0, allow_inf_nan=False)
    project: str = Field("shared", pattern=LABEL_SAFE)
    description: str = ""


class AllocationConfig(_Strict):
    tags: list[str] = Field(default_factory=list, max_length=10)
    max_values: int = Field(20, ge=1, le=500)


class ArtifactsConfig(_Strict):
    enabled: bool = False  # listing artifacts costs one call per run: off by default for huge stores
    concurrency: int = Field(4, ge=1, le=32)
    max_runs_per_poll: int = Field(500, ge=1, le=100_000)


class RegistryConfig(_Strict):
    enabled: bool = True
    models: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    deploy_alias: str = "champion"


PRESET_NAMES = ("mlflow", "bentoml", "torchserve", "triton", "kserve", "vllm", "custom")


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{redact_uri(value)!r} is not an http(s) URL with a host")
    if parts.username or parts.password:
        raise ValueError("credentials may not be written in the URL; use headers_env")
    return value.rstrip("/")


class ProbeConfig(_Strict):
    """A synthetic request, blackbox style."""

    path: str = "/ping"
    method: Literal["GET", "POST", "HEAD"] = "GET"
    body: Any = None  # sent as JSON
    body_file: ExistingFile | None = None  # sent as is, Content-Type application/json
    headers: dict[str, str] = Field(default_factory=dict)
    headers_env: dict[str, str] = Field(default_factory=dict)  # header -> environment variable (secrets)

    @field_validator("headers_env")
    @classmethod
    def _variables_set(cls, value: dict[str, str]) -> dict[str, str]:
        # As for mlflow.auth: an unset variable is a config error, never an empty header sent.
        for header, variable in value.items():
            if not os.environ.get(variable):
                raise ValueError(f"header {header}: environment variable {variable} is not set or empty")
        return value
    expect_status: int = Field(200, ge=100, le=599)
    expect_body_contains: str | None = None
    interval: Duration = 15.0
    timeout: Duration = 2.0

    @model_validator(mode="after")
    def _one_body(self) -> ProbeConfig:
        if self.body is not None and self.body_file is not None:
            raise ValueError("set body or body_file, not both")
        if not self.path.startswith("/"):
            raise ValueError("path must start with '/'")
        if self.interval < 1 or self.timeout <= 0 or self.timeout > self.interval:
            raise ValueError("need interval >= 1s and 0 < timeout <= interval")
        return self


class MetricSelector(_Strict):
    """An upstream metric: its sample name, label values it must have, and the factor to base units.

    A label value is matched exactly; `~RE` matches a regular expression, `!~RE` excludes one.
    """

    name: str = Field(min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)
    scale: float = Field(1.0, gt=0, allow_inf_nan=False)
    divide_by: str | None = None  # utilization as a ratio of two gauges, e.g. memory used / total

    @field_validator("labels")
    @classmethod
    def _patterns(cls, value: dict[str, str]) -> dict[str, str]:
        for pattern in value.values():
            if pattern.startswith(("~", "!~")):
                try:
                    re.compile(pattern.lstrip("!~"))
                except re.error as exc:
                    raise ValueError(f"bad regular expression {pattern!r}: {exc}") from None
        return value


class CustomMapping(_Strict):
    requests: list[MetricSelector] = Field(default_factory=list)
    errors: list[MetricSelector] = Field(default_factory=list)
    latency_histogram: MetricSelector | None = None  # base name of a histogram (without _bucket)
    latency_sum: MetricSelector | None = None  # a cumulative sum of latencies, with latency_count
    latency_count: MetricSelector | None = None
    utilization: dict[str, MetricSelector] = Field(default_factory=dict)  # resource -> gauge (scale to 0-1)


class EndpointConfig(_Strict):
    name: str = Field(pattern=LABEL_SAFE)
    url: Annotated[str, AfterValidator(_http_url)]
    probe: ProbeConfig | None = Field(default_factory=ProbeConfig)
    metrics_url: Annotated[str, AfterValidator(_http_url)] | None = None
    metrics_timeout: Duration = 5.0
    metrics_labels: dict[str, str] = Field(default_factory=dict)  # e.g. {model: churn} on a shared server
    preset: Literal[PRESET_NAMES] = "mlflow"  # type: ignore[valid-type]
    custom: CustomMapping | None = None
    hourly_cost: float | None = Field(None, ge=0, allow_inf_nan=False)
    instance_type: str | None = None
    replicas: int = Field(1, ge=1, le=10_000)
    capacity_rps: float | None = Field(None, gt=0, allow_inf_nan=False)
    interval: Duration | None = None  # defaults to probe.interval, else 15s
    ca_bundle: ExistingFile | None = None  # for https endpoints with a private CA

    @model_validator(mode="after")
    def _consistent(self) -> EndpointConfig:
        if self.preset == "custom" and self.custom is None:
            raise ValueError("preset custom needs a custom: mapping")
        if self.custom is not None and self.preset != "custom":
            raise ValueError("custom: mappings are only read with preset: custom")
        if self.hourly_cost is not None and self.instance_type is not None:
            raise ValueError("set hourly_cost or instance_type, not both")
        if self.probe is None and self.metrics_url is None:
            raise ValueError("an endpoint needs a probe, a metrics_url, or both")
        return self

    @property
    def poll_interval(self) -> float:
        return self.interval or (self.probe.interval if self.probe else 15.0)


def _unique_names(items: list[Any]) -> list[Any]:
    seen: set[str] = set()
    for item in items:
        if item.name in seen:
            raise ValueError(f"the name {item.name!r} is used twice")
        seen.add(item.name)
    return items


class Config(_Strict):
    mlflow: MlflowConfig
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    runs: RunsConfig = Field(default_factory=RunsConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    kpis: Annotated[list[KpiConfig], AfterValidator(_unique_names)] = Field(default_factory=list)
    budgets: Annotated[list[BudgetConfig], AfterValidator(_unique_names)] = Field(default_factory=list)
    fixed_costs: list[FixedCostConfig] = Field(default_factory=list)
    allocation: AllocationConfig = Field(default_factory=AllocationConfig)
    artifacts: ArtifactsConfig = Field(default_factory=ArtifactsConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    endpoints: Annotated[list[EndpointConfig], AfterValidator(_unique_names)] = Field(default_factory=list)


def parse_listen(value: str) -> tuple[str, int]:
    """'HOST:PORT', ':PORT' (all interfaces) or '[::1]:PORT' -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid listen address {value!r}; use HOST:PORT such as 127.0.0.1:{DEFAULT_PORT}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _location(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("function-before", "function-after") or "[" in str(part):
            continue  # pydantic's validator frames, not config keys
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def _describe(error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required key is missing"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


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
        lines = [f"{source}: {_location(e['loc'])}: {_describe(e)}" for e in exc.errors()]
        raise ConfigError("\n".join(lines)) from None
