"""`report`: a period's costs and KPIs as one self-contained HTML file (or JSON, or per-run CSV).

It reads MLflow directly with the exporter's own code path: the same experiment globs and paging
(`RunSync`), the same run facts, prices and catalog (`facts_of`), the same KPI reader. A run
counts for the hours it ran inside the period, so a run spanning the period's start is split just as
month-to-date spend is. Runs are streamed page by page into running totals: memory stays bounded
whatever the size of the store.
"""

from __future__ import annotations

import csv
import json
import time

from mlops_kpi_exporter.config import Config
from mlops_kpi_exporter.mlflow_client import MlflowConnection
from mlops_kpi_exporter.mlflow_workspaces import matches
from mlops_kpi_exporter.pricing import money
from mlops_kpi_exporter.report_figures import (
    CSV_FIELDS,
    Figures,
    Period,
    collect,
    utc_of,
)
from mlops_kpi_exporter.report_spend import (
    billed_runs,
    cloud_bill,
    genai_spend,
    idle_spend,
    read_bills,
)
from mlops_kpi_exporter.runs import (
    NANO,
    UNTAGGED,
)


def figures_dict(config: Config, figures: Figures, previous: Figures, kpis: list, ui_url: str | None,
                 workspaces: bool = False) -> dict:
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
        "period": {"from": utc_of(figures.period.start_ms).isoformat(), "to": utc_of(figures.period.end_ms).isoformat(),
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
                                if matches(k, b.experiments, workspaces)) / NANO, 6)}
            for b in config.budgets
        ],
        "tco": {"compute": round(compute, 6), **{k: round(v, 6) for k, v in fixed.items()}},
    }

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

def write_report(config: Config, mlflow: MlflowConnection, period: Period, fmt: str, out,
                 now_ms: int | None = None) -> None:
    """Write the report to the open text file `out`; CSV rows are written as the runs stream in.
    `mlflow` is the applied connection, set up as for `serve`."""
    from mlops_kpi_exporter.resolved import run_rules
    from mlops_kpi_exporter.sources.kpis import KpiSource
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
    kpi_source.discover()
    kpis = [kpi_source.read_or_skip(k) for k in config.kpis]
    data = figures_dict(config, figures, previous, kpis, config.mlflow.ui_url, runs.workspaces is not None)
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
