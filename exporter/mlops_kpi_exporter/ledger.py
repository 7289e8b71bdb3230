"""The ledger: every known run of the watched experiments and the running totals over them.

Totals are adjusted as runs are added, changed or removed, so rendering costs O(experiments + running
runs + series), never O(all runs): a steady-state poll stays cheap however much history MLflow
holds. Money is summed in integer nano-units and time in integer milliseconds, so totals are exact
and do not depend on the order runs arrived in: a restarted exporter reports bit-identical figures.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import Counter
from dataclasses import dataclass, field

from prometheus_client.utils import floatToGoString

from mlops_kpi_exporter.runs import (
    ACCRUING_STATUS,
    MS_PER_HOUR,
    NANO,
    STALE,
    RunFacts,
    RunRules,
    cost_nano,
    on_parents_machine,
    shares,
)


@dataclass
class Histogram:
    """Per-bucket (not cumulative) counts; the last slot is +Inf. Sum kept as an exact integer."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def add(self, value: float, raw_sum: int, sign: int) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += sign
        self.total += sign * raw_sum

    def cumulative(self) -> list[tuple[str, int]]:
        return cumulative_buckets(self.bounds, self.counts)

    @property
    def count(self) -> int:
        return sum(self.counts)


def le_text(bound: float) -> str:
    """A bucket bound as the `le` label shows it, in the float form Prometheus 3 normalises every
    classic histogram's `le` to (60.0, 0.5), so a query matching on `le` reads the same on 2.x and 3.x."""
    return floatToGoString(bound)


def cumulative_buckets(bounds, counts) -> list[tuple[str, int]]:
    """Per-bucket counts (the last one +Inf) as the cumulative (le, count) pairs of an exposition."""
    out, running = [], 0
    for bound, count in zip((*bounds, math.inf), counts):
        running += count
        out.append(("+Inf" if bound == math.inf else le_text(bound), running))
    return out


@dataclass
class Totals:
    runs: int = 0
    run_ms: int = 0  # completed runs only; open runs are added at snapshot time
    cost_nano: int = 0


