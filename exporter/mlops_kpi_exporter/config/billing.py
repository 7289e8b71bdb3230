"""The billing part of the config: cloud bills in FOCUS files, read beside MLflow's estimates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from mlops_kpi_exporter.config.common import LABEL_SAFE, Duration, _Strict, at_least


class AwsAccess(_Strict):
    """Where boto3 connects. Credentials always come from the usual AWS chain (environment, profile,
    instance or pod role), never from this file."""

    region: str | None = Field(None, pattern=r"^[a-z0-9-]{2,40}$")  # else the chain's (AWS_REGION, profile)
    endpoint_url: str | None = Field(None, pattern=r"^https?://")  # an S3-compatible store; else AWS_ENDPOINT_URL*
    profile: str | None = Field(None, pattern=LABEL_SAFE)  # a named profile of ~/.aws/config


class CostExplorerConfig(AwsAccess):
    region: str | None = Field("us-east-1", pattern=r"^[a-z0-9-]{2,40}$")  # Cost Explorer lives in us-east-1
    # Every GetCostAndUsage request is billed (USD 0.01): a poll that would go over this budget of
    # requests in a UTC day is put off, and the last figures stay.
    max_calls_per_day: int = Field(100, ge=1, le=10_000)  # USD 1 a day: two tags polled hourly (4 calls a poll)


class BillingSource(_Strict):
    name: str = Field(pattern=LABEL_SAFE)  # the source label is billing:<name>
    # FOCUS files: a folder (read recursively), a file or a glob; .csv, .csv.gz, .parquet. Relative to
    # the config file's folder, as every path in the config.
    focus: str | None = None
    s3: AwsAccess | None = None  # how to reach an s3:// focus location (optional)
    cost_explorer: CostExplorerConfig | None = None

    @field_validator("focus")
    @classmethod
    def _where(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if value.startswith("s3://"):
            if not value[5:].split("/", 1)[0]:
                raise ValueError("s3:// needs a bucket: s3://bucket/prefix/")
            return value
        base = (info.context or {}).get("base_dir")
        path = Path(value)
        return str(path if path.is_absolute() or base is None else Path(base) / path)

    @model_validator(mode="after")
    def _one_kind(self) -> BillingSource:
        if (self.focus is None) == (self.cost_explorer is None):
            raise ValueError("set focus (FOCUS files) or cost_explorer, one of them")
        if self.s3 is not None and not (self.focus or "").startswith("s3://"):
            raise ValueError("s3: applies to an s3:// focus location only")
        return self


class JoinRule(_Strict):
    """A bill row whose tag `bill_tag` (after allocation.tag_aliases; FOCUS 1.3 AllocatedTags first, then
    Tags) has a value goes to the runs whose id (`run: run_id`) or tag `run_tag` has that value."""

    bill_tag: str = Field(min_length=1, max_length=128)
    run: Literal["run_id"] | None = None
    run_tag: str | None = Field(None, min_length=1, max_length=250)

    @model_validator(mode="after")
    def _one_side(self) -> JoinRule:
        if (self.run is None) == (self.run_tag is None):
            raise ValueError("set run: run_id or run_tag: <MLflow run tag>, one of them")
        return self


class BillingConfig(_Strict):
    poll_interval: Annotated[Duration, AfterValidator(at_least(60, "bills change a few times a day"))] = 3600.0
    months: int = Field(3, ge=1, le=24)  # the latest N billing months present in the data are exported
    max_services: int = Field(20, ge=1, le=500)  # per provider and month; the rest summed as "other"
    monthly_budget: float | None = Field(None, gt=0, allow_inf_nan=False)  # the whole bill, per month
    sources: list[BillingSource] = Field(default_factory=list)
    # The bill joined to MLflow runs: rules in order, the first that matches a row wins.
    run_join: list[JoinRule] = Field(default_factory=list, max_length=20)
    max_join_keys: int = Field(20, ge=1, le=500)  # idle cost series per bill, provider and month; the rest "other"
    calibration_window: Duration = 30 * 86400.0  # joined runs that ended this recently give the calibration ratio

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
