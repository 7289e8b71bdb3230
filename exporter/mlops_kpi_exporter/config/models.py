"""The config file's models: every key, its default and its checks (README: "Configuration")."""

from __future__ import annotations

import os
import zlib
import zoneinfo
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from mlops_kpi_exporter.extras import is_local_store, is_tracking_server, tracking_scheme
from mlops_kpi_exporter.config.common import (
    LABEL_SAFE,
    MAX_HOURLY_COST,
    ConfigPath,
    Duration,
    ExistingFile,
    _Strict,
    Bounds,
    DurationBounds,
    at_least,
)
from mlops_kpi_exporter.config.billing import BillingConfig
from mlops_kpi_exporter.config.databricks import DatabricksConfig
from mlops_kpi_exporter.config.endpoints import EndpointConfig
from mlops_kpi_exporter.config.gateway import GatewayConfig
from mlops_kpi_exporter.config.state_dir import default_state_dir
from mlops_kpi_exporter.config.tracking_uri import check_tracking_uri
from mlops_kpi_exporter.config.traces import TracesConfig
from mlops_kpi_exporter.config.web import DEFAULT_PORT, parse_listen


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


SHARD_INDEX_ENV = "MLOPS_SHARD_INDEX"


class ShardConfig(_Strict):
    """Several exporters share one MLflow: each watches the experiments whose id hashes to its index."""

    count: int = Field(ge=1, le=256)
    # this process's index, 0 to count - 1; else the MLOPS_SHARD_INDEX environment variable (a
    # Kubernetes StatefulSet sets it from the pod's ordinal)
    index: int | None = Field(None, ge=0)
    # what is dealt between the shards: experiments, or (MLflow with workspaces) whole workspaces, so
    # that one tenant's figures come from one exporter
    by: Literal["experiment", "workspace"] = "experiment"

    @model_validator(mode="after")
    def _index(self) -> ShardConfig:
        index = self.index
        if index is None:
            text = os.environ.get(SHARD_INDEX_ENV, "").strip()
            if not text and self.count > 1:
                raise ValueError(f"set shard.index or the {SHARD_INDEX_ENV} environment variable (0 to {self.count - 1})")
            try:
                index = int(text or 0)
            except ValueError:
                raise ValueError(f"{SHARD_INDEX_ENV}={text[:20]!r} is not a whole number") from None
        if not 0 <= index < self.count:
            raise ValueError(f"shard index {index} is not from 0 to {self.count - 1}")
        object.__setattr__(self, "index", index)
        return self

    def owns(self, experiment_id: str, workspace: str | None = None) -> bool:
        """Whether this shard watches the experiment: a stable hash of its id (or, `by: workspace`, of its
        workspace's name), the same in every process."""
        key = workspace if self.by == "workspace" and workspace is not None else str(experiment_id)
        return zlib.crc32(key.encode()) % self.count == self.index

    @property
    def first(self) -> bool:
        """The shard that also runs what is not split by experiment (registry, KPIs, bills, endpoints)."""
        return self.index == 0


class MlflowConfig(_Strict):
    tracking_uri: str
    poll_interval: Duration = 60.0
    resync_interval: Duration = 3600.0
    experiments: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    exclude_experiments: list[str] = Field(default_factory=list)
    # MLflow with workspaces (3.10+, `mlflow server --enable-workspaces`): the workspaces read, by glob
    workspaces: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    exclude_workspaces: list[str] = Field(default_factory=list)
    timeout: Duration = 30.0
    retry_backoff: Duration = 5.0
    watermark_overlap: Duration = 300.0
    page_size: int = Field(1000, ge=1, le=50000)
    concurrency: int = Field(2, ge=1, le=16)  # requests in flight at once: runs' searches, traces' span batches (see "Sizing")
    shard: ShardConfig | None = None  # several exporters sharing one MLflow (see "Sizing")
    auth: MlflowAuth = Field(default_factory=MlflowAuth)
    ui_url: str | None = None
    ca_bundle: ExistingFile | None = None  # TLS verification is always on

    @field_validator("tracking_uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        return check_tracking_uri(value)

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
    # Scale catalog (list) prices by what the bill says compute really costs against list
    # (EffectiveCost / ListCost of its compute, per provider): shown as its own figures, beside the list-price ones.
    calibrate_from_bill: bool = False
    # DBU rates for runs priced from their Databricks cluster (mlflow.databricks.cluster.info); None:
    # such runs are priced for their VMs only, under the price source databricks_no_dbu_rate
    databricks: DatabricksConfig | None = None


DEFAULT_DURATION_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 259200)
DEFAULT_COST_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 10, 50, 100, 500, 1000)


