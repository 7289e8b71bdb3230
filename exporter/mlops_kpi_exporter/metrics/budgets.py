"""Month to date, the month-end forecast, and budgets over them."""

from __future__ import annotations

import fnmatch

from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter.views import RunsView
from mlops_kpi_exporter.metrics.catalogue import family
from mlops_kpi_exporter.runs import NANO

FORECAST_MIN_ELAPSED_MS = 86_400_000


def families(view: RunsView) -> list[Metric]:
    cur, tz = view.currency, view.rules.timezone
    mtd, first_ms, length_ms = view.ledger.month_to_date(view.now_ms, view.rules)
    # Straight line: the month so far, stretched to the whole month. The first day counts as a full
    # day, so that ten minutes of a GPU job at 00:10 on the 1st do not project a month of it.
    elapsed = max(FORECAST_MIN_ELAPSED_MS, view.now_ms - first_ms)
    scale = length_ms / elapsed
    to_date = family("mlops_experiment_cost_month_to_date", currency=cur, timezone=tz)
    forecast = family("mlops_experiment_cost_forecast_month", currency=cur, timezone=tz)
    for exp_id in sorted(view.experiments):
        spent = mtd.get(exp_id, 0) / NANO
        to_date.add_metric([view.name(exp_id)], spent)
        forecast.add_metric([view.name(exp_id)], spent * scale)
    out: list[Metric] = [to_date, forecast]
    if not view.budgets:
        return out
    monthly = family("mlops_budget_monthly", currency=cur)
    used = family("mlops_budget_cost_month_to_date", currency=cur)
    projected = family("mlops_budget_cost_forecast_month", currency=cur)
    info = family("mlops_budget_info")
    genai = view.genai_month_to_date or {}
    for budget in view.budgets:
        covered = [e for e, name in view.experiments.items()
                   if any(fnmatch.fnmatchcase(name, g) for g in budget.experiments)]
        spent = sum(mtd.get(e, 0) for e in covered) / NANO if "compute" in budget.include else 0.0
        if "genai" in budget.include:  # the traces source's figures of the same month, same experiments
            spent += sum(cost for name, cost in genai.items()
                         if any(fnmatch.fnmatchcase(name, g) for g in budget.experiments))
        monthly.add_metric([budget.name], budget.monthly)
        used.add_metric([budget.name], spent)
        projected.add_metric([budget.name], spent * scale)
        info.add_metric([budget.name, ",".join(budget.experiments), "+".join(budget.include)], {})
    return [*out, monthly, used, projected, info]
