"""What a run's machine costs per hour: a run tag, the config's prices, the shipped catalog, a
Databricks cluster's nodes and DBUs, a default.

The config-then-catalog lookup (`config_then_catalog`) is shared with the token prices of LLM calls
(token_pricing.py)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Generic, TypeVar

import yaml

from mlops_kpi_exporter.bad_data import BadData
from mlops_kpi_exporter.config import MAX_HOURLY_COST, MAX_INSTANCE_COUNT, ConfigError, PricingConfig
from mlops_kpi_exporter.databricks import BAD_COUNT, CLUSTER_INFO_TAG, Cluster, read_cluster

log = logging.getLogger(__name__)

# Price sources of a run priced from its Databricks cluster: every node's VM and DBUs, or a node type
# without a DBU rate in pricing.databricks (its VMs priced, its DBUs not: an underestimate, shown).
DATABRICKS, DATABRICKS_NO_DBU_RATE = "databricks", "databricks_no_dbu_rate"


@dataclass(frozen=True)
class Catalog:
    source: str
    as_of: str
    currency: str
    prices: Mapping[str, float]  # instance type -> hourly price
    providers: Mapping[str, str] = field(default_factory=dict)  # instance type -> aws | gcp | azure


def load_catalog() -> Catalog:
    """The catalog shipped in the package (data/pricing_catalog.yaml)."""
    text = resources.files("mlops_kpi_exporter").joinpath("data/pricing_catalog.yaml").read_text("utf-8")
    raw = yaml.safe_load(text)
    prices: dict[str, float] = {}
    providers: dict[str, str] = {}
    for provider, machines in raw["providers"].items():
        for name, price in machines.items():
            if name in prices:
                raise ValueError(f"pricing catalog: {name} is listed twice (again under {provider})")
            prices[str(name)] = float(price)
            providers[str(name)] = str(provider)
    return Catalog(source=raw["source"], as_of=str(raw["as_of"]), currency=raw["currency"], prices=prices,
                   providers=providers)


P = TypeVar("P")


@dataclass(frozen=True)
class PriceTable(Generic[P]):
    """One table of prices by name, and the price_source label of what it finds."""

    source: str  # config | catalog
    exact: Mapping[str, P]
    lower: Mapping[str, P]  # by lower-cased name: a case-insensitive match catches 'Standard_NC6s_v3' spellings

    @classmethod
    def of(cls, source: str, prices: Mapping[str, P]) -> PriceTable[P]:
        return cls(source, dict(prices), {k.lower(): v for k, v in prices.items()})


def price_tables(config: Mapping[str, P], catalog: Mapping[str, P] | None) -> list[PriceTable[P]]:
    """The config's prices, then the shipped catalog's (None: not used)."""
    tables = [PriceTable.of("config", config)]
    if catalog is not None:
        tables.append(PriceTable.of("catalog", catalog))
    return tables


def config_then_catalog(names: Sequence[str], tables: Sequence[PriceTable[P]]) -> tuple[P, str] | None:
    """(price, source) of the first table that knows one of `names`: machines and models alike, the
    config wins over the catalog. In a table, the names in order, each exactly then case-insensitively."""
    for table in tables:
        for name in names:
            if name in table.exact:
                return table.exact[name], table.source
            if name.lower() in table.lower:
                return table.lower[name.lower()], table.source
    return None


@dataclass(frozen=True)
class Rate:
    hourly: float
    source: str  # tag | config | catalog | databricks[_no_dbu_rate] | default: how it was found (price-source metric)
    instance_type: str | None
    provider: str | None = None  # a catalog (list) price: whose catalog, for calibration by the bill


def first_of(keys, tags: Mapping[str, str], params: Mapping[str, str]) -> str | None:
    """The first of `keys` found, tags before params (tags are where a platform records the machine)."""
    for store in (tags, params):
        for key in keys:
            value = store.get(key)
            if value is not None and str(value).strip():
                return str(value).strip()
    return None


class Pricer:
    def __init__(self, config: PricingConfig, catalog: Catalog | None = None):
        self.config = config
        if config.use_catalog:
            catalog = catalog or load_catalog()
            if catalog.currency != config.currency:
                raise ConfigError(
                    f"pricing.currency: the shipped catalog is priced in {catalog.currency}, not "
                    f"{config.currency}; set pricing.use_catalog: false and list your own prices "
                    "under pricing.instances, or use the catalog's currency"
                )
        self.catalog = catalog if config.use_catalog else None
        self._tables = price_tables(config.instances, self.catalog.prices if self.catalog else None)
        self._catalog_providers = {k.lower(): v for k, v in (self.catalog.providers if self.catalog else {}).items()}
        dbx = config.databricks
        self._dbus = [PriceTable.of("databricks", dbx.dbus_per_hour if dbx else {})]
        self._dbu_price = dbx.dbu_price if dbx else 0.0
        self._said_no_dbu_rate: set[str] = set()  # node types already named in the log

    def price_of(self, instance_type: str) -> tuple[float, str] | None:
        return config_then_catalog([instance_type], self._tables)

    def rate(self, tags: Mapping[str, str], params: Mapping[str, str]) -> Rate:
        """Hourly rate of one run. Raises BadData for values that cannot be a price or a count."""
        cfg = self.config
        instance_type = first_of(cfg.instance_type_keys, tags, params)
        tagged = tags.get(cfg.hourly_cost_tag)
        if tagged is not None:
            return Rate(_bounded(tagged, "invalid_hourly_cost", MAX_HOURLY_COST), "tag", instance_type)
        cluster_info = str(tags.get(CLUSTER_INFO_TAG) or "").strip()
        if instance_type is None and cluster_info:  # a machine named by hand wins over the cluster
            return self.cluster_rate(read_cluster(cluster_info))
        count_text = first_of(cfg.instance_count_keys, tags, params)
        count = 1.0 if count_text is None else _instance_count(count_text)
        if instance_type is not None:
            found = self.price_of(instance_type)
            if found is not None:
                provider = self._catalog_providers.get(instance_type.lower()) if found[1] == "catalog" else None
                return Rate(found[0] * count, found[1], instance_type, provider)
        return Rate(cfg.default_hourly_cost * count, "default", instance_type)

    def cluster_rate(self, cluster: Cluster) -> Rate:
        """workers x (VM + DBUs of node_type) + 1 x (VM + DBUs of the driver type). A VM neither the
        config nor the catalog prices makes the run an unknown machine: the default rate per node."""
        nodes = [(t, n) for t, n in ((cluster.node_type, cluster.workers), (cluster.driver_type, 1)) if n]
        found = {t: self.price_of(t) for t, _ in nodes}
        vms = {t: f[0] for t, f in found.items() if f is not None}
        if len(vms) < len(found):
            return Rate(self.config.default_hourly_cost * (cluster.workers + 1), "default", cluster.node_type)
        hourly, source = 0.0, DATABRICKS
        for node_type, count in nodes:
            dbus = config_then_catalog([node_type], self._dbus)
            if dbus is None:
                source = DATABRICKS_NO_DBU_RATE
                self._say_no_dbu_rate(node_type)
            hourly += count * (vms[node_type] + (dbus[0] * self._dbu_price if dbus else 0.0))
        if hourly > MAX_HOURLY_COST:  # bounded as an hourly-cost tag is: a count mistake, not a price
            raise BadData(BAD_COUNT, f"{cluster.workers} workers of {cluster.node_type} cost {hourly:,.0f} an hour")
        # no catalog provider: the DBUs are no cloud's list price, so the bill's calibration does not scale them
        return Rate(hourly, source, cluster.node_type)

    def _say_no_dbu_rate(self, node_type: str) -> None:
        if node_type not in self._said_no_dbu_rate:
            self._said_no_dbu_rate.add(node_type)
            log.warning("pricing.databricks.dbus_per_hour has no rate for node type %s: Databricks runs on it are "
                        "priced for their VMs only (price source %s)", node_type, DATABRICKS_NO_DBU_RATE)


def _bounded(text: str, reason: str, limit: float) -> float:
    try:
        value = float(str(text).strip())
    except (ValueError, OverflowError):
        raise BadData(reason, f"not a number: {str(text)[:40]!r}") from None
    if not math.isfinite(value) or value < 0 or value > limit:
        raise BadData(reason, f"not a number from 0 to {limit:g}: {str(text)[:40]!r}")
    return value


def _instance_count(text: str) -> float:
    value = _bounded(text, "invalid_instance_count", MAX_INSTANCE_COUNT)
    if value < 1 or value != int(value):
        raise BadData("invalid_instance_count", f"not a whole number of machines: {str(text)[:40]!r}")
    return value


SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥"}


def money(amount: float, currency: str, decimals: int = 2) -> str:
    symbol = SYMBOLS.get(currency)
    return f"{symbol}{amount:,.{decimals}f}" if symbol else f"{amount:,.{decimals}f} {currency}"


@dataclass(frozen=True)
class Estimate:
    """The chapter's back-of-the-envelope calculation: compute plus storage."""

    currency: str
    instance: str
    count: int
    hourly: float  # per machine
    price_source: str
    hours: float
    storage_gb: float
    months: float
    storage_gb_month: float

    @property
    def compute(self) -> float:
        return self.hourly * self.count * self.hours

    @property
    def storage(self) -> float:
        return self.storage_gb * self.months * self.storage_gb_month

    @property
    def total(self) -> float:
        return self.compute + self.storage

    def as_dict(self) -> dict[str, object]:
        return {
            "currency": self.currency, "instance": self.instance, "count": self.count, "hourly": self.hourly,
            "price_source": self.price_source, "hours": self.hours, "compute": round(self.compute, 6),
            "storage_gb": self.storage_gb, "months": self.months, "storage_gb_month": self.storage_gb_month,
            "storage": round(self.storage, 6), "total": round(self.total, 6),
        }

    def lines(self) -> list[str]:
        cur = self.currency
        rows = [
            (f"compute  {self.instance} x {self.count} at {money(self.hourly, cur, 4).rstrip('0').rstrip('.')}/h "
             f"x {self.hours:g} h ({self.price_source} price)", self.compute),
            (f"storage  {self.storage_gb:g} GB x {self.months:g} month(s) at "
             f"{money(self.storage_gb_month, cur, 4).rstrip('0').rstrip('.')}/GB-month", self.storage),
            ("total", self.total),
        ]
        width = max(len(label) for label, _ in rows) + 2
        return [f"{label:<{width}}{money(amount, cur):>12}" for label, amount in rows]


def estimate(pricer: Pricer, instance: str, hours: float, count: int = 1, storage_gb: float = 0.0,
             months: float = 1.0, storage_gb_month: float | None = None) -> Estimate:
    """Raises ValueError, worded for the person at the prompt, for unknown machines or bad numbers."""
    for name, number in (("hours", hours), ("storage GB", storage_gb), ("months", months)):
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"{name} must be a non-negative number, got {number:g}")
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    found = pricer.price_of(instance)
    if found is None:
        import difflib

        known = [name for table in pricer._tables for name in table.exact]
        close = difflib.get_close_matches(instance, known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; add it under pricing.instances in a config file"
        raise ValueError(f"unknown instance type {instance!r}{hint}")
    price = pricer.config.storage_gb_month if storage_gb_month is None else storage_gb_month
    if not math.isfinite(price) or price < 0:
        raise ValueError(f"storage price must be a non-negative number, got {price:g}")
    return Estimate(pricer.config.currency, instance, count, found[0], found[1], hours, storage_gb, months, price)
