"""Month to date, the month-end forecast, and budgets over them.

    mlops_experiment_cost_month_to_date{experiment="churn-training"} 4.412651316
    mlops_experiment_cost_forecast_month{experiment="churn-training"} 9.129623412413792
    mlops_budget_cost_month_to_date{budget="support-assistant"} 0.59027185
    mlops_budget_info{budget="support-assistant",experiments="support-assistant",include="compute+genai"} 1.0

The experiments' figures are the MLflow source's own; the budgets' are the derived stage's
(derived.py), as a budget may count GenAI spend beside compute.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter.metrics.catalogue import family
from mlops_kpi_exporter.runs import NANO
from mlops_kpi_exporter.views import RunsView

FORECAST_MIN_ELAPSED_MS = 86_400_000


def forecast_scale(now_ms: int, first_ms: int, length_ms: int) -> float:
    """Straight line: the month so far, stretched to the whole month. The first day counts as a full
    day, so that ten minutes of a GPU job at 00:10 on the 1st do not project a month of it."""
    return length_ms / max(FORECAST_MIN_ELAPSED_MS, now_ms - first_ms)


def experiment_month(view: RunsView) -> list[Metric]:
    cur, tz = view.currency, view.rules.timezone
    mtd, first_ms, length_ms = view.ledger.month_to_date(view.now_ms, view.rules)
    scale = forecast_scale(view.now_ms, first_ms, length_ms)
    to_date = family("mlops_experiment_cost_month_to_date", currency=cur, timezone=tz)
    forecast = family("mlops_experiment_cost_forecast_month", currency=cur, timezone=tz)
    for exp_id in sorted(view.experiments):
        spent = mtd.get(exp_id, 0) / NANO
        to_date.add_metric([view.name(exp_id)], spent)
        forecast.add_metric([view.name(exp_id)], spent * scale)
    return [to_date, forecast]


def families(spent: Sequence[tuple[object, int, float]], currency: str) -> list[Metric]:
    """`spent`: (BudgetConfig, nano spent in its month, the forecast's stretch of the month so far)
    of each budget whose inputs are all in, in config order."""
    if not spent:
        return []
    monthly = family("mlops_budget_monthly", currency=currency)
    used = family("mlops_budget_cost_month_to_date", currency=currency)
    projected = family("mlops_budget_cost_forecast_month", currency=currency)
    info = family("mlops_budget_info")
    for budget, nano, scale in spent:
        monthly.add_metric([budget.name], budget.monthly)
        used.add_metric([budget.name], nano / NANO)
        projected.add_metric([budget.name], nano / NANO * scale)
        info.add_metric([budget.name, ",".join(budget.experiments), "+".join(budget.include)], {})
    return [monthly, used, projected, info]
