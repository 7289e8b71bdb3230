"""The bill joined to runs (billing.run_join): billed cost per experiment and per run, how much of the
bill is attributed to runs, idle cost of shared resources, and the prices' calibration ratio. Label
values stay bounded: experiments are the watched ones, runs those of the per-run series, join keys
billing.max_join_keys per bill, provider and month, instance types the same (the rest as 'other')."""

from __future__ import annotations

from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter.metrics import OTHER, add_costs, top_and_other
from mlops_kpi_exporter.metrics.catalogue import family
from mlops_kpi_exporter.runs import NANO
from mlops_kpi_exporter.views import BillView

BASES = ("billed", "effective", "list")


def _costs(metric: Metric, labels: list[str], costs: list[int]) -> None:
    for basis, nano in zip(BASES, costs):
        metric.add_metric([*labels, basis], nano / NANO)


def families(view: BillView) -> list[Metric]:
    joined, at_poll = view.joined, view.ledger.runs
    if joined is None or at_poll is None:
        return []
    cur = view.currency
    per_exp: dict[tuple[str, str], list[int]] = {}
    complete: dict[str, int] = {exp_id: 0 for exp_id in view.ledger.experiments}
    for run_id, months in joined.run_costs.items():
        run = at_poll.runs.get(run_id)
        if run is None:
            continue
        for month, costs in months.items():
            key = (run.experiment_id, month)
            per_exp[key] = add_costs(per_exp.get(key, [0, 0, 0]), costs)
        if joined.complete(run):
            complete[run.experiment_id] = complete.get(run.experiment_id, 0) + 1
    experiment = family("mlops_experiment_billed_cost", currency=cur)
    for (exp_id, month), costs in sorted(per_exp.items(), key=lambda kv: (view.name(kv[0][0]), kv[0][1])):
        _costs(experiment, [view.name(exp_id), month], costs)
    runs = family("mlops_experiment_billed_runs")
    for exp_id, count in sorted(complete.items(), key=lambda kv: view.name(kv[0])):
        runs.add_metric([view.name(exp_id)], count)
    per_run = family("mlops_run_billed_cost", currency=cur)
    for run in at_poll.series:
        if joined.complete(run):
            _costs(per_run, [view.name(run.experiment_id), run.run_id, run.run_name, run.status],
                   joined.run_total(run.run_id))
    out = [experiment, runs, per_run]
    for name, table in (("mlops_billing_attributed_cost", joined.attributed), ("mlops_billing_shared_cost", joined.shared),
                        ("mlops_billing_join_unmatched_cost", joined.unmatched)):
        metric = family(name, currency=cur)
        for labels, costs in sorted(table.items()):
            _costs(metric, list(labels), costs)
        out.append(metric)
    idle = family("mlops_billing_join_idle_cost", currency=cur)
    groups: dict[tuple[str, str, str], dict[str, list[int]]] = {}
    for (bill, provider, month, key), costs in joined.idle.items():
        groups.setdefault((bill, provider, month), {})[key] = costs
    for where, keys in sorted(groups.items()):
        kept = top_and_other(keys, view.max_join_keys, rank=lambda costs: costs[0], add=add_costs)
        for key, costs in sorted(kept.items()):
            _costs(idle, [*where, key], costs)
    out.append(idle)
    ratio = family("mlops_price_calibration_ratio")
    # by estimate, the rest as each provider's 'other'
    shown = top_and_other(view.calibration_ratios, view.max_join_keys, rank=lambda pair: pair[1],
                          add=lambda a, b: (a[0] + b[0], a[1] + b[1]), other=lambda key: (key[0], OTHER))
    for (provider, kind), (billed, estimated) in sorted(shown.items()):
        if estimated > 0:
            ratio.add_metric([provider, kind], billed / estimated)
    out.append(ratio)
    return out
