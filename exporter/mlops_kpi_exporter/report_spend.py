"""A report's figures beside the runs': the cloud bill of the period's months, the bill joined down to
its runs, idle spend from system metrics and GenAI spend from traces. Each is None when the config
asks for none of it."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from mlops_kpi_exporter.bad_data import BadData
from mlops_kpi_exporter.bill import COMPUTE_CATEGORIES
from mlops_kpi_exporter.config import Config
from mlops_kpi_exporter.mlflow_client import MlflowConnection
from mlops_kpi_exporter.report_figures import TOP_RUNS, Figures, Period, collect, utc_of
from mlops_kpi_exporter.runs import (
    NANO,
    RunFacts,
    facts_of,
)

if TYPE_CHECKING:
    from mlops_kpi_exporter.sources.run_sync import RunSync
def _month_bounds(month: str) -> tuple[int, int]:
    year, mon = int(month[:4]), int(month[5:7])
    start = datetime(year, mon, 1, tzinfo=timezone.utc)
    end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=timezone.utc)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def period_months(period: Period) -> list[str]:
    """The UTC calendar months a period touches (the bill's months are UTC)."""
    months, moment = [], utc_of(period.start_ms).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    while int(moment.timestamp() * 1000) < period.end_ms:
        months.append(f"{moment.year:04d}-{moment.month:02d}")
        moment = moment.replace(year=moment.year + moment.month // 12, month=moment.month % 12 + 1)
    return months


def cloud_bill(config: Config, runs: RunSync, period: Period, now_ms: int, bills: list) -> dict | None:
    """The bill of each month the period touches, beside MLflow's estimate for the same (whole, UTC)
    month: per bill and provider, and compute per allocation tag value. `bills`: (name, Bill or the
    error that stopped reading it)."""
    if not bills:
        return None
    months = period_months(period)[-12:]
    out: dict[str, Any] = {"months": months, "totals": [], "estimate": {}, "by_tag": [], "errors": {}, "last_charge": {}}
    read = []
    for name, bill in bills:
        if isinstance(bill, str):
            out["errors"][name] = bill
            continue
        read.append(bill)
        for provider, end in sorted(bill.last_charge.items()):
            out["last_charge"][f"{name}/{provider}"] = utc_of(int(end * 1000)).isoformat()
        for month in months:
            providers: dict[str, list[int]] = {}
            for (m, provider, _, category), costs in bill.costs.items():
                if m == month:
                    sums = providers.setdefault(provider, [0] * 6)
                    compute = category in COMPUTE_CATEGORIES
                    for i, value in enumerate(costs):
                        sums[i] += value
                        sums[3 + i] += value if compute else 0
            for provider, sums in sorted(providers.items()):
                out["totals"].append({"bill": name, "month": month, "provider": provider, **{
                    key: round(v / NANO, 6) for key, v in zip(
                        ("billed", "effective", "list", "compute_billed", "compute_effective", "compute_list"), sums)}})
    for month in months:
        if not any(m == month for bill in read for m, *_ in bill.costs):
            continue  # no bill for that month (yet): nothing to set the estimate beside
        start, end = _month_bounds(month)
        estimate = collect(runs, Period(start, min(end, max(now_ms, start + 1))), now_ms)
        out["estimate"][month] = round(estimate.total / NANO, 6)
        for tag in config.allocation.tags:
            billed: Counter = Counter()
            for bill in read:
                for (m, t, value, compute), costs in bill.by_tag.items():
                    if m == month and t == tag and compute:
                        billed[value] += costs[0]
            estimated = estimate.by_tag.get(tag, Counter())
            for value in sorted(set(billed) | set(estimated), key=lambda v: (-billed[v], -estimated[v], v))[:TOP_RUNS]:
                out["by_tag"].append({
                    "month": month, "tag": tag, "value": value, "estimate": round(estimated[value] / NANO, 6),
                    "bill_compute": round(billed[value] / NANO, 6),
                    "bill_over_estimate": round(billed[value] / estimated[value], 4) if estimated[value] else None})
    return out


def billed_runs(config: Config, runs: RunSync, period: Period, now_ms: int, bills: list) -> dict | None:
    """The bill of the period's months joined to the runs (billing.run_join), as the exporter joins it:
    billed cost per experiment and the costliest runs by billed cost, each beside its estimate. Only
    the runs the bill names are kept, so memory follows the bill, not the store."""
    from mlops_kpi_exporter.bill_join import join

    rules = tuple(config.billing.run_join)
    read = [bill for _, bill in bills if not isinstance(bill, str)]
    if not rules or not read:
        return None
    months = set(period_months(period))
    by_id, by_tag = set(), set()
    for bill in read:
        for rule, key, _, month, _, _ in bill.joined:
            if month in months and rule < len(rules):
                if rules[rule].run == "run_id":
                    by_id.add(key)
                else:
                    by_tag.add((runs.rules.join_tags.index(rules[rule].run_tag), key))
    experiments = runs.matching_experiments()
    kept: dict[str, RunFacts] = {}
    tagged: dict[tuple[int, str], list[RunFacts]] = {}
    for run in runs.search(experiments, f"attributes.start_time < {period.end_ms}"):
        try:
            facts = facts_of(runs.rules, run, now_ms)
        except BadData:
            continue
        keys = [(i, v) for i, v in enumerate(facts.join_values) if (i, v) in by_tag]
        if facts.run_id in by_id or keys:
            kept[facts.run_id] = facts
            for key in keys:
                tagged.setdefault(key, []).append(facts)

    def runs_for(index: int, key: str) -> list[RunFacts]:
        rule = rules[index]
        if rule.run == "run_id":
            return [kept[key]] if key in kept else []
        return tagged.get((runs.rules.join_tags.index(rule.run_tag), key), [])

    shown = [_only_months(bill, months) for bill in read]
    joined = join(shown, rules, runs_for, now_ms)
    per_exp: dict[str, list[int]] = {}
    rows = []
    for run_id in joined.run_costs:
        facts = kept[run_id]
        billed, estimate = joined.run_total(run_id), facts.cost_nano(now_ms)
        name = experiments.get(facts.experiment_id, facts.experiment_id)
        sums = per_exp.setdefault(name, [0, 0, 0, 0, 0])
        per_exp[name] = [a + b for a, b in zip(sums, [*billed, estimate, 1])]
        rows.append((billed[0], run_id, {"run_id": run_id, "run_name": facts.run_name, "experiment": name,
                                          "instance_type": facts.instance_type or "", "estimate": round(estimate / NANO, 6),
                                          "billed": round(billed[0] / NANO, 6), "effective": round(billed[1] / NANO, 6),
                                          "complete": joined.complete(facts)}))
    money_of = lambda nano: round(nano / NANO, 6)  # noqa: E731
    return {
        "by_experiment": {name: {"billed": money_of(v[0]), "effective": money_of(v[1]), "list": money_of(v[2]),
                                 "estimate": money_of(v[3]), "runs": v[4]}
                          for name, v in sorted(per_exp.items(), key=lambda kv: -kv[1][0])},
        "top_runs": [r for _, _, r in sorted(rows, key=lambda r: (-r[0], r[1]))[:TOP_RUNS]],
        "attributed": sum(c[0] for c in joined.attributed.values()) / NANO,
        "idle": {key: money_of(c[0]) for (_, _, _, key), c in sorted(joined.idle.items())},
        "unmatched": sum(c[0] for c in joined.unmatched.values()) / NANO,
    }


def idle_spend(config: Config, runs: RunSync, figures: Figures) -> dict | None:
    """Where the money idled: the period's runs with MLflow system metrics, their histories read as
    the exporter reads them, each run's cost in the period x (1 - its utilization)."""
    from mlops_kpi_exporter.sources.utilization import (
        UtilizationReader,
        latest,
        summarize,
    )

    if not config.utilization.enabled:
        return None
    reader = UtilizationReader(len(figures.system) or 1, config.utilization.max_points, lambda: runs.client)
    completed = [facts for facts, _ in figures.system if not facts.open]
    read: dict[str, Any] = {}
    for start in range(0, len(completed), 100):
        chunk = completed[start:start + 100]
        series = reader.histories(chunk)
        read.update({facts.run_id: summarize(series.get(facts.run_id, {})) for facts in chunk})
    per_exp: dict[str, list[float]] = {}
    rows = []
    experiments = runs.experiments or runs.matching_experiments()
    for facts, cost in figures.system:
        figures_of = latest(facts) if facts.open else read.get(facts.run_id)
        if figures_of is None or figures_of.busy is None:
            continue
        name = experiments.get(facts.experiment_id, facts.experiment_id)
        idle = cost * (1 - figures_of.busy) / NANO
        sums = per_exp.setdefault(name, [0.0, 0.0, 0])
        per_exp[name] = [sums[0] + idle, sums[1] + cost / NANO, sums[2] + 1]
        rows.append((idle, facts.run_id, {"run_name": facts.run_name, "experiment": name,
                                          "instance_type": facts.instance_type or "", "cost": round(cost / NANO, 6),
                                          "utilization": round(figures_of.busy, 4),
                                          "resource": "gpu" if figures_of.gpu is not None else "cpu",
                                          "idle_cost": round(idle, 6)}))
    return {
        "by_experiment": {name: {"idle_cost": round(v[0], 6), "cost": round(v[1], 6), "runs": v[2]}
                          for name, v in sorted(per_exp.items(), key=lambda kv: -kv[1][0])},
        "top_runs": [r for _, _, r in sorted(rows, key=lambda r: (-r[0], r[1]))[:TOP_RUNS]],
        "runs_without_system_metrics": figures.runs - len(figures.system) - figures.system_left_out,
        "runs_not_read": figures.system_left_out,
    }


def genai_spend(config: Config, mlflow: MlflowConnection, period: Period) -> dict | None:
    """GenAI spend of the traces started in the period, read as the traces source reads them: by
    experiment and model, tokens, cost and where the price came from."""
    if not config.traces.enabled:
        return None
    from mlops_kpi_exporter.sources.traces import TraceSource

    experiments, spend = TraceSource(config, mlflow).spend_between(period.start_ms, period.end_ms)
    rows = []
    for exp_id, books in spend.items():
        name = experiments.get(exp_id, exp_id)
        models = {model for model, _ in books.tokens} | set(books.cost)
        for model in sorted(models):
            tokens = {kind: n for (m, kind), n in books.tokens.items() if m == model}
            unpriced = sum(n for (m, source), n in books.priced_tokens.items() if m == model and source == "unpriced")
            rows.append({"experiment": name, "model": model, "tokens": tokens, "cost": books.cost.get(model, 0) / NANO,
                         "unpriced_tokens": unpriced,
                         "price_sources": sorted({s for (m, s), n in books.priced_tokens.items() if m == model and n})})
    traces = {experiments.get(e, e): dict(books.traces) for e, books in spend.items() if books.traces}
    rows.sort(key=lambda r: (-r["cost"], r["experiment"], r["model"]))
    total = sum(sum(books.cost.values()) for books in spend.values()) / NANO  # exact: LLM calls cost fractions of a cent
    return {"by_model": rows, "traces": traces, "total": total}


def _only_months(bill, months: set[str]):
    """The bill with its joined rows of these months only (the report's period)."""
    from dataclasses import replace

    return replace(bill, joined={k: v for k, v in bill.joined.items() if k[3] in months})


def read_bills(config: Config) -> list:
    """Each configured bill read now, as the exporter's billing sources read it: (name, Bill), or (name,
    the error) so that a bill that cannot be read is said in the report, not fatal to it."""
    from mlops_kpi_exporter.poller import describe_error
    from mlops_kpi_exporter.sources.billing import bill_sources

    out = []
    for source in bill_sources(config):
        try:
            out.append((source.label, source.read()))
        except Exception as exc:  # noqa: BLE001 - said in the report
            out.append((source.label, describe_error(exc)))
    return out


# --- HTML -------------------------------------------------------------------------------------------
