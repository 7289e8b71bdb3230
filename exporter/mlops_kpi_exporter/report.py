"""`report`: a period's costs and KPIs as one self-contained HTML file (or JSON, or per-run CSV).

It reads MLflow directly with the exporter's own code path: the same experiment globs and paging
(`RunSync`), the same run facts, prices and catalog (`facts_of`), the same KPI reader. A run
counts for the hours it ran inside the period, so a run spanning the period's start is split just as
month-to-date spend is. Runs are streamed page by page into running totals: memory stays bounded
whatever the size of the store.
"""

from __future__ import annotations

import csv
import fnmatch
import heapq
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from mlops_kpi_exporter.config import Config
from mlops_kpi_exporter.mlflow_client import MlflowConnection
from mlops_kpi_exporter.pricing import BadRunData, money
from mlops_kpi_exporter.bill import COMPUTE_CATEGORIES
from mlops_kpi_exporter.runs import MS_PER_HOUR, NANO, UNTAGGED, RunFacts, cost_nano, facts_of, on_parents_machine

if TYPE_CHECKING:
    from mlops_kpi_exporter.sources.run_sync import RunSync

TOP_RUNS = 15
MAX_SYSTEM_RUNS = 5_000  # runs whose system metrics a report reads (one request per metric and 100 runs)
STRIP_POINTS = 300  # run-time points kept per experiment (a uniform sample of them)


@dataclass
class Period:
    start_ms: int
    end_ms: int

    @property
    def hours(self) -> float:
        return (self.end_ms - self.start_ms) / MS_PER_HOUR

    def previous(self) -> Period:
        length = self.end_ms - self.start_ms
        return Period(self.start_ms - length, self.start_ms)

    def label(self) -> str:
        fmt = "%Y-%m-%d %H:%M UTC"
        return f"{_utc(self.start_ms).strftime(fmt)} to {_utc(self.end_ms).strftime(fmt)}"


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


@dataclass
class Figures:
    """Running totals over the runs of one period, all money in nano-units."""

    period: Period
    total: int = 0
    runs: int = 0
    skipped: Counter = field(default_factory=Counter)
    by_experiment: Counter = field(default_factory=Counter)
    by_status: Counter = field(default_factory=Counter)
    by_tag: dict[str, Counter] = field(default_factory=dict)
    estimators: Counter = field(default_factory=Counter)
    start_hours: Counter = field(default_factory=Counter)
    run_hours: dict[str, list[float]] = field(default_factory=dict)
    _seen_per_experiment: Counter = field(default_factory=Counter)
    top: list = field(default_factory=list)  # heap of (cost, run_id, row)
    system: list = field(default_factory=list)  # (facts, cost in the period) of runs with system metrics
    system_left_out: int = 0  # beyond MAX_SYSTEM_RUNS

    def add(self, row: dict[str, Any], cost: int, tags: dict[str, str], rng: random.Random) -> None:
        """A run of the period; a child on its parent's machine (row machine == "parent") counts as a
        run, and its cost (a share of its parent's) is in its row, but not a second time in the totals."""
        exp = row["experiment"]
        self.runs += 1
        if row["machine"] == "parent":
            cost = 0
        self.total += cost
        self.by_experiment[exp] += cost
        self.by_status[row["status"]] += cost
        for tag, value in tags.items():
            self.by_tag.setdefault(tag, Counter())[value] += cost
        self.estimators[row["estimator"]] += 1
        self.start_hours[row["start_hour"]] += 1
        # a uniform sample of run times per experiment (reservoir): the strip chart in bounded memory
        self._seen_per_experiment[exp] += 1
        sample = self.run_hours.setdefault(exp, [])
        if len(sample) < STRIP_POINTS:
            sample.append(row["hours"])
        else:
            slot = rng.randrange(self._seen_per_experiment[exp])
            if slot < STRIP_POINTS:
                sample[slot] = row["hours"]
        entry = (cost, row["run_id"], row)
        if not cost:
            return
        if len(self.top) < TOP_RUNS:
            heapq.heappush(self.top, entry)
        elif entry > self.top[0]:
            heapq.heapreplace(self.top, entry)


def period_cost(facts, period: Period, now_ms: int) -> tuple[int, float]:
    """Cost (nano) and hours of a run inside the period; a running run counts up to now."""
    end = facts.end_ms if facts.end_ms is not None else (now_ms if facts.status == "RUNNING" else facts.start_ms)
    overlap = max(0, min(end, period.end_ms) - max(facts.start_ms, period.start_ms))
    return cost_nano(facts.hourly, overlap), overlap / MS_PER_HOUR


