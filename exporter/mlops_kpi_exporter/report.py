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
import html
import io
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
from mlops_kpi_exporter.runs import MS_PER_HOUR, NANO, UNTAGGED, cost_nano, facts_of

if TYPE_CHECKING:
    from mlops_kpi_exporter.sources.run_sync import RunSync

TOP_RUNS = 15
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

    def add(self, row: dict[str, Any], cost: int, tags: dict[str, str], rng: random.Random) -> None:
        exp = row["experiment"]
        self.total += cost
        self.runs += 1
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
    """Stream every run of the watched experiments that ran inside the period into Figures."""
    experiments = runs.matching_experiments()
    figures = Figures(period)
    rng = random.Random(seed)
    tags_wanted = list(runs.rules.allocation_tags)
    for run in runs.search(experiments, f"attributes.start_time < {period.end_ms}"):
        try:
            facts = facts_of(runs.rules, run, now_ms)
        except BadRunData as exc:
            figures.skipped[exc.reason] += 1
            continue
        cost, hours = period_cost(facts, period, now_ms)
        if hours <= 0 and not (period.start_ms <= facts.start_ms < period.end_ms):
            continue  # ran entirely outside the period
        row = {
            "run_id": facts.run_id, "run_name": facts.run_name, "experiment": experiments.get(facts.experiment_id, facts.experiment_id),
            "experiment_id": facts.experiment_id, "status": facts.status, "start": _utc(facts.start_ms).isoformat(),
            "end": _utc(facts.end_ms).isoformat() if facts.end_ms else "", "hours": round(hours, 6),
            "hourly": facts.hourly, "cost": cost / NANO, "instance_type": facts.instance_type or "",
            "estimator": facts.estimator, "price_source": facts.price_source, "start_hour": facts.start_local_hour,
        }
        tags = dict(zip(tags_wanted, facts.allocation)) if tags_wanted else {}
        figures.add(row, cost, tags, rng)
        if rows_out is not None:
            rows_out.writerow({k: row[k] for k in CSV_FIELDS})
    return figures


CSV_FIELDS = ["run_id", "run_name", "experiment", "status", "start", "end", "hours", "hourly", "cost",
              "instance_type", "estimator", "price_source"]


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


def insights(data: dict) -> list[str]:
    """A few sentences naming the largest drivers."""
    cur, total = data["currency"], data["total_compute"]
    out = []
    if not data["runs"]:
        return ["No run ran in this period: nothing was spent on compute."]
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
    missed = [k["kpi"] for k in data["kpis"] if k["met"] is False]
    if missed:
        out.append(f"KPIs below target: {', '.join(missed)}.")
    over = [b["budget"] for b in data["budgets"] if b["spent"] > b["period_budget"]]
    if over:
        out.append(f"Over budget for the period: {', '.join(over)}.")
    return out


# --- HTML -------------------------------------------------------------------------------------------
def _svg(fig) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _bar_chart(title: str, values: dict[str, float], xlabel: str = "", horizontal: bool = True, limit: int = 15) -> str:
    import logging

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # "categorical units" chatter
    items = list(values.items())[:limit]
    fig, ax = plt.subplots(figsize=(6, max(1.6, 0.3 * len(items) + 0.8) if horizontal else 2.4), dpi=72)
    if horizontal:
        ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1], color="#3b73b9")
    else:
        ax.bar([k for k, _ in items], [v for _, v in items], color="#3b73b9")
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(labelsize=7)
    return _svg(fig)


