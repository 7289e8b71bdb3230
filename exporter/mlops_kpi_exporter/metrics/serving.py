"""Serving figures of one endpoint: probes, the cost and sizing of its machines, and its traffic as
the server reports it. Traffic series are dropped while the server's metrics cannot be read: a stale
value is never presented as fresh. (The kserve case of tests/integration/test_endpoints.py:)

    mlops_endpoint_hourly_cost{endpoint="churn"} 2.4
    mlops_endpoint_requests_total{endpoint="churn"} 30.0
    mlops_endpoint_request_duration_seconds_bucket{endpoint="churn",le="0.5"} 28.0
    mlops_endpoint_utilization_ratio{endpoint="churn",resource="capacity"} 0.2
"""

from __future__ import annotations

import math
from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter.ledger import cumulative_buckets, le_text
from mlops_kpi_exporter.metrics.catalogue import family


def families(r) -> list[Metric]:
    """`r`: an endpoint source's EndpointReadings."""
    out: list[Metric] = []
    if r.probe_up is not None:
        up = family("mlops_endpoint_up")
        up.add_metric([r.name], 1 if r.probe_up else 0)
        probes = family("mlops_endpoint_probes_total")
        for outcome, n in r.probes.items():
            probes.add_metric([r.name, outcome], n)
        duration = family("mlops_endpoint_probe_duration_seconds")
        duration.add_metric([r.name], cumulative_buckets(r.probe_bounds, r.probe_buckets), r.probe_sum)
        out += [up, probes, duration]
    if r.hourly_cost is not None:
        cost = family("mlops_endpoint_hourly_cost", currency=r.currency)
        cost.add_metric([r.name], r.hourly_cost)
        out.append(cost)
    if r.capacity_rps is not None:
        capacity = family("mlops_endpoint_capacity_rps")
        capacity.add_metric([r.name], r.capacity_rps)
        out.append(capacity)
    if r.metrics_up is not None:
        out += traffic(r)
    return out


def traffic(r) -> list[Metric]:
    up = family("mlops_endpoint_metrics_up")
    up.add_metric([r.name], 1 if r.metrics_up else 0)
    scrapes = family("mlops_endpoint_metrics_scrapes_total")
    for outcome, n in r.scrapes.items():
        scrapes.add_metric([r.name, outcome], n)
    out: list[Metric] = [up, scrapes]
    if not r.metrics_up:
        return out  # no stale traffic figures presented as fresh
    t = r.traffic
    requests = family("mlops_endpoint_requests_total")
    requests.add_metric([r.name], t.requests.total)
    out.append(requests)
    if t.has_errors:
        errors = family("mlops_endpoint_errors_total")
        errors.add_metric([r.name], t.errors.total)
        out.append(errors)
    if t.has_client_errors:
        client_errors = family("mlops_endpoint_client_errors_total")
        client_errors.add_metric([r.name], t.client_errors.total)
        out.append(client_errors)
    if t.has_latency:
        latency = family("mlops_endpoint_request_duration_seconds")
        buckets = [(le_text(b), tracker.total) for b, tracker in sorted(t.buckets.items()) if b != math.inf]
        buckets.append(("+Inf", t.buckets[math.inf].total if math.inf in t.buckets else t.latency_count.total))
        latency.add_metric([r.name], buckets, t.latency_sum.total)
        out.append(latency)
    utilization = family("mlops_endpoint_utilization_ratio")
    values = dict(t.utilization)
    if r.capacity_rps and t.throughput is not None:
        values["capacity"] = t.throughput / r.capacity_rps
    for resource, value in sorted(values.items()):
        utilization.add_metric([r.name, resource], value)
    out.append(utilization)
    return out
