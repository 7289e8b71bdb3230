"""The latest complete poll of every source, and the collector that renders it.

Sources poll in the background and hand over finished metric families; a scrape only reads what is
here (it never calls MLflow or an endpoint). Each update replaces a source's whole immutable state,
so a scrape sees either the old poll or the new one, never half of each. A failed poll keeps the
last good families and only changes the source's health figures.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

POLLED_NOTE = "Computed by a background poll, not at scrape time."


@dataclass(frozen=True)
class SourceState:
    name: str
    families: tuple[Metric, ...] = ()
    up: bool = False
    polls_total: int = 0
    errors_total: int = 0
    last_success: float | None = None  # unix seconds of the last successful poll's end
    last_duration: float | None = None
    last_error: str | None = None
    detail: str = ""  # one line for the landing page, e.g. "1,234 runs in 5 experiments"


class SnapshotStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, SourceState] = {}
        self.version = 0  # bumped on every change; lets the HTTP layer reuse a rendered page
        self.reload_ok: bool | None = None  # outcome of the last SIGHUP config reload; None before any

    def reload_result(self, ok: bool) -> None:
        with self._lock:
            self.reload_ok = ok
            self.version += 1

    def register(self, name: str) -> None:
        self._set(SourceState(name=name))

    def success(self, name: str, families: Iterable[Metric], duration: float, detail: str = "") -> None:
        with self._lock:
            old = self._states[name]
            new = replace(
                old,
                families=tuple(families),
                up=True,
                polls_total=old.polls_total + 1,
                last_success=time.time(),
                last_duration=duration,
                last_error=None,
                detail=detail,
            )
            self._states[name] = new
            self.version += 1

    def failure(self, name: str, error: str, duration: float) -> None:
        with self._lock:
            old = self._states[name]
            self._states[name] = replace(
                old,
                up=False,
                polls_total=old.polls_total + 1,
                errors_total=old.errors_total + 1,
                last_duration=duration,
                last_error=error,
            )
            self.version += 1

    def _set(self, state: SourceState) -> None:
        with self._lock:
            self._states[state.name] = state
            self.version += 1

    def states(self) -> tuple[int, tuple[SourceState, ...]]:
        with self._lock:
            return self.version, tuple(self._states.values())


class ExporterCollector(Collector):
    """Renders the store: exporter info, per-source health, then every source's last good poll."""

    def __init__(self, store: SnapshotStore, version: str, currency: str, static: Iterable[Metric] = ()):
        self.store = store
        self.version = version
        self.currency = currency
        self.static = tuple(static)  # families that come from the config alone, e.g. fixed costs

    def describe(self) -> list[Metric]:
        return []  # nothing to probe at registration; collect() is cheap and side-effect free

    def collect(self) -> Iterator[Metric]:
        _, states = self.store.states()
        info = InfoMetricFamily("mlops_exporter", "Exporter version and the currency of every cost metric.")
        info.add_metric([], {"version": self.version, "currency": self.currency})
        yield info
        up = GaugeMetricFamily("mlops_source_up", "1 when the source's last poll succeeded, else 0.", labels=["source"])
        duration = GaugeMetricFamily(
            "mlops_source_poll_duration_seconds", "Wall time of the source's last poll.", labels=["source"]
        )
        last = GaugeMetricFamily(
            "mlops_source_last_success_timestamp_seconds",
            "Unix time the source last polled successfully (absent before the first success).",
            labels=["source"],
        )
        errors = CounterMetricFamily(
            "mlops_source_errors", "Failed polls of the source since the exporter started.", labels=["source"]
        )
        polls = CounterMetricFamily(
            "mlops_source_polls", "Polls of the source since the exporter started.", labels=["source"]
        )
        for state in states:
            up.add_metric([state.name], 1.0 if state.up else 0.0)
            if state.last_duration is not None:
                duration.add_metric([state.name], state.last_duration)
            if state.last_success is not None:
                last.add_metric([state.name], state.last_success)
            errors.add_metric([state.name], state.errors_total)
            polls.add_metric([state.name], state.polls_total)
        yield from (up, duration, last, errors, polls)
        if self.store.reload_ok is not None:  # the Go exporters' convention for SIGHUP reloads
            reloaded = GaugeMetricFamily(
                "mlops_exporter_config_last_reload_successful",
                "1 when the last SIGHUP reload of the config succeeded; 0 when it was refused and the previous "
                "config stays in force.",
            )
            reloaded.add_metric([], 1 if self.store.reload_ok else 0)
            yield reloaded
        yield from self.static
        yield from merge_families(f for state in states for f in state.families)


def merge_families(families: Iterable[Metric]) -> list[Metric]:
    """One family per name: several sources (one per endpoint) may each hold part of a family, and
    an exposition with a name twice is invalid. Merging builds new families; snapshots stay as they are."""
    merged: dict[str, Metric] = {}
    for family in families:
        existing = merged.get(family.name)
        if existing is None:
            merged[family.name] = family
            continue
        combined = Metric(family.name, existing.documentation, existing.type, existing.unit)
        combined.samples = existing.samples + family.samples
        merged[family.name] = combined
    return list(merged.values())