class RunsConfig(_Strict):
    # `estimator` for runs that say it themselves; the two tags MLflow's autologging writes
    # (scikit-learn, XGBoost, LightGBM...): the class name, and its full path (shortened in the label).
    estimator_keys: list[str] = Field(default_factory=lambda: ["estimator", "estimator_name", "estimator_class"])
    max_run_series: int = Field(100, ge=0, le=10000)
    max_estimators: int = Field(20, ge=1, le=1000)
    activity_window: Duration = 30 * 86400.0
    timezone: str = "UTC"
    duration_buckets: DurationBounds = Field(
        default_factory=lambda: [float(b) for b in DEFAULT_DURATION_BUCKETS], min_length=1, max_length=30
    )
    cost_buckets: Bounds = Field(
        default_factory=lambda: [float(b) for b in DEFAULT_COST_BUCKETS], min_length=1, max_length=30
    )
    # Child runs (mlflow.parentRunId: tuning trials): auto = on the parent's machine unless they name
    # another; within_parent = always; separate = each on its own machine (SageMaker tuning, Katib, Ray).
    nested: Literal["auto", "within_parent", "separate"] = "auto"
    stale_after: Annotated[Duration, AfterValidator(at_least(
        600, "system metrics are logged every ~10 s, metrics far less often"))] = 86400.0  # a RUNNING run silent this long is STALE

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as 'UTC' or 'Europe/Paris'")
        return value

    @field_validator("activity_window")
    @classmethod
    def _window(cls, value: float) -> float:
        if value < 3600:
            raise ValueError("must be at least 1h")
        return value


