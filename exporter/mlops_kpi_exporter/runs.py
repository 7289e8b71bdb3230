"""MLflow runs reduced to the facts that cost and activity figures need, and the ledger that sums them.

The ledger keeps every known run and, alongside, running totals that are adjusted as runs are added,
changed or removed. A snapshot therefore costs O(experiments + running runs + series), never
O(all runs): a steady-state poll stays cheap however much history the tracking server holds.
Money is summed in integer nano-units and time in integer milliseconds, so totals are exact and do
not depend on the order runs arrived in: a restarted exporter reports bit-identical figures.
"""

from __future__ import annotations

import bisect
import math
import re
import zoneinfo
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from mlops_kpi_exporter.pricing import BadRunData, Pricer

TERMINAL_STATUSES = frozenset({"FINISHED", "FAILED", "KILLED"})
OPEN_STATUSES = frozenset({"RUNNING", "SCHEDULED"})
ACCRUING_STATUS = "RUNNING"  # only a running run is using its machine
NANO = 1_000_000_000
MS_PER_HOUR = 3_600_000
EARLIEST_MS = 946_684_800_000  # 2000-01-01 UTC: no MLflow run is older; an earlier time is a unit mistake
FUTURE_TOLERANCE_MS = 86_400_000  # times up to a day past the poll are believed (clock skew, time zones)
UNKNOWN_ESTIMATOR = "unknown"
# Why a run is left out of every figure, the label values of mlops_runs_skipped (README: "Skipped runs").
SKIP_REASONS = (
    "missing_start_time",
    "missing_end_time",
    "start_before_2000",
    "start_in_future",
    "end_in_future",
    "end_before_start",
    "unknown_status",
    "invalid_hourly_cost",
    "invalid_instance_count",
    "invalid_data",
)
UNTAGGED = "untagged"


def cost_nano(hourly: float, duration_ms: int) -> int:
    """Cost in billionths of the currency unit; an integer so that sums are exact."""
    return round(hourly * duration_ms * NANO / MS_PER_HOUR)


@dataclass(frozen=True, slots=True)
class RunFacts:
    run_id: str
    experiment_id: str
    run_name: str
    status: str
    start_ms: int
    end_ms: int | None  # None while the run is open
    hourly: float
    price_source: str
    instance_type: str | None
    estimator: str
    start_local_hour: int  # hour of day of the start, in the configured time zone
    allocation: tuple[str, ...] = ()  # values of the allocation tags, in config order
    month_costs: tuple[tuple[str, int], ...] = ()  # completed runs: (YYYY-MM, cost in nano) per month spanned

    @property
    def open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def start_epoch_hour(self) -> int:
        return self.start_ms // MS_PER_HOUR

    def duration_ms(self, now_ms: int) -> int:
        if self.status == ACCRUING_STATUS:
            return max(0, now_ms - self.start_ms)
        if self.end_ms is None:
            return 0  # SCHEDULED: not started on a machine yet
        return self.end_ms - self.start_ms

    def cost_nano(self, now_ms: int) -> int:
        return cost_nano(self.hourly, self.duration_ms(now_ms))


@dataclass(frozen=True)
class RunRules:
    """What turns raw run data into facts: pricing, estimator and allocation keys, the time zone
    of hours of day and calendar months."""

    pricer: Pricer
    estimator_keys: tuple[str, ...]
    timezone: str = "UTC"
    allocation_tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tz", zoneinfo.ZoneInfo(self.timezone))

    def _local(self, ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).astimezone(self._tz)  # type: ignore[attr-defined]

    def local_hour(self, start_ms: int) -> int:
        return self._local(start_ms).hour

    def month_bounds(self, ms: int) -> tuple[str, int, int]:
        """The calendar month holding `ms`: (YYYY-MM, first ms, first ms of the next month)."""
        local = self._local(ms)
        first = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        following = first.replace(year=first.year + 1, month=1) if first.month == 12 else first.replace(month=first.month + 1)
        return f"{first.year:04d}-{first.month:02d}", int(first.timestamp() * 1000), int(following.timestamp() * 1000)

    def month_costs(self, hourly: float, start_ms: int, end_ms: int) -> tuple[tuple[str, int], ...]:
        """A run's cost split exactly at month boundaries: each month gets the hours it held."""
        out = []
        cursor = start_ms
        while True:
            key, _, next_start = self.month_bounds(cursor)
            piece_end = min(end_ms, next_start)
            out.append((key, cost_nano(hourly, piece_end - cursor)))
            if piece_end >= end_ms:
                return tuple(out)
            cursor = piece_end

    def allocation(self, tags: Mapping[str, str]) -> tuple[str, ...]:
        return tuple((str(tags.get(t) or "").strip()[:100] or UNTAGGED) for t in self.allocation_tags)

    def estimator(self, tags: Mapping[str, str], params: Mapping[str, str]) -> str:
        for store in (tags, params):
            for key in self.estimator_keys:
                value = store.get(key)
                if value is not None and str(value).strip():
                    return short_class_name(str(value).strip())[:100]
        return UNKNOWN_ESTIMATOR


