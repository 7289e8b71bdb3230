"""KPI figures: each KPI's value, target, whether it is met, where it came from, or why it is missing.

    mlops_kpi{experiment="fraud-detection",kpi="fraud_false_positive_rate"} 0.0224
    mlops_kpi_target{kpi="fraud_false_positive_rate"} 0.05
    mlops_kpi_target_met{kpi="fraud_false_positive_rate"} 1.0
"""

from __future__ import annotations

from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter.metrics.catalogue import family


def families(readings: list) -> list[Metric]:
    """`readings`: the KPI source's KpiReading of each KPI."""
    value = family("mlops_kpi")
    target = family("mlops_kpi_target")
    met = family("mlops_kpi_target_met")
    info = family("mlops_kpi_source_info")
    missing = family("mlops_kpi_missing")
    for r in readings:
        k = r.kpi
        if k.target is not None:
            target.add_metric([k.name], k.target)
        if r.value is None:
            missing.add_metric([k.name, r.missing], 1)
            continue
        value.add_metric([k.name, r.experiment], r.value)
        if r.target_met is not None:
            met.add_metric([k.name], 1 if r.target_met else 0)
        info.add_metric(
            [k.name, r.experiment, k.metric, k.source, k.direction, r.run_id, k.model or "", k.alias or "", r.model_version],
            {},
        )
    return [value, target, met, info, missing]