def _strip_chart(samples: dict[str, list[float]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = random.Random(0)
    names = sorted(samples)
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(names) + 1), dpi=72)
    for i, name in enumerate(names):
        ax.scatter(samples[name], [i + rng.uniform(-0.25, 0.25) for _ in samples[name]], s=6, alpha=0.6)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("run time (hours)", fontsize=8)
    ax.set_title("Run time per experiment", fontsize=10, loc="left")
    ax.tick_params(labelsize=7)
    return _svg(fig)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(data: dict) -> str:
    cur = data["currency"]
    m = lambda v: html.escape(money(v, cur))  # noqa: E731
    parts = [f"<h1>ML cost and KPI report</h1><p class=sub>{html.escape(data['period']['from'][:16])} to "
             f"{html.escape(data['period']['to'][:16])} (UTC), {data['period']['days']:g} days, {data['runs']} runs</p>"]
    change = data["change_vs_previous"]
    change_text = "n/a" if change is None else f"{change:+.0%}"
    parts.append("<div class=cards>" + "".join(
        f"<div class=card><div class=k>{k}</div><div class=v>{v}</div></div>" for k, v in [
            ("Compute spend", m(data["total_compute"])), ("vs previous period", change_text),
            ("Runs", str(data["runs"])), ("Skipped runs", str(sum(data["skipped_runs"].values())))]) + "</div>")
    parts.append("<h2>What to look at</h2><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in insights(data)) + "</ul>")
    if not data["runs"]:
        parts.append("<p class=empty>No runs in this period, so there are no charts to draw.</p>")
    else:
        parts.append("<h2>Where the money went</h2><div class=grid>")
        parts.append(f"<figure>{_bar_chart('Cost by experiment', data['by_experiment'], cur)}</figure>")
        parts.append(f"<figure>{_bar_chart('Cost by run status (failed-run waste)', data['by_status'], cur)}</figure>")
        for tag, values in data["by_tag"].items():
            parts.append(f"<figure>{_bar_chart(f'Cost by {tag} tag', values, cur)}</figure>")
        if not data["by_tag"]:
            parts.append("<p class=empty>No allocation tags are configured (allocation.tags), so cost cannot be "
                         "shown by team or project.</p>")
        parts.append("</div><h2>How the team works</h2><div class=grid>")
        parts.append(f"<figure>{_strip_chart(data['run_hours_sample'])}</figure>")
        hours_title = f"Runs by start hour ({data['timezone']})"
        parts.append(f"<figure>{_bar_chart(hours_title, data['runs_by_start_hour'], horizontal=False, limit=24)}</figure>")
        parts.append(f"<figure>{_bar_chart('Estimator distribution', data['estimators'], 'runs')}</figure></div>")
        rows = []
        for r in data["top_runs"]:
            name = html.escape(r["run_name"])
            link = f"<a href=\"{html.escape(r['url'])}\">{name}</a>" if r["url"] else name
            rows.append([link, html.escape(r["experiment"]), html.escape(r["status"]), f"{r['hours']:.2f}",
                         html.escape(r["instance_type"]), m(r["cost"])])
        parts.append("<h2>Costliest runs</h2>" + _table(["run", "experiment", "status", "hours", "machine", "cost"], rows))
    if data["kpis"]:
        rows = [[html.escape(k["kpi"]), "-" if k["value"] is None else f"{k['value']:.4g}",
                 "-" if k["target"] is None else f"{k['target']:.4g}", html.escape(k["direction"]),
                 {True: "<span class=ok>met</span>", False: "<span class=bad>missed</span>"}.get(k["met"],
                                                                                               html.escape(k["missing"] or "-"))]
                for k in data["kpis"]]
        parts.append("<h2>KPIs against targets</h2>" + _table(["KPI", "value", "target", "direction", "status"], rows))
    if data["budgets"]:
        rows = [[html.escape(b["budget"]), m(b["monthly"]), m(b["period_budget"]), m(b["spent"]),
                 "<span class=bad>over</span>" if b["spent"] > b["period_budget"] else "<span class=ok>within</span>"]
                for b in data["budgets"]]
        parts.append("<h2>Budgets</h2>" + _table(["budget", "monthly", "for this period", "spent", ""], rows))
    tco = data["tco"]
    parts.append("<h2>Total cost of ownership for the period</h2>" + _table(
        ["category", "cost"], [[html.escape(k), m(v)] for k, v in tco.items()] + [["<b>total</b>", f"<b>{m(sum(tco.values()))}</b>"]]))
    style = ("body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}h2{margin-top:1.6em}"
             ".sub{color:#666}.cards{display:flex;gap:1em}.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em}"
             ".k{color:#666;font-size:.85em}.v{font-size:1.5em}.grid{display:grid;grid-template-columns:1fr 1fr;gap:1em}"
             "figure{margin:0}svg{max-width:100%;height:auto}table{border-collapse:collapse}td,th{border-bottom:1px solid #eee;"
             "padding:.25em .8em;text-align:left}.ok{color:#1a7f37}.bad{color:#c62828}.empty{color:#666;font-style:italic}")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>ML cost and KPI report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}"
            f"<p class=sub>Made by mlops-kpi-exporter at {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p></body></html>\n")


def write_report(config: Config, mlflow: MlflowConnection, period: Period, fmt: str, out,
                 now_ms: int | None = None) -> None:
    """Write the report to the open text file `out`; CSV rows are written as the runs stream in.
    `mlflow` is the applied connection, set up as for `serve`."""
    from mlops_kpi_exporter.sources.kpis import KpiSource
    from mlops_kpi_exporter.sources.mlflow_runs import run_rules
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
    data["what_to_look_at"] = insights(data)
    out.write(json.dumps(data, indent=2) + "\n" if fmt == "json" else render_html(data))
