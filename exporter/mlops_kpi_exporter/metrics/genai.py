"""GenAI spend figures from MLflow 3 traces: traces by status, tokens and cost by model, latency,
month-to-date cost, spend by user or session, how tokens were priced, traces skipped.

The traces source (sources/traces.py) keeps one `ExperimentSpend` per watched experiment, in exact
integers (tokens, nano-units of money, milliseconds): the books, in genai_books.py. This module only
turns them into families, bounding every label: the top `traces.max_models` models of each experiment
by cost (then tokens) keep their name, the rest are summed as `other`; the same for users or sessions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter.genai_books import ExperimentSpend
from mlops_kpi_exporter.ledger import cumulative_buckets
from mlops_kpi_exporter.metrics import OTHER, top_and_other
from mlops_kpi_exporter.metrics.catalogue import family
from mlops_kpi_exporter.trace_facts import NANO

TOKEN_TYPES = ("input", "output", "cached_input", "cache_creation_input")
ALWAYS_SHOWN_TOKEN_TYPES = ("input", "output")  # the cache types only where a trace recorded them
PRICE_SOURCES = ("mlflow", "config", "catalog", "unpriced")
STATUSES = ("OK", "ERROR", "IN_PROGRESS")
SKIP_REASONS = ("invalid_token_usage", "invalid_cost", "unknown_status", "invalid_time", "invalid_data")


@dataclass(frozen=True)
class GenaiView:
    """What the traces source hands over for rendering one poll."""

    spend: Mapping[str, ExperimentSpend]  # experiment id -> its books
    experiments: Mapping[str, str]  # experiment id -> name (the label)
    in_progress: Mapping[str, int]  # experiment id -> traces IN_PROGRESS now
    currency: str
    month: str  # the current month, "YYYY-MM" in runs.timezone
    timezone: str
    duration_buckets: tuple[float, ...]  # seconds
    max_models: int = 10
    breakdown: str = "none"  # none | user | session
    max_breakdown_values: int = 20
    last_resync: float | None = None  # unix time of the last full recount or check


def ranked(totals: Mapping[str, tuple[int, int]], limit: int) -> set[str]:
    """The `limit` names with the largest (cost, tokens), ties by name: the ones that keep a label."""
    kept = top_and_other(totals, limit, add=lambda a, b: (a[0] + b[0], a[1] + b[1]))
    return set(list(kept)[:limit])


def kept_models(spend: ExperimentSpend, limit: int) -> dict[str, str]:
    """Model -> its label: its name for the top `limit` by cost then tokens, else `other`."""
    totals: dict[str, list[int]] = {}
    for (model, _), n in spend.tokens.items():
        totals.setdefault(model, [0, 0])[1] += n
    for model, nano in spend.cost.items():
        totals.setdefault(model, [0, 0])[0] += nano
    for model, _ in spend.priced_tokens:
        totals.setdefault(model, [0, 0])
    keep = ranked({m: (c, t) for m, (c, t) in totals.items()}, limit)
    return {model: model if model in keep else OTHER for model in totals}


def families(view: GenaiView) -> list[Metric]:
    """Every GenAI family; nothing at all while no watched experiment has a trace."""
    shown = sorted((exp_id for exp_id, spend in view.spend.items()
                    if not spend.empty() or view.in_progress.get(exp_id)), key=lambda e: view.experiments.get(e, e))
    if not shown:
        return []
    cur = view.currency
    traces = family("mlops_genai_traces")
    tokens = family("mlops_genai_tokens")
    cost = family("mlops_genai_cost", currency=cur)
    month = family("mlops_genai_cost_month_to_date", currency=cur, timezone=view.timezone)
    priced = family("mlops_genai_tokens_by_price_source")
    duration = family("mlops_genai_trace_duration_seconds")
    by_value = None
    if view.breakdown == "user":
        by_value = family("mlops_genai_cost_by_user", currency=cur)
    elif view.breakdown == "session":
        by_value = family("mlops_genai_cost_by_session", currency=cur)
    skipped: Counter[str] = Counter()
    for exp_id in shown:
        spend = view.spend.get(exp_id) or ExperimentSpend()
        name = view.experiments.get(exp_id, exp_id)
        skipped.update(spend.skipped)
        for status in STATUSES:
            n = view.in_progress.get(exp_id, 0) if status == "IN_PROGRESS" else spend.traces.get(status, 0)
            traces.add_metric([name, status], n)
        labels = kept_models(spend, view.max_models)
        token_sums: Counter[tuple[str, str]] = Counter()
        for (model, kind), n in spend.tokens.items():
            token_sums[(labels[model], kind)] += n
        for label in set(labels.values()):
            for kind in ALWAYS_SHOWN_TOKEN_TYPES:
                token_sums[(label, kind)] += 0
        for (label, kind), n in sorted(token_sums.items()):
            tokens.add_metric([name, label, kind], n)
        cost_sums: Counter[str] = Counter({label: 0 for label in labels.values()})
        for model, nano in spend.cost.items():
            cost_sums[labels[model]] += nano
        for label, nano in sorted(cost_sums.items()):
            cost.add_metric([name, label], nano / NANO)
        source_sums: Counter[tuple[str, str]] = Counter()
        for (model, source), n in spend.priced_tokens.items():
            source_sums[(labels[model], source)] += n
        for (label, source), n in sorted(source_sums.items()):
            priced.add_metric([name, label, source], n)
        month.add_metric([name], spend.month_cost.get(view.month, 0) / NANO)
        counts = spend.duration_buckets or [0] * (len(view.duration_buckets) + 1)
        duration.add_metric([name], cumulative_buckets(view.duration_buckets, counts), spend.duration_sum_ms / 1000)
        if by_value is not None:
            totals = {value: (nano, 0) for value, nano in spend.breakdown_cost.items() if value != OTHER}
            keep = ranked(totals, view.max_breakdown_values)
            sums: Counter[str] = Counter()
            for value, nano in spend.breakdown_cost.items():
                sums[value if value in keep else OTHER] += nano
            for value, nano in sorted(sums.items()):
                by_value.add_metric([name, value], nano / NANO)
    skipped_family = family("mlops_genai_traces_skipped")
    for reason in sorted(set(SKIP_REASONS) | set(skipped)):
        skipped_family.add_metric([reason], skipped.get(reason, 0))
    out = [traces, tokens, cost, month, priced, duration]
    if by_value is not None:
        out.append(by_value)
    out.append(skipped_family)
    if view.last_resync is not None:
        resync = family("mlops_genai_last_resync_timestamp_seconds")
        resync.add_metric([], view.last_resync)
        out.append(resync)
    return out