class ServerConfig(_Strict):
    listen: str = f":{DEFAULT_PORT}"
    web_config_file: ExistingFile | None = None  # TLS and basic auth, exporter-toolkit format

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value


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
    # what the budget covers: run compute (estimated from run times) and/or GenAI spend (LLM traces)
    include: list[Literal["compute", "genai"]] = Field(default_factory=lambda: ["compute"], min_length=1)

    @field_validator("include")
    @classmethod
    def _once(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("list compute and genai at most once each")
        return value


class FixedCostConfig(_Strict):
    """A monthly cost that no run shows: the chapter's data, personnel, software, operational overhead."""

    category: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")
    monthly: float = Field(ge=0, allow_inf_nan=False)
    project: str = Field("shared", pattern=LABEL_SAFE)
    description: str = ""


class AllocationConfig(_Strict):
    tags: list[str] = Field(default_factory=list, max_length=10)
    max_values: int = Field(20, ge=1, le=500)
    # cloud tag keys that mean the same allocation tag on the bill: {team: [team, Team, "user:team"]}
    tag_aliases: dict[str, list[str]] = Field(default_factory=dict)



class ArtifactsConfig(_Strict):
    enabled: bool = False  # listing artifacts costs one call per run: off by default for huge stores
    concurrency: int = Field(4, ge=1, le=32)
    max_runs_per_poll: int = Field(500, ge=1, le=100_000)


class UtilizationConfig(_Strict):
    """Run utilization from MLflow's system metrics: each completed run's history read once."""

    enabled: bool = True  # costs requests only for runs that logged system metrics
    max_runs_per_poll: int = Field(200, ge=1, le=10_000)  # histories read per poll; the rest wait
    max_points: int = Field(200, ge=10, le=2500)  # sampled points per run and metric (MLflow allows 2,500)


class RegistryConfig(_Strict):
    enabled: bool = True
    models: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    deploy_alias: str = "champion"


def _unique_names(items: list[Any]) -> list[Any]:
    seen: set[str] = set()
    for item in items:
        if item.name in seen:
            raise ValueError(f"the name {item.name!r} is used twice")
        seen.add(item.name)
    return items


class Config(_Strict):
    mlflow: MlflowConfig
    _resolved: Any = PrivateAttr(default=None)  # resolved.resolve() caches the second layer here
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    runs: RunsConfig = Field(default_factory=RunsConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    kpis: Annotated[list[KpiConfig], AfterValidator(_unique_names)] = Field(default_factory=list)
    budgets: Annotated[list[BudgetConfig], AfterValidator(_unique_names)] = Field(default_factory=list)
    fixed_costs: list[FixedCostConfig] = Field(default_factory=list)
    allocation: AllocationConfig = Field(default_factory=AllocationConfig)
    artifacts: ArtifactsConfig = Field(default_factory=ArtifactsConfig)
    utilization: UtilizationConfig = Field(default_factory=UtilizationConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    endpoints: Annotated[list[EndpointConfig], AfterValidator(_unique_names)] = Field(default_factory=list)
    billing: BillingConfig = Field(default_factory=BillingConfig)
    traces: TracesConfig = Field(default_factory=TracesConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    # what must survive a restart (Cost Explorer calls made today, the bill files read); None: the
    # default of config/state_dir.py, resolved at load
    state_dir: ConfigPath | None = None

    @model_validator(mode="after")
    def _default_state_dir(self, info: ValidationInfo) -> Config:
        if self.state_dir is None:
            object.__setattr__(self, "state_dir", default_state_dir((info.context or {}).get("base_dir")))
        return self

    @model_validator(mode="after")
    def _shards_calibrate_alike(self) -> Config:
        shard = self.mlflow.shard
        explorers = [s.name for s in self.billing.sources if s.cost_explorer is not None]
        if shard is not None and shard.count > 1 and self.pricing.calibrate_from_bill and explorers:
            raise ValueError(
                f"mlflow.shard with pricing.calibrate_from_bill: true and a cost_explorer bill "
                f"(billing.sources {', '.join(explorers)}): Cost Explorer is read by the first shard only, so the "
                f"shards would calibrate their prices differently. Read that bill from a FOCUS export (focus:) "
                f"instead, or set pricing.calibrate_from_bill: false, or do not shard")
        return self

    @model_validator(mode="after")
    def _aliases_of_tags(self) -> Config:
        known = set(self.allocation.tags) | {rule.bill_tag for rule in self.billing.run_join}
        unknown = sorted(set(self.allocation.tag_aliases) - known)
        if unknown:
            raise ValueError(f"allocation.tag_aliases for {', '.join(unknown)}, which neither allocation.tags nor "
                             "billing.run_join[].bill_tag names")
        return self

    @model_validator(mode="after")
    def _genai_budgets_need_traces(self) -> Config:
        if any("genai" in b.include for b in self.budgets) and not self.traces.enabled:
            raise ValueError("a budget includes genai, but traces.enabled is false: nothing would count it")
        return self

    @model_validator(mode="after")
    def _gateway_needs_a_server(self) -> Config:
        uri = self.mlflow.tracking_uri
        if self.gateway.enabled == "true" and is_local_store(uri):
            raise ValueError("gateway.enabled is true, but mlflow.tracking_uri is not an http(s) tracking server: "
                             "the gateway's budget spend is kept by the server process, a local store has none")
        if self.gateway.enabled == "true" and not is_tracking_server(uri):
            raise ValueError(f"gateway.enabled is true, but mlflow.tracking_uri is read through an MLflow plugin "
                             f"({tracking_scheme(uri)}): the gateway's budgets are read with MLflow's own REST client, "
                             "from an http(s) tracking server")
        return self

    @property
    def reads_gateway(self) -> bool:
        """Whether the gateway source runs: not off, and MLflow is a server (through a plugin, the source
        says once that it has no gateway API to read)."""
        return self.gateway.enabled != "false" and not is_local_store(self.mlflow.tracking_uri)

    @model_validator(mode="after")
    def _calibration_needs_a_bill(self) -> Config:
        if self.billing.run_join and not self.billing.sources:
            raise ValueError("billing.run_join joins a bill to runs: configure billing.sources")
        if self.pricing.calibrate_from_bill and not self.billing.sources:
            raise ValueError("pricing.calibrate_from_bill needs a bill to calibrate from: configure billing.sources")
        if self.pricing.calibrate_from_bill and not self.pricing.use_catalog:
            raise ValueError("pricing.calibrate_from_bill scales the catalog's list prices: it needs pricing.use_catalog")
        return self