def collect(runs: RunSync, period: Period, now_ms: int, rows_out=None, seed: int = 1) -> Figures:
    """Stream every run of the watched experiments that ran inside the period into Figures.

    Child runs wait for the end of the stream (their cost depends on their parent's machine, and
    parents come after their children, newest first); only they and their parents are kept."""
    experiments = runs.matching_experiments()
    figures = Figures(period)
    rng = random.Random(seed)
    children: list[RunFacts] = []
    parents: dict[str, RunFacts] = {}
    wanted: set[str] = set()  # parents of the children seen so far

    def add(facts: RunFacts, machine: str = "own", cost_hours: tuple[int, float] | None = None) -> None:
        cost, hours = cost_hours or period_cost(facts, period, now_ms)
        if hours <= 0 and not (period.start_ms <= facts.start_ms < period.end_ms):
            return  # ran entirely outside the period
        row = _row(facts, experiments, hours, cost, machine)
        figures.add(row, cost, dict(zip(runs.rules.allocation_tags, facts.allocation)), rng)
        if facts.system and cost:
            if len(figures.system) < MAX_SYSTEM_RUNS:
                figures.system.append((facts, cost))
            else:
                figures.system_left_out += 1
        if rows_out is not None:
            rows_out.writerow({k: row[k] for k in CSV_FIELDS})

    for run in runs.search(experiments, f"attributes.start_time < {period.end_ms}"):
        try:
            facts = facts_of(runs.rules, run, now_ms)
        except BadRunData as exc:
            figures.skipped[exc.reason] += 1
            continue
        if facts.run_id in wanted:
            parents[facts.run_id] = facts
        if facts.parent_run_id:
            children.append(facts)
            wanted.add(facts.parent_run_id)
        else:
            add(facts)
    for facts in children:  # a child may be a parent too (nested sweeps)
        parents.setdefault(facts.run_id, facts)
    by_parent: dict[str, list[RunFacts]] = {}
    for child in children:
        parent = parents.get(child.parent_run_id) or _watched_run(runs, child.parent_run_id, experiments, now_ms)
        if parent is not None:
            parents[parent.run_id] = parent
        if parent is None or not on_parents_machine(child, parent, runs.nested):
            add(child)
        else:
            by_parent.setdefault(parent.run_id, []).append(child)
    for parent_id, within in by_parent.items():
        parent = parents[parent_id]
        own, busy = parent.duration_ms(now_ms), sum(c.duration_ms(now_ms) for c in within)
        for child in within:
            _, hours = period_cost(child, period, now_ms)
            ms = int(hours * MS_PER_HOUR)
            add(child, "parent", (cost_nano(parent.hourly, ms if busy <= own else ms * own // busy), hours))
    return figures


def _watched_run(runs: RunSync, run_id: str | None, experiments: dict[str, str], now_ms: int) -> RunFacts | None:
    """A parent run the stream did not bring (it ran before the period): looked up by id."""
    run = runs.refetch(run_id) if run_id else None
    if run is None or run.info.experiment_id not in experiments:
        return None
    try:
        return facts_of(runs.rules, run, now_ms)
    except BadRunData:
        return None


def _row(facts: RunFacts, experiments: dict[str, str], hours: float, cost: int, machine: str) -> dict[str, Any]:
    return {
        "run_id": facts.run_id, "run_name": facts.run_name,
        "experiment": experiments.get(facts.experiment_id, facts.experiment_id),
        "experiment_id": facts.experiment_id, "status": facts.status, "start": _utc(facts.start_ms).isoformat(),
        "end": _utc(facts.end_ms).isoformat() if facts.end_ms else "", "hours": round(hours, 6),
        "hourly": facts.hourly, "cost": cost / NANO, "instance_type": facts.instance_type or "",
        "estimator": facts.estimator, "price_source": facts.price_source, "start_hour": facts.start_local_hour,
        "parent_run_id": facts.parent_run_id or "", "machine": machine,
    }


CSV_FIELDS = ["run_id", "run_name", "experiment", "status", "start", "end", "hours", "hourly", "cost",
              "instance_type", "estimator", "price_source", "parent_run_id", "machine"]


def figures_dict(config: Config, figures: Figures, previous: Figures, kpis: list, ui_url: str | None) -> dict:
    cur = config.pricing.currency
    days = figures.period.hours / 24
    fixed = {}
    for item in config.fixed_costs:
        fixed[item.category] = fixed.get(item.category, 0.0) + item.monthly * days / (365.25 / 12)
    compute = figures.total / NANO
    change = None if previous.total == 0 else (figures.total - previous.total) / previous.total
    return {
        "currency": cur,
        "timezone": config.runs.timezone,
        "period": {"from": _utc(figures.period.start_ms).isoformat(), "to": _utc(figures.period.end_ms).isoformat(),
                   "days": round(days, 3)},
        "total_compute": round(compute, 6),
        "previous_period_compute": round(previous.total / NANO, 6),
        "change_vs_previous": None if change is None else round(change, 6),
        "runs": figures.runs,
        "skipped_runs": dict(figures.skipped),
        "by_experiment": {k: round(v / NANO, 6) for k, v in figures.by_experiment.most_common()},
        "by_status": {k: round(v / NANO, 6) for k, v in figures.by_status.most_common()},
        "by_tag": {tag: {k: round(v / NANO, 6) for k, v in values.most_common()} for tag, values in figures.by_tag.items()},
        "estimators": dict(figures.estimators.most_common()),
        "runs_by_start_hour": {str(h): figures.start_hours.get(h, 0) for h in range(24)},
        "top_runs": [
            {**{k: r[k] for k in CSV_FIELDS}, "url": (f"{ui_url.rstrip('/')}/#/experiments/{r['experiment_id']}/runs/{r['run_id']}"
                                                      if ui_url else "")}
            for _, _, r in sorted(figures.top, reverse=True)
        ],
        "run_hours_sample": figures.run_hours,
        "kpis": [{"kpi": r.kpi.name, "value": r.value, "target": r.kpi.target, "direction": r.kpi.direction,
                  "met": r.target_met, "missing": r.missing or None, "run_id": r.run_id} for r in kpis],
        "budgets": [
            {"budget": b.name, "monthly": b.monthly, "period_budget": round(b.monthly * days / (365.25 / 12), 6),
             "spent": round(sum(v for k, v in figures.by_experiment.items()
                                if any(fnmatch.fnmatchcase(k, g) for g in b.experiments)) / NANO, 6)}
            for b in config.budgets
        ],
        "tco": {"compute": round(compute, 6), **{k: round(v, 6) for k, v in fixed.items()}},
    }


def _month_bounds(month: str) -> tuple[int, int]:
    year, mon = int(month[:4]), int(month[5:7])
    start = datetime(year, mon, 1, tzinfo=timezone.utc)
    end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=timezone.utc)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def period_months(period: Period) -> list[str]:
    """The UTC calendar months a period touches (the bill's months are UTC)."""
    months, moment = [], _utc(period.start_ms).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
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
            out["last_charge"][f"{name}/{provider}"] = _utc(int(end * 1000)).isoformat()
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
        except BadRunData:
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
    from mlops_kpi_exporter.sources.utilization import UtilizationReader, latest, summarize

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


def _compute_insights(data: dict) -> list[str]:
    cur, total = data["currency"], data["total_compute"]
    out = []
    exp, cost = next(iter(data["by_experiment"].items()))
    out.append(f"{exp} drove {cost / total:.0%} of compute spend ({money(cost, cur)} of {money(total, cur)}).")
    waste = sum(v for k, v in data["by_status"].items() if k in ("FAILED", "KILLED"))
    if waste:
        out.append(f"{waste / total:.0%} of spend ({money(waste, cur)}) went to FAILED or KILLED runs.")
    if data["change_vs_previous"] is not None:
        out.append(f"Spend {'rose' if data['change_vs_previous'] >= 0 else 'fell'} {abs(data['change_vs_previous']):.0%} "
                   f"against the previous period of the same length ({money(data['previous_period_compute'], cur)}).")
    if data["top_runs"]:
        top = data["top_runs"][0]
        out.append(f"The costliest run was {top['run_name']} in {top['experiment']} ({money(top['cost'], cur)}, "
                   f"{top['hours']:.1f} h on {top['instance_type'] or 'an unknown machine'}).")
    for tag, values in data["by_tag"].items():
        untagged = values.get(UNTAGGED, 0)
        if untagged:
            out.append(f"{untagged / total:.0%} of spend carries no '{tag}' tag: it cannot be allocated.")
    return out


def insights(data: dict) -> list[str]:
    """A few sentences naming the largest drivers."""
    cur = data["currency"]
    out = []
    if not data["runs"]:
        out.append("No run ran in this period: nothing was spent on compute.")
    else:
        out += _compute_insights(data)
    missed = [k["kpi"] for k in data["kpis"] if k["met"] is False]
    if missed:
        out.append(f"KPIs below target: {', '.join(missed)}.")
    over = [b["budget"] for b in data["budgets"] if b["spent"] > b["period_budget"]]
    if over:
        out.append(f"Over budget for the period: {', '.join(over)}.")
    genai = data.get("genai") or {}
    if genai.get("total"):
        top = genai["by_model"][0]
        out.append(f"GenAI apps spent {money(genai['total'], cur)} on LLM calls in the period; the most on {top['model']} "
                   f"in {top['experiment']} ({money(top['cost'], cur)}).")
    unpriced = sorted({r["model"] for r in genai.get("by_model", []) if r["unpriced_tokens"]})
    if unpriced:
        out.append(f"Tokens of {', '.join(unpriced)} have no price (traces.token_prices): their cost is not counted.")
    idle = data.get("idle_spend") or {}
    if idle.get("by_experiment"):
        wasted = sum(v["idle_cost"] for v in idle["by_experiment"].values())
        watched = sum(v["cost"] for v in idle["by_experiment"].values())
        worst, figures = next(iter(idle["by_experiment"].items()))
        out.append(f"{money(wasted, cur)} of the {money(watched, cur)} spent on runs with system metrics paid for idle "
                   f"GPU or CPU time ({wasted / watched:.0%}); most in {worst} ({money(figures['idle_cost'], cur)}).")
    bill = data.get("cloud_bill") or {}
    for month in bill.get("months", []):
        rows = [r for r in bill["totals"] if r["month"] == month]
        if rows:
            billed, compute = sum(r["billed"] for r in rows), sum(r["compute_billed"] for r in rows)
            estimate = bill["estimate"].get(month)
            text = (f"The cloud bill for {month} is {money(billed, cur)} ({money(compute, cur)} of it compute, "
                    f"{money(sum(r['effective'] for r in rows), cur)} effective after discounts)")
            out.append(text + ("." if estimate is None else f"; MLflow's run estimate for the whole month is {money(estimate, cur)}."))
    for name, error in bill.get("errors", {}).items():
        out.append(f"The bill {name} could not be read: {error}")
    return out


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
def write_report(config: Config, mlflow: MlflowConnection, period: Period, fmt: str, out,
                 now_ms: int | None = None) -> None:
    """Write the report to the open text file `out`; CSV rows are written as the runs stream in.
    `mlflow` is the applied connection, set up as for `serve`."""
    from mlops_kpi_exporter.sources.kpis import KpiSource
    from mlops_kpi_exporter.resolved import run_rules
    from mlops_kpi_exporter.sources.run_sync import RunSync

    now_ms = now_ms or int(time.time() * 1000)
    runs = RunSync(config, mlflow, run_rules(config))
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
        writer.writeheader()
        collect(runs, period, now_ms, rows_out=writer)
        return
    figures = collect(runs, period, now_ms)
    previous = collect(runs, period.previous(), now_ms)
    kpi_source = KpiSource(config, mlflow)
    kpis = [kpi_source.read_or_skip(k) for k in config.kpis]
    data = figures_dict(config, figures, previous, kpis, config.mlflow.ui_url)
    bills = read_bills(config)
    data["cloud_bill"] = cloud_bill(config, runs, period, now_ms, bills)
    data["billed_runs"] = billed_runs(config, runs, period, now_ms, bills)
    data["idle_spend"] = idle_spend(config, runs, figures)
    try:
        data["genai"] = genai_spend(config, mlflow, period)
    except Exception as exc:  # noqa: BLE001 - a server without traces: said in the report, not fatal
        from mlops_kpi_exporter.poller import describe_error

        data["genai"] = {"error": describe_error(exc)}
    data["what_to_look_at"] = insights(data)
    if fmt == "json":
        out.write(json.dumps(data, indent=2) + "\n")
    else:
        from mlops_kpi_exporter.report_html import render_html

        out.write(render_html(data))
