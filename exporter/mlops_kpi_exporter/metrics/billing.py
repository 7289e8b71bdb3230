"""Cloud bill figures: by month, provider and service; by allocation tag; compute by tag beside MLflow's
estimate; the untagged share and the freshness of the data. Label values stay bounded: the latest
billing.months months, billing.max_services services per provider and month, allocation.max_values
values per tag (the rest summed as 'other', 'untagged' always shown).

    mlops_cloud_cost{bill="aws",cost_basis="billed",month="2026-10",provider="AWS",service="Amazon Elastic Compute Cloud"} 133.117028
    mlops_cloud_cost_by_tag{bill="aws",cost_basis="billed",month="2026-10",tag="team",value="churn"} 56.693317
    mlops_cloud_untagged_ratio{bill="aws",tag="team"} 0.05572586093023382
"""

from __future__ import annotations

from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter.metrics import add_costs, top_and_other
from mlops_kpi_exporter.metrics.catalogue import family
from mlops_kpi_exporter.runs import NANO, UNTAGGED

BASES = ("billed", "effective", "list")


def _top(values: dict[str, list[int]], limit: int, keep: str | None = None) -> dict[str, list[int]]:
    """The `limit` largest by billed cost (ties by name), the rest summed as 'other'; `keep` always its own."""
    out = top_and_other({k: v for k, v in values.items() if k != keep}, limit, rank=lambda costs: costs[0],
                        add=add_costs)
    if keep is not None:
        out[keep] = values.get(keep, [0, 0, 0])
    return out


def _add_costs(metric: Metric, labels: list[str], costs: list[int]) -> None:
    for basis, nano in zip(BASES, costs):
        metric.add_metric([*labels, basis], nano / NANO)


def families(bill) -> list[Metric]:
    """`bill`: a billing source's Bill, the sum over its files."""
    cur = bill.currency
    months = bill.shown_months()
    cost = family("mlops_cloud_cost", currency=cur)
    for month in months:
        providers = sorted({p for m, p, _, _ in bill.costs if m == month})
        for provider in providers:
            services: dict[str, list[int]] = {}
            for (m, p, service, _), values in bill.costs.items():
                if m == month and p == provider:
                    services[service] = [a + b for a, b in zip(services.get(service, [0, 0, 0]), values)]
            for service, values in sorted(_top(services, bill.max_services).items()):
                _add_costs(cost, [bill.name, month, provider, service], values)
    by_tag = family("mlops_cloud_cost_by_tag", currency=cur)
    compute = family("mlops_cloud_compute_cost_by_tag", currency=cur)
    for month in months:
        for tag in bill.tags:
            for metric, only_compute in ((by_tag, False), (compute, True)):
                values: dict[str, list[int]] = {}
                for (m, t, value, is_compute), costs in bill.by_tag.items():
                    if m == month and t == tag and (is_compute or not only_compute):
                        values[value] = [a + b for a, b in zip(values.get(value, [0, 0, 0]), costs)]
                for value, costs in sorted(_top(values, bill.max_values, keep=UNTAGGED).items()):
                    _add_costs(metric, [bill.name, month, tag, value], costs)
    fresh = family("mlops_cloud_cost_last_charge_timestamp_seconds")
    for provider, end in sorted(bill.last_charge.items()):
        fresh.add_metric([bill.name, provider], end)
    out: list[Metric] = [cost, by_tag, compute, fresh]
    if months:
        latest = months[-1]
        total = [0, 0, 0]
        for (m, *_), values in bill.costs.items():
            if m == latest:
                total = [a + b for a, b in zip(total, values)]
        month_total = family("mlops_cloud_cost_latest_month", currency=cur)
        _add_costs(month_total, [bill.name, latest], total)
        untagged = family("mlops_cloud_untagged_ratio")
        for tag in bill.tags:
            spent = sum(c[0] for (m, t, _, _), c in bill.by_tag.items() if m == latest and t == tag)
            loose = sum(c[0] for (m, t, v, _), c in bill.by_tag.items() if m == latest and t == tag and v == UNTAGGED)
            untagged.add_metric([bill.name, tag], loose / spent if spent > 0 else 0.0)
        out += [month_total, untagged]
    return out


def budget(config) -> list[Metric]:
    """The monthly budget of the whole bill, all exports together: from the config alone."""
    if config.billing.monthly_budget is None or not config.billing.sources:
        return []
    monthly = family("mlops_cloud_budget_monthly", currency=config.pricing.currency)
    monthly.add_metric([], config.billing.monthly_budget)
    return [monthly]