_DOTTED_PATH = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")


def short_class_name(value: str) -> str:
    """'sklearn.linear_model._logistic.LogisticRegression' -> 'LogisticRegression', as the chapter's
    estimator chart shows them (autologging writes the full path in `estimator_class`)."""
    return value.rsplit(".", 1)[1] if _DOTTED_PATH.fullmatch(value) else value


def _as_ms(value: object) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(number) or number <= 0:
        return None
    return int(number)


def make_facts(
    rules: RunRules,
    *,
    run_id: str,
    experiment_id: str,
    run_name: str | None,
    status: str | None,
    start_time: object,
    end_time: object,
    tags: Mapping[str, str],
    params: Mapping[str, str],
    now_ms: int,
) -> RunFacts:
    """Facts of one run, or BadRunData naming why the run cannot be counted."""
    status = (status or "").upper()
    if status not in TERMINAL_STATUSES and status not in OPEN_STATUSES:
        raise BadRunData("unknown_status", f"status {status!r}")
    start_ms = _as_ms(start_time)
    if start_ms is None:
        raise BadRunData("missing_start_time")
    if start_ms < EARLIEST_MS:
        raise BadRunData("start_before_2000", f"start_time {start_ms}")
    latest = now_ms + FUTURE_TOLERANCE_MS
    if start_ms > latest:
        raise BadRunData("start_in_future", f"start_time {start_ms}")
    end_ms: int | None = None
    if status in TERMINAL_STATUSES:
        end_ms = _as_ms(end_time)
        if end_ms is None:
            raise BadRunData("missing_end_time")
        if end_ms > latest:  # e.g. a client that logged microseconds
            raise BadRunData("end_in_future", f"end_time {end_ms}")
        if end_ms < start_ms:
            raise BadRunData("end_before_start")
    rate = rules.pricer.rate(tags, params)
    months = rules.month_costs(rate.hourly, start_ms, end_ms) if end_ms is not None else ()
    return RunFacts(
        run_id=run_id,
        experiment_id=experiment_id,
        run_name=(run_name or tags.get("mlflow.runName") or run_id)[:200],
        status=status,
        start_ms=start_ms,
        end_ms=end_ms,
        hourly=rate.hourly,
        price_source=rate.source,
        instance_type=rate.instance_type,
        estimator=rules.estimator(tags, params),
        start_local_hour=rules.local_hour(start_ms),
        allocation=rules.allocation(tags),
        month_costs=months,
    )


def facts_of(rules: RunRules, run: Any, now_ms: int) -> RunFacts:
    """Facts of an MLflow run entity. Whatever is wrong with its data raises BadRunData, never
    anything else: one odd run is skipped and counted, it never fails a poll or a report."""
    try:
        info, data = run.info, run.data
        return make_facts(
            rules,
            run_id=info.run_id,
            experiment_id=info.experiment_id,
            run_name=info.run_name,
            status=info.status,
            start_time=info.start_time,
            end_time=info.end_time,
            tags=data.tags or {},
            params=data.params or {},
            now_ms=now_ms,
        )
    except BadRunData:
        raise
    except Exception as exc:  # noqa: BLE001 - a check we did not foresee: skip the run, say why
        raise BadRunData("invalid_data", f"{type(exc).__name__}: {exc}") from exc


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
        out, running = [], 0
        for bound, count in zip((*self.bounds, math.inf), self.counts):
            running += count
            out.append(("+Inf" if bound == math.inf else _bound_text(bound), running))
        return out

    @property
    def count(self) -> int:
        return sum(self.counts)


def _bound_text(bound: float) -> str:
    return str(int(bound)) if bound == int(bound) else repr(bound)


@dataclass
class Totals:
    runs: int = 0
    run_ms: int = 0  # completed runs only; open runs are added at snapshot time
    cost_nano: int = 0