class RunLedger:
    """Every known run of the watched experiments, and the totals over them.

    Each machine-hour is counted once: a child run on its parent's machine (runs.nested) counts in
    the activity figures (runs, start hours, estimators, run times) but its cost and machine time
    are its parent's; per run it shows its share of the parent's cost (`cost_of`).
    """

    def __init__(self, duration_buckets: tuple[float, ...], cost_buckets: tuple[float, ...], nested: str = "auto",
                 keep_recent: int = 100):
        self.nested = nested
        self.children: dict[str, set[str]] = {}  # parent run id -> ids of the known runs naming it
        self.within: set[str] = set()  # runs on their parent's machine, as they were accounted
        self.duration_buckets = duration_buckets
        self.cost_buckets = cost_buckets
        self.runs: dict[str, RunFacts] = {}
        self.skipped: dict[str, tuple[str, str]] = {}  # run_id -> (experiment_id, reason)
        self.open_runs: dict[str, RunFacts] = {}
        self.totals: dict[tuple[str, str], Totals] = {}  # (experiment_id, status)
        self.estimators: Counter[tuple[str, str]] = Counter()
        self.price_sources: Counter[tuple[str, str]] = Counter()
        self.start_hours: Counter[tuple[str, int, int]] = Counter()  # (exp, epoch hour, local hour)
        self.duration_hist: dict[str, Histogram] = {}
        self.cost_hist: dict[str, Histogram] = {}
        # (end_ms, run_id) of the keep_recent most recently ended runs, ascending (run_series): only these,
        # not every completed run, so that the ledger holds no per-run index beyond `runs` itself
        self.keep_recent = keep_recent
        self.recent_closed: list[tuple[int, str]] = []
        self._recent_whole = True  # False once one of them went: rebuilt from every run when next read
        self.month_cost: Counter[tuple[str, str]] = Counter()  # (exp, YYYY-MM) -> nano, completed runs
        self.tag_cost: Counter[tuple[int, str]] = Counter()  # (allocation tag index, value) -> nano, completed
        self.month_tag_cost: Counter[tuple[str, int, str]] = Counter()  # (YYYY-MM, tag index, value) -> nano
        # the part of the above priced from the catalog, by its provider (pricing.calibrate_from_bill)
        self.catalog_cost: Counter[tuple[str, str, str]] = Counter()  # (exp, provider, instance type) -> nano, completed
        # (provider, instance type, month, tag index, value) -> nano, completed
        self.catalog_month_tag_cost: Counter[tuple[str, str, str, int, str]] = Counter()
        self.join_index: dict[tuple[int, str], set[str]] = {}  # (join tag index, value) -> run ids (billing.run_join)
        # runs that report utilization system metrics, and per experiment the number that do not: the
        # idle-spend figures read these, not every run (metrics/utilization.py)
        self.system_runs: set[str] = set()
        self.without_system: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.runs)

    # -- changes ---------------------------------------------------------------------------------
    def upsert(self, facts: RunFacts) -> bool:
        """Add or replace a run; True when anything changed."""
        old = self.runs.get(facts.run_id)
        if old == facts:
            return False
        self.skipped.pop(facts.run_id, None)
        if old is not None:
            self._account(old, -1)
        self.runs[facts.run_id] = facts
        self._account(facts, +1)
        self._reconsider_children(facts.run_id)
        return True

    def skip(self, run_id: str, experiment_id: str, reason: str) -> bool:
        """Record a run that cannot be counted (replacing any counted version of it)."""
        if self.skipped.get(run_id) == (experiment_id, reason):
            return False  # skipped already, for the same reason (a counted version would not be skipped)
        self.remove(run_id)
        self.skipped[run_id] = (experiment_id, reason)
        return True

    def forget_skipped(self, run_id: str) -> bool:
        return self.skipped.pop(run_id, None) is not None

    def remove(self, run_id: str) -> bool:
        self.skipped.pop(run_id, None)
        old = self.runs.pop(run_id, None)
        if old is None:
            return False
        self._account(old, -1)
        self._reconsider_children(run_id)
        return True

    def on_parents_machine(self, run: RunFacts) -> bool:
        parent = self.runs.get(run.parent_run_id) if run.parent_run_id else None
        return parent is not None and parent.run_id != run.run_id and on_parents_machine(run, parent, self.nested)

    def _reconsider_children(self, parent_id: str) -> None:
        """A parent came, changed or went: its children are accounted anew where that moves them."""
        for child_id in list(self.children.get(parent_id, ())):
            child = self.runs.get(child_id)
            if child is not None and self.on_parents_machine(child) != (child_id in self.within):
                self._account(child, -1)
                self._account(child, +1)

    def remove_experiment(self, experiment_id: str) -> None:
        for run_id in [r.run_id for r in self.runs.values() if r.experiment_id == experiment_id]:
            self.remove(run_id)
        for run_id in [k for k, (exp, _) in self.skipped.items() if exp == experiment_id]:
            del self.skipped[run_id]

    def _account(self, run: RunFacts, sign: int) -> None:
        exp = run.experiment_id
        if sign > 0:
            within = self.on_parents_machine(run)
            if within:
                self.within.add(run.run_id)
            if run.parent_run_id:
                self.children.setdefault(run.parent_run_id, set()).add(run.run_id)
        else:
            within = run.run_id in self.within
            self.within.discard(run.run_id)
            if run.parent_run_id and run.parent_run_id in self.children:
                self.children[run.parent_run_id].discard(run.run_id)
                if not self.children[run.parent_run_id]:
                    del self.children[run.parent_run_id]
        for index, value in enumerate(run.join_values):
            if value:
                ids = self.join_index.setdefault((index, value), set())
                if sign > 0:
                    ids.add(run.run_id)
                else:
                    ids.discard(run.run_id)
                    if not ids:
                        del self.join_index[(index, value)]
        if run.system:
            if sign > 0:
                self.system_runs.add(run.run_id)
            else:
                self.system_runs.discard(run.run_id)
        else:
            _bump(self.without_system, exp, sign)
        totals = self.totals.setdefault((exp, run.status), Totals())
        totals.runs += sign
        _bump(self.estimators, (exp, run.estimator), sign)
        _bump(self.price_sources, (exp, run.price_source), sign)
        _bump(self.start_hours, (exp, run.start_epoch_hour, run.start_local_hour), sign)
        if run.open:
            if sign > 0:
                self.open_runs[run.run_id] = run
            else:
                self.open_runs.pop(run.run_id, None)
        else:
            duration = run.duration_ms(0)
            self._hist(self.duration_hist, exp, self.duration_buckets).add(duration / 1000, duration, sign)
            if not within:  # a child on its parent's machine: its hours and cost are the parent's
                cost = run.cost_nano(0)
                totals.run_ms += sign * duration
                totals.cost_nano += sign * cost
                self._hist(self.cost_hist, exp, self.cost_buckets).add(cost / NANO, cost, sign)
                for month, piece in run.month_costs:
                    _bump(self.month_cost, (exp, month), sign * piece)
                    for index, tag_value in enumerate(run.allocation):
                        _bump(self.month_tag_cost, (month, index, tag_value), sign * piece)
                        if run.catalog_provider:
                            _bump(self.catalog_month_tag_cost,
                                  (run.catalog_provider, run.instance_type or "", month, index, tag_value), sign * piece)
                if run.catalog_provider:
                    _bump(self.catalog_cost, (exp, run.catalog_provider, run.instance_type or ""), sign * cost)
                for index, tag_value in enumerate(run.allocation):
                    _bump(self.tag_cost, (index, tag_value), sign * cost)
            self._note_closed((run.end_ms or 0, run.run_id), sign)
        if totals.runs == 0:
            del self.totals[(exp, run.status)]

    @staticmethod
    def _hist(table: dict[str, Histogram], exp: str, bounds: tuple[float, ...]) -> Histogram:
        hist = table.get(exp)
        if hist is None:
            hist = table[exp] = Histogram(bounds)
        return hist

    # -- reading ---------------------------------------------------------------------------------
    def status_totals(self, now_ms: int) -> dict[tuple[str, str], Totals]:
        """Per (experiment, status): runs, run time and cost, open runs accrued up to now."""
        out = {key: Totals(t.runs, t.run_ms, t.cost_nano) for key, t in self.totals.items()}
        for run in self._costed_open():
            totals = out[(run.experiment_id, run.status)]
            totals.run_ms += run.duration_ms(now_ms)
            totals.cost_nano += run.cost_nano(now_ms)
        return out

    def running_hourly(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for run in sorted(self._costed_open(), key=lambda r: r.run_id):  # fixed order: exact sums
            if run.status == ACCRUING_STATUS:
                out[run.experiment_id] = out.get(run.experiment_id, 0.0) + run.hourly
        return out

    def start_hour_counts(self, now_ms: int, window_ms: int) -> Counter[tuple[str, int]]:
        """Runs started within the window (to the hour), by (experiment, local hour of day).

        Hours that left the window are dropped for good, so this stays O(window), not O(history).
        """
        oldest = (now_ms - window_ms) // MS_PER_HOUR
        out: Counter[tuple[str, int]] = Counter()
        stale = []
        for key, count in self.start_hours.items():
            exp, epoch_hour, local_hour = key
            if epoch_hour < oldest:
                stale.append(key)
            else:
                out[(exp, local_hour)] += count
        for key in stale:
            del self.start_hours[key]
        return out

    def _note_closed(self, key: tuple[int, str], sign: int) -> None:
        """Keep recent_closed the newest keep_recent completed runs as one comes or goes."""
        recent = self.recent_closed
        if sign > 0:
            if self._recent_whole and (len(recent) < self.keep_recent or key > recent[0]):
                bisect.insort(recent, key)
                if len(recent) > self.keep_recent:
                    del recent[0]
            return
        index = bisect.bisect_left(recent, key)
        if index < len(recent) and recent[index] == key:
            del recent[index]
            self._recent_whole = False  # an older run may now belong: found again when read

    def _recent(self, limit: int) -> list[tuple[int, str]]:
        if limit > self.keep_recent:
            self.keep_recent, self._recent_whole = limit, False
        if not self._recent_whole:
            closed = ((run.end_ms or 0, run.run_id) for run in self.runs.values() if not run.open)
            self.recent_closed = sorted(heapq.nlargest(self.keep_recent, closed))
            self._recent_whole = True
        return self.recent_closed

    def run_series(self, limit: int) -> list[RunFacts]:
        """Running runs first (newest first), then the most recently ended ones, `limit` in all."""
        if limit <= 0:
            return []
        recent = self._recent(limit)
        chosen = sorted(self.open_runs.values(), key=lambda r: (r.start_ms, r.run_id), reverse=True)[:limit]
        for _, run_id in reversed(recent[-(limit - len(chosen)) :] if len(chosen) < limit else []):
            chosen.append(self.runs[run_id])
        return chosen

    def month_to_date(self, now_ms: int, rules: RunRules) -> tuple[dict[str, int], int, int]:
        """Cost in nano per experiment within the current calendar month (running runs up to now),
        with the month's first ms and its length in ms."""
        key, first, following = rules.month_bounds(now_ms)
        out: dict[str, int] = {}
        for (exp, month), nano in self.month_cost.items():
            if month == key:
                out[exp] = out.get(exp, 0) + nano
        for run in self._costed_open():
            if run.status == ACCRUING_STATUS:
                piece = cost_nano(run.hourly, max(0, now_ms - max(run.start_ms, first)))
            else:  # STALE: costed to its last sign of life, split by month like a completed run
                piece = sum(nano for month, nano in run.month_costs if month == key)
            out[run.experiment_id] = out.get(run.experiment_id, 0) + piece
        return out, first, following - first

    def cost_by_tag(self, now_ms: int) -> Counter[tuple[int, str]]:
        """Cost in nano by (allocation tag index, value), running runs up to now."""
        out = Counter(self.tag_cost)
        for run in self._costed_open():
            accrued = run.cost_nano(now_ms)
            for index, tag_value in enumerate(run.allocation):
                out[(index, tag_value)] += accrued
        return out

    def month_tag_costs(self, now_ms: int, rules: RunRules) -> Counter[tuple[str, int, str]]:
        """Cost in nano by (month, allocation tag index, value), running runs up to now."""
        out = Counter(self.month_tag_cost)
        for run in self._costed_open():
            for month, piece in _open_month_costs(run, now_ms, rules):
                for index, tag_value in enumerate(run.allocation):
                    out[(month, index, tag_value)] += piece
        return out

    def catalog_costs(self, now_ms: int, rules: RunRules) -> tuple[Counter, Counter]:
        """The catalog-priced part of the cost, by provider and instance type: per (experiment,
        provider, type), and per (provider, type, month, allocation tag index, value); running runs up to now."""
        by_exp = Counter(self.catalog_cost)
        by_month = Counter(self.catalog_month_tag_cost)
        for run in self._costed_open():
            if not run.catalog_provider:
                continue
            kind = run.instance_type or ""
            by_exp[(run.experiment_id, run.catalog_provider, kind)] += run.cost_nano(now_ms)
            for month, piece in _open_month_costs(run, now_ms, rules):
                for index, tag_value in enumerate(run.allocation):
                    by_month[(run.catalog_provider, kind, month, index, tag_value)] += piece
        return by_exp, by_month

    def _costed_open(self):
        """Open runs that cost on their own (not on a parent's machine)."""
        return (run for run in self.open_runs.values() if run.run_id not in self.within)

    def cost_of(self, run: RunFacts, now_ms: int) -> int:
        return share_of(run, self.runs, self.children, self.within, now_ms)

    def stale_counts(self) -> Counter[str]:
        """Runs left RUNNING with no sign of life, per experiment."""
        return Counter(run.experiment_id for run in self.open_runs.values() if run.status == STALE)

    def skip_counts(self) -> Counter[str]:
        return Counter(reason for _, reason in self.skipped.values())


def share_of(run: RunFacts, runs, children, within, now_ms: int) -> int:
    """A run's cost in nano: its own, or its share of its parent's (see runs.shares)."""
    if run.run_id not in within:
        return run.cost_nano(now_ms)
    parent = runs[run.parent_run_id]
    return shares(parent, [runs[c] for c in children[parent.run_id] if c in within], now_ms)[run.run_id]


def _open_month_costs(run: RunFacts, now_ms: int, rules: RunRules) -> tuple[tuple[str, int], ...]:
    """An open run's cost by month: a running one up to now, a STALE one to its last sign of life."""
    if run.status == ACCRUING_STATUS:
        return tuple(rules.month_costs(run.hourly, run.start_ms, max(run.start_ms, now_ms)))
    return run.month_costs


def _bump(counter: Counter, key: object, amount: int) -> None:  # type: ignore[type-arg]
    """Add or take; a key that reaches zero goes, and taking from a pruned key is a no-op."""
    if amount < 0 and key not in counter:
        return
    counter[key] += amount
    if counter[key] <= 0:
        del counter[key]
