"""Cost figures: per experiment and status, per run, by allocation tag, artifact storage, fixed costs."""

from __future__ import annotations

from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter.config import Config
from mlops_kpi_exporter.metrics import OTHER, top_and_other
from mlops_kpi_exporter.metrics.catalogue import family
from mlops_kpi_exporter.runs import NANO, SKIP_REASONS, UNTAGGED
from mlops_kpi_exporter.views import BillView, RunsView

GB = 2**30  # cloud storage bills count a GB as 2^30 bytes


def experiments(view: RunsView) -> list[Metric]:
    """Cost, run time and count by experiment and status; the burn rate; the watched experiments."""
    cur = view.currency
    cost = family("mlops_experiment_cost", currency=cur)
    seconds = family("mlops_experiment_run_seconds")
    count = family("mlops_runs")
    for (exp_id, status), totals in sorted(view.ledger.status_totals(view.now_ms).items()):
        labels = [view.name(exp_id), status]
        cost.add_metric(labels, totals.cost_nano / NANO)
        seconds.add_metric(labels, totals.run_ms / 1000)
        count.add_metric(labels, totals.runs)
    burn = family("mlops_running_hourly_cost", currency=cur)
    hourly = view.ledger.running_hourly()
    info = family("mlops_experiment_info")
    for exp_id in sorted(view.experiments):
        burn.add_metric([view.experiments[exp_id]], hourly.get(exp_id, 0.0))
    for exp_id in sorted(view.experiments):
        info.add_metric([view.experiments[exp_id], exp_id], {})
    return [cost, seconds, count, burn, info]


def run_series(view: RunsView) -> list[Metric]:
    """Per-run series, bounded: running runs first, then the most recently ended."""
    cur = view.currency
    run_cost = family("mlops_run_cost", currency=cur)
    run_seconds = family("mlops_run_seconds")
    run_rate = family("mlops_run_hourly_cost", currency=cur)
    run_start = family("mlops_run_start_timestamp_seconds")
    run_info = family("mlops_run_info")
    ledger = view.ledger
    for run in ledger.run_series(view.max_run_series):
        values = [view.name(run.experiment_id), run.run_id, run.run_name, run.status]
        cost = ledger.cost_of(run, view.now_ms)
        seconds = run.duration_ms(view.now_ms) / 1000
        within = run.run_id in ledger.within
        run_cost.add_metric(values, cost / NANO)
        run_seconds.add_metric(values, seconds)
        # a child on its parent's machine: its share of the parent's rate while it ran
        run_rate.add_metric(values, (round(cost / NANO / (seconds / 3600), 9) if seconds else 0.0) if within else run.hourly)
        run_start.add_metric(values, run.start_ms / 1000)
        run_info.add_metric([*values, run.instance_type or "", run.estimator, run.price_source,
                             run.parent_run_id or "", "parent" if within else "own"], {})
    return [run_cost, run_seconds, run_rate, run_start, run_info]


def bookkeeping(view: RunsView) -> list[Metric]:
    """Runs skipped by reason, runs by price source, runs held."""
    skipped = family("mlops_runs_skipped")
    counts = view.ledger.skip_counts()
    for reason in sorted(set(SKIP_REASONS) | set(counts)):
        skipped.add_metric([reason], counts.get(reason, 0))
    priced = family("mlops_runs_by_price_source")
    for (exp_id, source), n in sorted(view.ledger.price_sources.items()):
        priced.add_metric([view.name(exp_id), source], n)
    tracked = family("mlops_mlflow_runs_tracked")
    tracked.add_metric([], len(view.ledger))
    stale = family("mlops_runs_stale")
    stale_counts = view.ledger.stale_counts()
    for exp_id in sorted(view.experiments):
        stale.add_metric([view.experiments[exp_id]], stale_counts.get(exp_id, 0))
    return [skipped, priced, tracked, stale]


def allocation(view: RunsView) -> list[Metric]:
    if not view.allocation_tags:
        return []
    by_tag = family("mlops_cost_by_tag", currency=view.currency)
    costs = view.ledger.cost_by_tag(view.now_ms)
    for index, tag in enumerate(view.allocation_tags):
        # "untagged" is always its own series: unallocated spend is what showback must expose.
        values = {v: n for (i, v), n in costs.items() if i == index and v != UNTAGGED}
        kept = top_and_other(values, view.allocation_max_values)
        kept[UNTAGGED] = costs.get((index, UNTAGGED), 0)
        for tag_value, nano in sorted(kept.items()):
            by_tag.add_metric([tag, tag_value], nano / NANO)
    return [by_tag]


def allocation_by_month(view: RunsView) -> list[Metric]:
    """MLflow's estimate by month and tag value, beside the cloud bill's compute (billing configured)."""
    if not view.allocation_tags or not view.bill_months:
        return []
    by_month = family("mlops_cost_by_tag_month", currency=view.currency)
    costs = view.ledger.month_tag_costs(view.now_ms, view.rules)
    months = sorted({month for month, _, _ in costs})[-view.bill_months:]
    for month in months:
        for index, tag in enumerate(view.allocation_tags):
            values = {v: n for (m, i, v), n in costs.items() if m == month and i == index and v != UNTAGGED}
            kept = top_and_other(values, view.allocation_max_values)
            kept[UNTAGGED] = costs.get((month, index, UNTAGGED), 0)
            for tag_value, nano in sorted(kept.items()):
                by_month.add_metric([month, tag, tag_value], nano / NANO)
    return [by_month]


