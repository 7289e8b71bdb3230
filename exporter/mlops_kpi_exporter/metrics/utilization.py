"""Money spent idle: run utilization from MLflow's system metrics (sources/utilization.py).

    mlops_experiment_utilization_ratio{experiment="fraud-detection",resource="gpu"} 0.198921641910499
    mlops_experiment_idle_cost{experiment="demand-forecast"} 1.2112958506824942
    mlops_runs_without_system_metrics{experiment="churn-training"} 70.0

A run's idle cost is its cost x (1 - the mean utilization of what dominates its price: its GPUs when
it has some, else its CPU). Completed runs use their history's means once read; running runs their
latest values. Runs without system metrics are counted and add no idle cost."""

from __future__ import annotations

import math

from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter.metrics.catalogue import family
from mlops_kpi_exporter.runs import NANO
from mlops_kpi_exporter.sources.utilization import latest
from mlops_kpi_exporter.views import RunsView

RESOURCES = ("gpu", "cpu", "gpu_memory")


def families(view: RunsView) -> list[Metric]:
    if view.utilization is None:
        return []
    ledger, now, read = view.ledger, view.now_ms, view.utilization
    # (experiment, resource) -> ([cost x ratio], [cost]) and experiment -> [idle cost], summed with fsum:
    # the same figures whatever order the runs arrived in
    weighted: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    idle: dict[str, list[float]] = {exp_id: [] for exp_id in view.experiments}
    with_metrics: dict[str, int] = {exp_id: 0 for exp_id in view.experiments}
    without: dict[str, int] = {exp_id: ledger.without_system.get(exp_id, 0) for exp_id in view.experiments}
    for run_id in ledger.system_runs:  # only the runs with system metrics, not every run
        run = ledger.runs[run_id]
        exp = run.experiment_id
        with_metrics[exp] = with_metrics.get(exp, 0) + 1
        figures = latest(run) if run.open else read.get(run.run_id)
        if figures is None or figures.busy is None:
            continue  # a completed run not read yet (pending)
        cost = ledger.cost_of(run, now) / NANO
        idle.setdefault(exp, []).append(cost * (1 - figures.busy))
        if run.open:
            continue  # the utilization figures are of completed runs
        for resource in RESOURCES:
            ratio = getattr(figures, resource)
            if ratio is not None:
                busy, costs = weighted.setdefault((exp, resource), ([], []))
                busy.append(cost * ratio)
                costs.append(cost)
    ratio_family = family("mlops_experiment_utilization_ratio")
    for (exp, resource), (busy, costs) in sorted(weighted.items(), key=lambda kv: (view.name(kv[0][0]), kv[0][1])):
        total = math.fsum(costs)
        if total > 0:
            ratio_family.add_metric([view.name(exp), resource], math.fsum(busy) / total)
    idle_family = family("mlops_experiment_idle_cost", currency=view.currency)
    counted = family("mlops_runs_with_system_metrics")
    uncounted = family("mlops_runs_without_system_metrics")
    for exp in sorted(idle, key=view.name):
        idle_family.add_metric([view.name(exp)], math.fsum(idle[exp]))
        counted.add_metric([view.name(exp)], with_metrics.get(exp, 0))
        uncounted.add_metric([view.name(exp)], without.get(exp, 0))
    per_run = family("mlops_run_utilization_ratio")
    for run in ledger.run_series(view.max_run_series):
        figures = latest(run) if run.open and run.system else read.get(run.run_id)
        if figures is None:
            continue
        for resource in RESOURCES:
            ratio = getattr(figures, resource)
            if ratio is not None:
                per_run.add_metric([view.name(run.experiment_id), run.run_id, run.run_name, run.status, resource], ratio)
    pending = family("mlops_utilization_runs_pending")
    pending.add_metric([], view.utilization_pending)
    return [ratio_family, idle_family, counted, uncounted, per_run, pending]
