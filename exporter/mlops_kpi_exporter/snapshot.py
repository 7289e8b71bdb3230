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

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from mlops_kpi_exporter.metrics.exporter import health


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
        yield from health(states, self.version, self.currency, self.store.reload_ok)
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
