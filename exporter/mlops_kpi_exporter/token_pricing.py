"""What an LLM call's tokens cost: the price per million tokens of its model, from the config's
traces.token_prices, else the shipped catalog (data/token_prices.yaml), else unpriced; MLflow's own
recorded cost first when the currency is USD.

Beside pricing.py (what a machine costs per hour) and looked up the same way, config then catalog
(`pricing.config_then_catalog`), so both report their price_source alike. Apart from the traces
sync: pricing is a rule of the books, not a read of MLflow.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from importlib import resources
from typing import Any

import yaml

from mlops_kpi_exporter.config import TracesConfig
from mlops_kpi_exporter.pricing import config_then_catalog, price_tables
from mlops_kpi_exporter.trace_facts import Unit, Usage

_PROVIDER = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*:(?!/)(.+)$")  # "openai:gpt-4o" (a provider prefix)


@dataclass(frozen=True)
class TokenPrice:
    """Per million tokens, as exact decimals."""

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None

    @classmethod
    def of(cls, raw: Any) -> TokenPrice:
        get = raw.get if isinstance(raw, dict) else lambda key: getattr(raw, key, None)

        def dec(key: str) -> Decimal | None:
            value = get(key)
            return None if value is None else Decimal(str(value))

        return cls(dec("input") or Decimal(0), dec("output") or Decimal(0), dec("cached_input"), dec("cache_write"))

    def cost_nano(self, usage: Usage) -> int:
        """Exact: tokens x price per million, in nano-units (x 1e9 / 1e6 = x 1000), rounded once."""
        cached = self.input if self.cached_input is None else self.cached_input
        written = self.input if self.cache_write is None else self.cache_write
        total = (usage.input * self.input + usage.output * self.output + usage.cached_input * cached
                 + usage.cache_creation_input * written)
        return int((total * 1000).to_integral_value(ROUND_HALF_EVEN))


@dataclass(frozen=True)
class TokenCatalog:
    source: str
    as_of: str
    currency: str
    prices: Mapping[str, TokenPrice]  # model name or alias -> price


def load_token_catalog() -> TokenCatalog:
    """The catalog shipped in the package (data/token_prices.yaml)."""
    text = resources.files("mlops_kpi_exporter").joinpath("data/token_prices.yaml").read_text("utf-8")
    raw = yaml.safe_load(text)
    prices: dict[str, TokenPrice] = {}
    for name, entry in raw["models"].items():
        price = TokenPrice.of(entry)
        for alias in [name, *entry.get("aliases", [])]:
            if str(alias).lower() in {k.lower() for k in prices}:
                raise ValueError(f"token price catalog: {alias} is listed twice")
            prices[str(alias)] = price
    return TokenCatalog(str(raw["source"]), str(raw["as_of"]), str(raw["currency"]), prices)


def model_names(model: str) -> list[str]:
    """The names a model is looked up by, in order: as recorded, then without a provider prefix
    (`openai/gpt-4o`, `openai:/gpt-4o`, `models/gemini-2.5-pro`, `openai:gpt-4o` -> the part after it)."""
    names = [model]
    bare = model.rsplit("/", 1)[-1]
    if bare and bare != model:
        names.append(bare)
    match = _PROVIDER.match(bare)
    if match:
        names.append(match.group(1))
    return names


class TokenPricer:
    """Prices one LLM call. MLflow's recorded cost first (it is in USD: used when pricing.currency is
    USD); else traces.token_prices; else the shipped catalog (USD: used when pricing.currency is USD and
    traces.use_catalog); else unpriced. Names match exactly, then case-insensitively, then without a
    provider prefix; the config wins over the catalog at every step."""

    def __init__(self, traces: TracesConfig, currency: str, catalog: TokenCatalog | None = None):
        self.usd = currency == "USD"
        self.config = {name: TokenPrice.of(price) for name, price in traces.token_prices.items()}
        self.catalog: TokenCatalog | None = None
        if traces.use_catalog and self.usd:
            self.catalog = catalog or load_token_catalog()
            if self.catalog.currency != currency:
                self.catalog = None  # a catalog in another currency is never applied to this one
        self._tables = price_tables(self.config, self.catalog.prices if self.catalog is not None else None)

    def price_of(self, model: str) -> tuple[TokenPrice, str] | None:
        return config_then_catalog(model_names(model), self._tables)

    def price(self, unit: Unit) -> tuple[int | None, str]:
        """(cost in nano-units of pricing.currency or None, price source)."""
        if unit.mlflow_cost_nano is not None and self.usd:
            return unit.mlflow_cost_nano, "mlflow"
        found = self.price_of(unit.model)
        if found is None:
            return None, "unpriced"
        return found[0].cost_nano(unit.usage), found[1]
