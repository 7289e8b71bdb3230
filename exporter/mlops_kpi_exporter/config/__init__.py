"""The YAML config file: parsed and validated once, before anything starts.

By area: `models` (every key and its checks; `endpoints` for the endpoints part, `databricks` for
pricing.databricks), `loading` (YAML, error wording, the path rule), `secrets` (what mlflow.auth
points to), `web` (listen address, TLS and basic auth), `durations` (the one duration parser),
`common` (what they share). Every error names the file and the dotted path of the offending field.
"""

from mlops_kpi_exporter.config.common import (
    LABEL_SAFE,
    MAX_HOURLY_COST,
    MAX_INSTANCE_COUNT,
    ConfigError,
    redact_uri,
)
from mlops_kpi_exporter.config.databricks import DatabricksConfig
from mlops_kpi_exporter.config.durations import format_duration, parse_duration
from mlops_kpi_exporter.config.endpoints import (
    PRESET_NAMES,
    CustomMapping,
    EndpointConfig,
    MetricSelector,
    ProbeConfig,
)
from mlops_kpi_exporter.config.gateway import GatewayConfig
from mlops_kpi_exporter.config.loading import config_from_dict, load_config
from mlops_kpi_exporter.config.models import (
    AllocationConfig,
    ArtifactsConfig,
    BudgetConfig,
    Config,
    FixedCostConfig,
    KpiConfig,
    MlflowAuth,
    MlflowConfig,
    PricingConfig,
    RegistryConfig,
    RunsConfig,
    ServerConfig,
)
from mlops_kpi_exporter.config.traces import TokenPrice, TracesConfig
from mlops_kpi_exporter.config.web import DEFAULT_PORT, TlsServerConfig, WebConfig, load_web_config, parse_listen

__all__ = [
    "DEFAULT_PORT", "LABEL_SAFE", "MAX_HOURLY_COST", "MAX_INSTANCE_COUNT", "PRESET_NAMES", "AllocationConfig",
    "ArtifactsConfig", "BudgetConfig", "Config", "ConfigError", "CustomMapping", "DatabricksConfig", "EndpointConfig",
    "FixedCostConfig", "GatewayConfig", "KpiConfig", "MetricSelector", "MlflowAuth", "MlflowConfig", "PricingConfig",
    "ProbeConfig",
    "RegistryConfig", "RunsConfig", "ServerConfig", "TlsServerConfig", "TokenPrice", "TracesConfig", "WebConfig",
    "config_from_dict", "format_duration", "load_config", "load_web_config", "parse_duration", "parse_listen", "redact_uri",
]
