"""The billing part of the config: cloud bills in FOCUS files, read beside MLflow's estimates."""

from __future__ import annotations

from pathlib import Path
from pydantic import Field, ValidationInfo, field_validator, model_validator

from mlops_kpi_exporter.config.common import LABEL_SAFE, Duration, _Strict


class CostExplorerConfig(_Strict):
    region: str = "us-east-1"
    max_calls_per_day: int = Field(24, ge=1, le=1000)  # every GetCostAndUsage request is billed


class BillingSource(_Strict):
    name: str = Field(pattern=LABEL_SAFE)  # the source label is billing:<name>
    # FOCUS files: a folder (read recursively), a file or a glob; .csv, .csv.gz, .parquet. Relative to
    # the config file's folder, as every path in the config.
    focus: str | None = None
    cost_explorer: CostExplorerConfig | None = None

    @field_validator("focus")
    @classmethod
    def _where(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if value.startswith("s3://"):
            raise ValueError("s3:// exports are not read yet: sync them to a folder (aws s3 sync) and point here")
        base = (info.context or {}).get("base_dir")
        path = Path(value)
        return str(path if path.is_absolute() or base is None else Path(base) / path)

    @model_validator(mode="after")
    def _one_kind(self) -> BillingSource:
        if (self.focus is None) == (self.cost_explorer is None):
            raise ValueError("set focus (FOCUS files) or cost_explorer, one of them")
        if self.cost_explorer is not None:
            raise ValueError("cost_explorer is not available yet: export the bill as FOCUS (AWS Data Exports) instead")
        return self


class BillingConfig(_Strict):
    poll_interval: Duration = 3600.0
    months: int = Field(3, ge=1, le=24)  # the latest N billing months present in the data are exported
    max_services: int = Field(20, ge=1, le=500)  # per provider and month; the rest summed as "other"
    monthly_budget: float | None = Field(None, gt=0, allow_inf_nan=False)  # the whole bill, per month
    sources: list[BillingSource] = Field(default_factory=list)

    @field_validator("poll_interval")
    @classmethod
    def _slow(cls, value: float) -> float:
        if value < 60:
            raise ValueError("must be at least 1m (bills change a few times a day)")
        return value

    @field_validator("sources")
    @classmethod
    def _unique(cls, value: list[BillingSource]) -> list[BillingSource]:
        names = [s.name for s in value]
        if len(names) != len(set(names)):
            raise ValueError("billing source names must be unique")
        return value


def tag_keys(tag: str, aliases: dict[str, list[str]]) -> list[str]:
    """The cloud tag keys that mean an allocation tag (its aliases, else the tag itself)."""
    return list(aliases.get(tag) or [tag])
