"""The pricing.databricks part of the config: what Databricks charges on top of a cluster's VMs (DBUs)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from mlops_kpi_exporter.config.common import _Strict

# Sane bounds, not prices: DBU list prices are well under 1 per DBU, and the largest nodes burn
# well under 100 DBUs an hour; more is a unit or typing mistake.
MAX_DBU_PRICE = 1_000.0
MAX_DBUS_PER_HOUR = 1_000.0


class DatabricksConfig(_Strict):
    """Both keys are required: a DBU price without rates (or rates without a price) would price every
    cluster's DBUs at 0 without saying so."""

    dbu_price: float = Field(ge=0, le=MAX_DBU_PRICE, allow_inf_nan=False)  # pricing.currency per DBU
    # node type -> DBUs one node of it burns per hour (Databricks' rate card for your plan and workload)
    dbus_per_hour: dict[str, Annotated[float, Field(ge=0, le=MAX_DBUS_PER_HOUR, allow_inf_nan=False)]] = Field(
        min_length=1)

    @field_validator("dbus_per_hour")
    @classmethod
    def _names(cls, value: dict[str, float]) -> dict[str, float]:
        lowered: dict[str, str] = {}
        for name in value:
            if not name.strip():
                raise ValueError("a node type must not be empty")
            if name.lower() in lowered:
                raise ValueError(f"{lowered[name.lower()]!r} and {name!r} differ only in case: node types match "
                                 "case-insensitively, keep one")
            lowered[name.lower()] = name
        return value