def calibrated(view: BillView) -> list[Metric]:
    """The estimate with catalog (list) prices scaled by the bill's effective/list factor per provider,
    beside the list-price figures; nothing until a bill has given a factor. Runs whose billed cost is
    known (billing.run_join) are not scaled: their bill stands apart (mlops_experiment_billed_cost)."""
    if view.calibration is None or not view.calibration:
        return []
    factors, by_type, cur, facts = view.calibration, view.calibration_by_type, view.currency, view.ledger
    billed_exp, billed_month = view.billed_catalog.get("by_exp", {}), view.billed_catalog.get("by_month", {})

    def scale(provider: str, instance_type: str) -> float:
        """What a catalog price becomes: the joined runs' billed/estimate ratio of its machine type
        where the bill has one (billing.run_join), else the provider's effective/list factor."""
        return by_type.get((provider, instance_type), factors.get(provider, 1.0))

    factor = family("mlops_price_calibration_factor")
    for provider, value in sorted(factors.items()):
        factor.add_metric([provider], value)
    per_exp: dict[str, float] = dict(facts.cost_by_experiment)
    for (exp_id, provider, kind), nano in facts.catalog_by_experiment.items():
        scaled = nano - billed_exp.get((exp_id, provider, kind), 0)
        per_exp[exp_id] = per_exp.get(exp_id, 0.0) + scaled * (scale(provider, kind) - 1)
    experiment = family("mlops_experiment_calibrated_cost", currency=cur)
    for exp_id, nano in sorted(per_exp.items(), key=lambda kv: view.name(kv[0])):
        experiment.add_metric([view.name(exp_id)], nano / NANO)
    out = [factor, experiment]
    if view.allocation_tags and view.bill_months:
        listed = facts.month_tag_cost
        shifted: dict[tuple[str, int, str], float] = dict(listed)
        for key, nano in facts.catalog_by_month_tag.items():
            provider, kind, month, index, value = key
            scaled = nano - billed_month.get(key, 0)
            shifted[(month, index, value)] = shifted.get((month, index, value), 0) + scaled * (scale(provider, kind) - 1)
        by_tag = family("mlops_calibrated_cost_by_tag_month", currency=cur)
        for month in sorted({month for month, _, _ in listed})[-view.bill_months:]:
            for index, tag in enumerate(view.allocation_tags):
                # the same values as mlops_cost_by_tag_month: the top by list-price estimate, the rest 'other'
                values = {v: n for (m, i, v), n in listed.items() if m == month and i == index and v != UNTAGGED}
                kept = top_and_other(values, view.allocation_max_values)
                sums: dict[str, float] = {UNTAGGED: shifted.get((month, index, UNTAGGED), 0)}
                for value in values:
                    group = value if value in kept else OTHER
                    sums[group] = sums.get(group, 0) + shifted[(month, index, value)]
                for value, nano in sorted(sums.items()):
                    by_tag.add_metric([month, tag, value], nano / NANO)
        out.append(by_tag)
    return out


def storage(view: RunsView) -> list[Metric]:
    if view.artifacts is None:
        return []
    per_exp = view.artifacts.bytes_by_experiment
    size = family("mlops_experiment_artifact_bytes")
    cost = family("mlops_experiment_storage_monthly_cost", currency=view.currency)
    for exp_id in sorted(view.experiments):
        size.add_metric([view.name(exp_id)], per_exp.get(exp_id, 0))
        cost.add_metric([view.name(exp_id)], per_exp.get(exp_id, 0) / GB * view.storage_gb_month)
    pending = family("mlops_artifact_runs_pending")
    pending.add_metric([], view.artifacts.pending)
    errors = family("mlops_artifact_listing_errors_total")
    errors.add_metric([], view.artifacts.errors)
    return [size, cost, pending, errors]


def sync(view: RunsView) -> list[Metric]:
    if view.last_full_sync is None:
        return []
    resync = family("mlops_mlflow_last_full_sync_timestamp_seconds")
    resync.add_metric([], view.last_full_sync)
    return [resync]


def fixed_costs(config: Config) -> list[Metric]:
    """The chapter's cost categories that no run shows (data, personnel, software, operational)."""
    if not config.fixed_costs:
        return []
    fixed = family("mlops_fixed_cost_monthly", currency=config.pricing.currency)
    totals: dict[tuple[str, str], float] = {}
    for item in config.fixed_costs:  # several entries of one category and project add up
        key = (item.category, item.project)
        totals[key] = totals.get(key, 0.0) + item.monthly
    for (category, project), monthly in sorted(totals.items()):
        fixed.add_metric([category, project], monthly)
    return [fixed]
