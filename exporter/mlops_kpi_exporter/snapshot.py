"""The latest complete poll of every source, the derived figures over them, and the collector that
renders it all.

Sources poll in the background and hand over finished metric families and their facts (facts.py);
a scrape only reads what is here (it never calls MLflow or an endpoint). Each update replaces a
source's whole immutable state and, when it brought new facts, the derived stage's figures
(derived.py) in the same step, so a scrape sees either the old poll or the new one, never half of
each, and never a joined figure of the old facts beside its sources' new ones. A failed poll keeps
the last good families and facts and only changes the source's health figures.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from mlops_kpi_exporter.metrics.catalogue import WORKSPACE_SPLIT
from mlops_kpi_exporter.metrics.exporter import health
from mlops_kpi_exporter.mlflow_workspaces import split_workspace_labels

log = logging.getLogger(__name__)
SLOT_PREFIX = "__slot_"


def slot(name: str) -> Metric:
    """A marker in a source's families: the derived figures of place `name` are rendered here, so
    that they keep their place in the exposition beside the figures they are read with."""
    return Metric(SLOT_PREFIX + name, "", "untyped")


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
    facts: object | None = None  # of the last good poll, for the derived stage (facts.py); None before one
    workspaces: bool = False  # its MLflow has workspaces: its names are qualified (mlflow_workspaces.py)


@dataclass(frozen=True)
class Derived:
    """The derived stage's output (derived.Derived has this shape): families by slot, and the
    figures' pending inputs."""

    slots: Mapping[str, tuple[Metric, ...]] = field(default_factory=dict)
    pending: tuple[Metric, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    version: int
    states: tuple[SourceState, ...]
    derived: Derived


class SnapshotStore:
    def __init__(self, derive: Callable[[Mapping[str, object]], Derived] | None = None, clock=time.time) -> None:
        self._lock = threading.Lock()
        self._derive_lock = threading.Lock()  # one derivation at a time, each from the latest facts
        self._states: dict[str, SourceState] = {}
        self._derive = derive
        self._derived = derive({}) if derive is not None else Derived()
        self.clock = clock
        self.version = 0  # bumped on every change; lets the HTTP layer reuse a rendered page
        self.reload_ok: bool | None = None  # outcome of the last SIGHUP config reload; None before any

    def reload_result(self, ok: bool) -> None:
        with self._lock:
            self.reload_ok = ok
            self.version += 1

    def register(self, name: str) -> None:
        self._set(SourceState(name=name))

    def success(self, name: str, families: Iterable[Metric], duration: float, detail: str = "",
                facts: object | None = None, workspaces: bool = False) -> None:
        """A good poll; `facts`, when the source hands some, replace its last and the derived figures
        are computed again before both are published together."""
        with self._derive_lock:
            with self._lock:
                old = self._states[name]
                new = replace(old, families=tuple(families), up=True, polls_total=old.polls_total + 1,
                              last_success=self.clock(), last_duration=duration, last_error=None, detail=detail,
                              facts=facts if facts is not None else old.facts, workspaces=workspaces)
                inputs = {n: s.facts for n, s in self._states.items() if s.facts is not None and n != name}
            derived = self._derived
            if facts is not None and self._derive is not None:
                if new.facts is not None:
                    inputs[name] = new.facts
                try:
                    derived = self._derive(inputs)
                except Exception:  # a defect on odd data: logged whole, the last derived figures stay
                    log.exception("derived figures not updated after the poll of %s", name)
            with self._lock:
                self._states[name] = new
                self._derived = derived
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

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(self.version, tuple(self._states.values()), self._derived)


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
        snap = self.store.snapshot()
        yield from health(snap.states, self.version, self.currency, self.store.reload_ok)
        yield from snap.derived.pending
        yield from self.static
        families = placed(merge_families(f for state in snap.states for f in state.families), snap.derived.slots)
        if any(state.workspaces for state in snap.states):  # one MLflow: all its names are qualified
            families = iter(split_workspace_labels(families, WORKSPACE_SPLIT))
        yield from families


def placed(families: Iterable[Metric], slots: Mapping[str, tuple[Metric, ...]]) -> Iterator[Metric]:
    """The families with each slot marker replaced by that slot's derived families; a slot whose
    marker no source has given (its source not polled yet) comes last."""
    left = dict(slots)
    for family in families:
        if family.name.startswith(SLOT_PREFIX):
            yield from left.pop(family.name[len(SLOT_PREFIX):], ())
        else:
            yield family
    for rest in left.values():
        yield from rest


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