class RunLedger:
    """Every known run of the watched experiments, and the totals over them."""

    def __init__(self, duration_buckets: tuple[float, ...], cost_buckets: tuple[float, ...]):
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
        self.recent_closed: list[tuple[int, str]] = []  # (end_ms, run_id) of completed runs, see _sort_closed
        self._closed_sorted = True
        self.month_cost: Counter[tuple[str, str]] = Counter()  # (exp, YYYY-MM) -> nano, completed runs
        self.tag_cost: Counter[tuple[int, str]] = Counter()  # (allocation tag index, value) -> nano, completed

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
        return True

    def skip(self, run_id: str, experiment_id: str, reason: str) -> bool:
        """Record a run that cannot be counted (replacing any counted version of it)."""
        changed = self.remove(run_id)
        if self.skipped.get(run_id) == (experiment_id, reason):
            return changed
        self.skipped[run_id] = (experiment_id, reason)
        return True

    def remove(self, run_id: str) -> bool:
        self.skipped.pop(run_id, None)
        old = self.runs.pop(run_id, None)
        if old is None:
            return False
        self._account(old, -1)
        return True

    def remove_experiment(self, experiment_id: str) -> None:
        for run_id in [r.run_id for r in self.runs.values() if r.experiment_id == experiment_id]:
            self.remove(run_id)
        for run_id in [k for k, (exp, _) in self.skipped.items() if exp == experiment_id]:
            del self.skipped[run_id]

    def _account(self, run: RunFacts, sign: int) -> None:
        exp = run.experiment_id
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
            cost = run.cost_nano(0)
            totals.run_ms += sign * duration
            totals.cost_nano += sign * cost
            self._hist(self.duration_hist, exp, self.duration_buckets).add(duration / 1000, duration, sign)
            self._hist(self.cost_hist, exp, self.cost_buckets).add(cost / NANO, cost, sign)
            for month, piece in run.month_costs:
                _bump(self.month_cost, (exp, month), sign * piece)
            for index, tag_value in enumerate(run.allocation):
                _bump(self.tag_cost, (index, tag_value), sign * cost)
            key = (run.end_ms or 0, run.run_id)
            if sign > 0:
                # Appended, sorted lazily: a full sync brings runs newest first, and inserting each
                # at its place would shift the whole list every time (quadratic at 100k runs).
                if self.recent_closed and key < self.recent_closed[-1]:
                    self._closed_sorted = False
                self.recent_closed.append(key)
            else:
                self._sort_closed()
                index = bisect.bisect_left(self.recent_closed, key)
                if index < len(self.recent_closed) and self.recent_closed[index] == key:
                    del self.recent_closed[index]
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
        for run in self.open_runs.values():
            totals = out[(run.experiment_id, run.status)]
            totals.run_ms += run.duration_ms(now_ms)
            totals.cost_nano += run.cost_nano(now_ms)
        return out

    def running_hourly(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for run in sorted(self.open_runs.values(), key=lambda r: r.run_id):  # fixed order: exact sums
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

    def _sort_closed(self) -> None:
        if not self._closed_sorted:
            self.recent_closed.sort()
            self._closed_sorted = True

    def run_series(self, limit: int) -> list[RunFacts]:
        """Running runs first (newest first), then the most recently ended ones, `limit` in all."""
        if limit <= 0:
            return []
        self._sort_closed()
        chosen = sorted(self.open_runs.values(), key=lambda r: (r.start_ms, r.run_id), reverse=True)[:limit]
        for _, run_id in reversed(self.recent_closed[-(limit - len(chosen)) :] if len(chosen) < limit else []):
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
        for run in self.open_runs.values():
            if run.status == ACCRUING_STATUS:
                piece = cost_nano(run.hourly, max(0, now_ms - max(run.start_ms, first)))
                out[run.experiment_id] = out.get(run.experiment_id, 0) + piece
        return out, first, following - first

    def cost_by_tag(self, now_ms: int) -> Counter[tuple[int, str]]:
        """Cost in nano by (allocation tag index, value), running runs up to now."""
        out = Counter(self.tag_cost)
        for run in self.open_runs.values():
            accrued = run.cost_nano(now_ms)
            for index, tag_value in enumerate(run.allocation):
                out[(index, tag_value)] += accrued
        return out

    def skip_counts(self) -> Counter[str]:
        return Counter(reason for _, reason in self.skipped.values())


def _bump(counter: Counter, key: object, amount: int) -> None:  # type: ignore[type-arg]
    """Add or take; a key that reaches zero goes, and taking from a pruned key is a no-op."""
    if amount < 0 and key not in counter:
        return
    counter[key] += amount
    if counter[key] <= 0:
        del counter[key]
