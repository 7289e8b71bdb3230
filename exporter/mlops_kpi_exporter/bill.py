"""The cloud bill as the exporter holds it, whatever read it (FOCUS files, Cost Explorer): costs in
integer nano-units per cost basis, what one file (or one Cost Explorer read) adds, the sum a source
exports, and the calibration factors the bill gives the catalog's list prices.

Calibration: the shipped catalog holds on-demand list prices; the bill says what compute really cost
against its list price (savings plans, reservations, negotiated discounts): EffectiveCost / ListCost
of the bill's compute usage rows, per provider, over the months it shows. Only runs priced from the
catalog are scaled: a price from the config or a run tag is taken to be what you pay already.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import json
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation

from mlops_kpi_exporter.runs import NANO

BASES = ("billed", "effective", "list")
Costs = list[int]  # nano, in the order of BASES
COMPUTE_CATEGORIES = {"Compute", "AI and Machine Learning"}  # what MLflow's run estimates price
MISSING = {"", "NULL", "null"}  # how bills write an empty amount
# The bill's provider names (FOCUS ProviderName / ServiceProviderName) as the catalog's sections.
PROVIDER_WORDS = (("aws", ("aws", "amazon")), ("gcp", ("google", "gcp")), ("azure", ("microsoft", "azure")))


# Wide enough for any sum of a file's amounts, exactly (a bill's 38-digit decimals and more): a reader
# adds a file's rows under it (decimal.localcontext(EXACT)), then rounds each group once (in_nano).
EXACT = Context(prec=80, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation])


def exact(text: object) -> Decimal:
    """An amount as the bill writes it (a decimal string; empty or NULL is 0), exactly."""
    if text is None or (isinstance(text, str) and text.strip() in MISSING):
        return Decimal(0)
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise ValueError(f"not a number: {str(text)[:40]!r}") from None
    if not value.is_finite():
        raise ValueError(f"not a finite number: {text!r}")
    if value.adjusted() > 30:
        raise ValueError(f"not an amount: {str(text)[:40]!r}")
    return value


def nano(value: Decimal) -> int:
    """An exact amount (or sum of amounts) in nano-units, rounded once, half to even."""
    return int(EXACT.multiply(value, NANO).to_integral_value(rounding=ROUND_HALF_EVEN, context=EXACT))


def to_nano(text: object) -> int:
    """An amount as the bill writes it, in nano-units (Cost Explorer's amounts: one per figure)."""
    return nano(exact(text))


def parse_tags(text: object) -> dict[str, str]:
    """A FOCUS Tags cell (JSON, or a mapping from Parquet) as a dict; anything else is no tags."""
    if text is None or (isinstance(text, str) and text.strip() in MISSING):
        return {}
    try:
        data = json.loads(text) if isinstance(text, str) else dict(text)
    except (ValueError, TypeError):
        return {}
    if not isinstance(data, dict):
        return {}
    # a tag with no value is the boolean true; keys may carry odd spacing
    return {str(k).strip(): ("true" if v is True else str(v).strip()) for k, v in data.items() if v not in (None, "")}


def add_costs(table: dict, key: tuple, costs: Costs) -> None:
    """Add a row's costs (one per basis) to the group `key` of `table`."""
    current = table.get(key)
    if current is None:
        table[key] = list(costs)
    else:
        for i, value in enumerate(costs):
            current[i] += value


# Each FileTotals table and the types of its key's parts: JSON keeps a key as a list, and a state
# file may have been edited by someone else, so every part is checked when read back.
TABLE_KEYS = {
    "costs": (str, str, str, str),  # (month, provider, service, category)
    "by_tag": (str, str, str, bool),  # (month, tag, value, compute)
    "compute_usage": (str, str),  # (month, provider)
    "joined": (int, str, str, str, int, int),  # (rule index, key, provider, month, charge start ms, end ms)
}


def _checked_key(key: object, types: tuple[type, ...]) -> tuple:
    if not isinstance(key, list) or len(key) != len(types) or any(type(k) is not t for k, t in zip(key, types)):
        raise ValueError(f"a key {str(key)[:80]} is not of the form {[t.__name__ for t in types]}")
    return tuple(key)


def _checked_costs(costs: object) -> Costs:
    if not isinstance(costs, list) or len(costs) != len(BASES) or any(type(c) is not int for c in costs):
        raise ValueError(f"costs {str(costs)[:80]} are not {len(BASES)} whole numbers")
    return list(costs)


@dataclass
class FileTotals:
    """What one file adds to the bill."""

    costs: dict[tuple[str, str, str, str], Costs] = field(default_factory=dict)  # (month, provider, service, category)
    by_tag: dict[tuple[str, str, str, bool], Costs] = field(default_factory=dict)  # (month, tag, value, compute)
    last_charge: dict[str, float] = field(default_factory=dict)  # provider -> end of the latest charge period
    # compute usage only (no credits, adjustments, taxes): what prices compare against list, for calibration
    compute_usage: dict[tuple[str, str], Costs] = field(default_factory=dict)  # (month, provider)
    # rows a billing.run_join rule matches: (rule index, key, provider, month, charge start ms, end ms)
    joined: dict[tuple[int, str, str, str, int, int], Costs] = field(default_factory=dict)
    rows: int = 0

    def in_nano(self) -> FileTotals:
        """The file's exact sums (Decimal costs, as a reader adds rows) in nano-units: each group's sum
        rounded once, half to even, so a group is exact to the nano whatever its number of rows."""
        for name in TABLE_KEYS:
            table = getattr(self, name)
            for key, costs in table.items():
                table[key] = [nano(c) if isinstance(c, Decimal) else c for c in costs]
        return self

    def to_json(self) -> dict:
        """As JSON can hold it: each table a list of [key as a list, costs]."""
        out: dict = {name: [[list(key), costs] for key, costs in getattr(self, name).items()] for name in TABLE_KEYS}
        return {**out, "last_charge": dict(self.last_charge), "rows": self.rows}

    @classmethod
    def from_json(cls, data: dict) -> FileTotals:
        """What to_json wrote; ValueError (or TypeError, KeyError) for anything else."""
        rows = data["rows"]
        if type(rows) is not int or rows < 0:
            raise ValueError(f"rows {rows!r} is not a count")
        totals = cls(rows=rows)
        for provider, end in dict(data["last_charge"]).items():
            if not isinstance(provider, str) or type(end) not in (int, float):
                raise ValueError(f"last_charge {provider!r}: {end!r} is not a time")
            totals.last_charge[provider] = float(end)
        for name, types in TABLE_KEYS.items():
            table = getattr(totals, name)
            for key, costs in data[name]:
                table[_checked_key(key, types)] = _checked_costs(costs)
        return totals


@dataclass
class Bill:
    """The sum over a source's files: what the metric module renders. Never changed once a poll has
    made it (the next poll makes a new one), so it may be handed to other threads as it is."""

    name: str
    currency: str
    months: int
    max_services: int
    max_values: int
    tags: tuple[str, ...]
    costs: dict[tuple[str, str, str, str], Costs] = field(default_factory=dict)
    by_tag: dict[tuple[str, str, str, bool], Costs] = field(default_factory=dict)
    last_charge: dict[str, float] = field(default_factory=dict)
    compute_usage: dict[tuple[str, str], Costs] = field(default_factory=dict)
    joined: dict[tuple[int, str, str, str, int, int], Costs] = field(default_factory=dict)
    files: int = 0
    rows: int = 0

    def add(self, part: FileTotals) -> None:
        for key, costs in part.joined.items():
            add_costs(self.joined, key, costs)
        for key, costs in part.costs.items():
            add_costs(self.costs, key, costs)
        for key, costs in part.compute_usage.items():
            add_costs(self.compute_usage, key, costs)
        for key, costs in part.by_tag.items():
            add_costs(self.by_tag, key, costs)
        for provider, end in part.last_charge.items():
            self.last_charge[provider] = max(self.last_charge.get(provider, 0.0), end)
        self.files += 1
        self.rows += part.rows

    def shown_months(self) -> list[str]:
        return sorted({month for month, *_ in self.costs})[-self.months:]


def catalog_provider(bill_provider: str) -> str | None:
    """`AWS` -> aws, `Google Cloud` -> gcp, `Microsoft` -> azure; None for a provider the catalog lacks."""
    name = bill_provider.lower()
    return next((key for key, words in PROVIDER_WORDS if any(word in name for word in words)), None)


def calibration_factors(bills: list[Bill]) -> dict[str, float]:
    """Effective over list cost of compute usage per catalog provider, all bills together, the months
    each shows; a provider whose compute has no list cost has no factor (list prices stay)."""
    effective: dict[str, int] = {}
    listed: dict[str, int] = {}
    for bill in sorted(bills, key=lambda b: b.name):
        months = set(bill.shown_months())
        for (month, provider), costs in bill.compute_usage.items():
            key = catalog_provider(provider)
            if key is not None and month in months:
                effective[key] = effective.get(key, 0) + costs[1]
                listed[key] = listed.get(key, 0) + costs[2]
    return {p: effective[p] / listed[p] for p in sorted(listed) if listed[p] > 0 and effective[p] >= 0}
