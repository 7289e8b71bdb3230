"""The endpoints part of the config: synthetic probes, the servers' own metrics, custom mappings."""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, field_validator, model_validator

from mlops_kpi_exporter.config.common import LABEL_SAFE, Duration, ExistingFile, _Strict, redact_uri


PRESET_NAMES = ("mlflow", "bentoml", "mlserver", "torchserve", "triton", "kserve", "vllm", "custom")

# Routes that are not predictions, wherever a server labels its request series by route: health,
# readiness and liveness checks (the exporter's own probe among them), the metrics page, API docs.
NOT_PREDICTIONS = (r".*/(healthz|readyz|livez|health|healthcheck|ready|live|ping|metrics)(/.*)?",
                   r"/docs(/.*)?", r"/openapi\.json", r"/favicon\.ico")


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{redact_uri(value)!r} is not an http(s) URL with a host")
    if parts.username or parts.password:
        raise ValueError("credentials may not be written in the URL; use headers_env")
    return value


def _base_url(value: str) -> str:
    """A base URL that paths are appended to: without its trailing slash."""
    return _http_url(value).rstrip("/")


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
    requests: list[MetricSelector] = Field(default_factory=list)  # predictions, whatever their outcome
    errors: list[MetricSelector] = Field(default_factory=list)  # server faults (5xx, failures)
    client_errors: list[MetricSelector] = Field(default_factory=list)  # rejected requests (4xx)
    # the label that names a request's route on these series: routes matching exclude_routes (regular
    # expressions, whole value) are not predictions and are left out of every traffic figure
    route_label: str | None = None
    exclude_routes: list[str] = Field(default_factory=lambda: list(NOT_PREDICTIONS))
    latency_histogram: MetricSelector | None = None  # base name of a histogram (without _bucket)
    latency_sum: MetricSelector | None = None  # a cumulative sum of latencies, with latency_count
    latency_count: MetricSelector | None = None
    utilization: dict[str, MetricSelector] = Field(default_factory=dict)  # resource -> gauge (scale to 0-1)
    # series that show a page is this server's before it has served anything: some servers (MLServer)
    # write no request series at all until the first request, and an idle server is not a wrong preset
    identified_by: list[str] = Field(default_factory=list)

    @field_validator("exclude_routes")
    @classmethod
    def _routes(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"bad regular expression {pattern!r}: {exc}") from None
        return value

    def request_series(self) -> tuple[str, ...]:
        """The sample names whose presence on a page shows the mapping fits it (requests or latency)."""
        names = [s.name for s in self.requests]
        if self.latency_histogram is not None:
            names += [f"{self.latency_histogram.name}_{suffix}" for suffix in ("bucket", "count", "sum")]
        names += [s.name for s in (self.latency_sum, self.latency_count) if s is not None]
        return tuple(names)

    def page_series(self) -> tuple[str, ...]:
        """Any of these on a page shows the mapping fits it: its request or latency series, or the
        server's own marks."""
        return (*self.request_series(), *self.identified_by)


class EndpointConfig(_Strict):
    name: str = Field(pattern=LABEL_SAFE)
    url: Annotated[str, AfterValidator(_base_url)]
    probe: ProbeConfig | None = Field(default_factory=ProbeConfig)
    metrics_url: Annotated[str, AfterValidator(_http_url)] | None = None  # read as written
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
