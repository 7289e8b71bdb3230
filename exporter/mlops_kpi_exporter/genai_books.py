"""The GenAI books: what is kept of the watched experiments' traces, sums per experiment and never the
traces themselves, and how one trace's facts are folded into them (`fold`, under the config's `Rules`).

Exact integers throughout (tokens, nano-units of money, milliseconds). Apart from the sync that
reads MLflow (sources/traces.py), which keeps one `ExperimentSpend` per experiment, and from the
rendering (metrics/genai.py), which turns the books into families and keeps no state.
"""

from __future__ import annotations

import bisect
import zoneinfo
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

from mlops_kpi_exporter.config import Config
from mlops_kpi_exporter.metrics import OTHER
from mlops_kpi_exporter.token_pricing import TokenPricer
from mlops_kpi_exporter.trace_facts import UNKNOWN, TraceFacts

MAX_LABEL = 120  # characters of a model, user or session name kept in a label
KEEP_FACTOR = 50  # distinct models (users, sessions) kept per experiment: this x the label limit


@dataclass
class ExperimentSpend:
    """Everything counted of one experiment's traces: sums, never the traces themselves."""

    traces: Counter[str] = field(default_factory=Counter)  # ended traces counted, by status (OK, ERROR)
    tokens: Counter[tuple[str, str]] = field(default_factory=Counter)  # (model, token_type) -> tokens
    cost: Counter[str] = field(default_factory=Counter)  # model -> nano-units (priced tokens only)
    priced_tokens: Counter[tuple[str, str]] = field(default_factory=Counter)  # (model, price_source) -> tokens
    month_cost: Counter[str] = field(default_factory=Counter)  # "YYYY-MM" (runs.timezone) -> nano-units
    breakdown_cost: Counter[str] = field(default_factory=Counter)  # user or session -> nano-units
    duration_buckets: list[int] = field(default_factory=list)  # per bucket (not cumulative), +Inf last
    duration_sum_ms: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> traces left out
    # What the server's aggregation can be compared with: ended traces seen (skipped ones too) by state,
    # and the sum of their total_tokens as MLflow recorded them.
    seen: Counter[str] = field(default_factory=Counter)
    seen_tokens: Counter[str] = field(default_factory=Counter)

    def empty(self) -> bool:
        return not (self.traces or self.skipped or self.seen)


def _label(value: str) -> str:
    return value if len(value) <= MAX_LABEL else value[: MAX_LABEL - 3] + "..."


@dataclass(frozen=True)
class Rules:
    """What turns a trace's facts into sums, from the config."""

    pricer: TokenPricer
    timezone: str
    buckets: tuple[float, ...]  # seconds
    breakdown: str  # none | user | session
    keep_models: int  # distinct model names kept per experiment; later ones count as "other"
    keep_values: int  # distinct users or sessions kept per experiment

    @classmethod
    def of(cls, config: Config) -> Rules:
        cfg = config.traces
        return cls(TokenPricer(cfg, config.pricing.currency), config.runs.timezone, tuple(cfg.duration_buckets),
                   cfg.breakdown, KEEP_FACTOR * cfg.max_models, KEEP_FACTOR * cfg.max_breakdown_values)

    def month(self, ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).astimezone(zoneinfo.ZoneInfo(self.timezone)).strftime("%Y-%m")


def fold(spend: ExperimentSpend, facts: TraceFacts, rules: Rules) -> None:
    """Add one ended trace to its experiment's sums."""
    spend.traces[facts.status] += 1
    if facts.duration_ms is not None:
        if not spend.duration_buckets:
            spend.duration_buckets = [0] * (len(rules.buckets) + 1)
        spend.duration_buckets[bisect.bisect_left(rules.buckets, facts.duration_ms / 1000)] += 1
        spend.duration_sum_ms += facts.duration_ms
    month = rules.month(facts.request_ms)
    known_models = {model for model, _ in spend.tokens} | set(spend.cost)
    for unit in facts.units:
        model = _label(unit.model)
        if model not in known_models and len(known_models) >= rules.keep_models:
            model = OTHER
        known_models.add(model)
        for kind, n in unit.usage.items():
            spend.tokens[(model, kind)] += n
        nano, source = rules.pricer.price(unit)
        if unit.usage.total or nano:
            spend.priced_tokens[(model, source)] += unit.usage.total
        spend.cost[model] += nano or 0
        if nano:
            spend.month_cost[month] += nano
            if rules.breakdown != "none":
                value = _label((facts.user if rules.breakdown == "user" else facts.session) or UNKNOWN)
                if value not in spend.breakdown_cost and len(spend.breakdown_cost) >= rules.keep_values:
                    value = OTHER
                spend.breakdown_cost[value] += nano
