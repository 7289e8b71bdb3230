"""Activity: when runs start (hour of day), which estimators they use, how long and costly they are.

    mlops_runs_by_start_hour{experiment="churn-training",hour="2"} 7.0
    mlops_runs_by_estimator{estimator="XGBClassifier",experiment="churn-training"} 29.0
    mlops_completed_run_duration_seconds_count{experiment="churn-training"} 70.0
    mlops_completed_run_cost_sum{experiment="churn-training"} 7.803145212
"""

from __future__ import annotations

from collections import Counter

from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter.metrics import top_and_other
from mlops_kpi_exporter.metrics.catalogue import family
from mlops_kpi_exporter.runs import NANO
from mlops_kpi_exporter.views import RunsView


def start_hours_and_estimators(view: RunsView) -> list[Metric]:
    by_hour = family("mlops_runs_by_start_hour", timezone=view.rules.timezone)
    counts = view.ledger.start_hour_counts(view.now_ms, view.activity_window_ms)
    for exp_id in sorted(view.experiments):
        for hour in range(24):
            by_hour.add_metric([view.name(exp_id), str(hour)], counts.get((exp_id, hour), 0))
    by_estimator = family("mlops_runs_by_estimator")
    per_exp: dict[str, Counter[str]] = {}
    for (exp_id, estimator), n in view.ledger.estimators.items():
        per_exp.setdefault(exp_id, Counter())[estimator] = n
    for exp_id in sorted(per_exp):
        for estimator, n in sorted(top_and_other(per_exp[exp_id], view.max_estimators).items()):
            by_estimator.add_metric([view.name(exp_id), estimator], n)
    return [by_hour, by_estimator]


def distributions(view: RunsView) -> list[Metric]:
    """Run time and cost of completed runs, as histograms per experiment."""
    durations = family("mlops_completed_run_duration_seconds")
    costs = family("mlops_completed_run_cost", currency=view.currency)
    ledger = view.ledger
    for exp_id in sorted(ledger.duration_hist):
        hist = ledger.duration_hist[exp_id]
        if hist.count:
            durations.add_metric([view.name(exp_id)], hist.cumulative(), hist.total / 1000)
    for exp_id in sorted(ledger.cost_hist):
        hist = ledger.cost_hist[exp_id]
        if hist.count:
            costs.add_metric([view.name(exp_id)], hist.cumulative(), hist.total / NANO)
    return [durations, costs]
