"""The exporter's own health: version and currency, each source's polls, the last config reload.

    mlops_exporter_info{currency="USD",version="0.1.0"} 1.0
    mlops_source_up{source="mlflow"} 1.0
    mlops_source_polls_total{source="mlflow"} 1.0
"""

from __future__ import annotations

from collections.abc import Iterable
from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter.metrics.catalogue import family


def health(states: Iterable, version: str, currency: str, reload_ok: bool | None) -> list[Metric]:
    """`states`: the snapshot store's SourceState of each source."""
    info = family("mlops_exporter_info")
    info.add_metric([], {"version": version, "currency": currency})
    up = family("mlops_source_up")
    duration = family("mlops_source_poll_duration_seconds")
    last = family("mlops_source_last_success_timestamp_seconds")
    errors = family("mlops_source_errors_total")
    polls = family("mlops_source_polls_total")
    for state in states:
        up.add_metric([state.name], 1.0 if state.up else 0.0)
        if state.last_duration is not None:
            duration.add_metric([state.name], state.last_duration)
        if state.last_success is not None:
            last.add_metric([state.name], state.last_success)
        errors.add_metric([state.name], state.errors_total)
        polls.add_metric([state.name], state.polls_total)
    out = [info, up, duration, last, errors, polls]
    if reload_ok is not None:  # the Go exporters' convention for SIGHUP reloads
        reloaded = family("mlops_exporter_config_last_reload_successful")
        reloaded.add_metric([], 1 if reload_ok else 0)
        out.append(reloaded)
    return out
