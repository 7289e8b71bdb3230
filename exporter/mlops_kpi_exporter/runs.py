"""MLflow runs reduced to the facts that cost and activity figures need, after checking their data.

A run whose data fails a check (README: "Skipped runs") raises BadData with the reason that
`mlops_runs_skipped` counts; `facts_of` turns any other surprise into the reason `invalid_data`, so
one odd run never fails a poll or a report. Money is in integer nano-units, time in integer ms.
"""

from __future__ import annotations

import math
import re
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from mlops_kpi_exporter.bad_data import BadData
from mlops_kpi_exporter.pricing import Pricer, first_of

TERMINAL_STATUSES = frozenset({"FINISHED", "FAILED", "KILLED"})
STALE = "STALE"  # RUNNING in MLflow, but no sign of life for runs.stale_after: its process is gone
OPEN_STATUSES = frozenset({"RUNNING", "SCHEDULED", STALE})  # not ended in MLflow
ACCRUING_STATUS = "RUNNING"  # only a running run is using its machine
CLEANED_UP = frozenset({"FAILED", "KILLED"})  # what a clean-up script marks a crashed run
PARENT_TAG = "mlflow.parentRunId"  # set by MLflow on nested runs (tuning sweeps: one child per trial)
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
# an allocation "tag" that is the run's MLflow workspace (MLflow sets no run tag of this name)
WORKSPACE_DIMENSION = "mlflow.workspace"


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
    # runs with an end: the month (YYYY-MM) it lies in, or "" and its cost per month when it spans more
    # than one (see month_costs); one month is the common case and needs no tuple of its own
    month: str = ""
    month_split: tuple[tuple[str, int], ...] = ()
    parent_run_id: str | None = None
    last_alive_ms: int = 0  # the latest time it logged anything (its start when it logged nothing)
    catalog_provider: str | None = None  # priced from the catalog (list prices) of this provider
    join_values: tuple[str, ...] = ()  # values of RunRules.join_tags ("" when absent), for the bill join
    system: tuple[tuple[str, float], ...] = ()  # latest values of its utilization system metrics (SYSTEM_KEY)

    @property
    def open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def month_costs(self) -> tuple[tuple[str, int], ...]:
        """(YYYY-MM, cost in nano) per month the run spans; () while it has no end."""
        if self.month:
            return ((self.month, self.cost_nano(0)),)
        return self.month_split

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
    stale_after_ms: int = 86_400_000  # runs.stale_after
    join_tags: tuple[str, ...] = ()  # the run tags billing.run_join matches bill rows by

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

    def allocation(self, tags: Mapping[str, str], workspace: str | None = None) -> tuple[str, ...]:
        """The run's value of each allocation tag; WORKSPACE_DIMENSION is its MLflow workspace, not a tag
        (untagged on a server without workspaces)."""
        return tuple((workspace or UNTAGGED) if t == WORKSPACE_DIMENSION else (str(tags.get(t) or "").strip()[:100] or UNTAGGED)
                     for t in self.allocation_tags)

    def join_values(self, tags: Mapping[str, str]) -> tuple[str, ...]:
        return tuple(str(tags.get(t) or "").strip()[:250] for t in self.join_tags)

    def estimator(self, tags: Mapping[str, str], params: Mapping[str, str]) -> str:
        found = first_of(self.estimator_keys, tags, params)
        return UNKNOWN_ESTIMATOR if found is None else short_class_name(found)[:100]


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
    logged_at: Iterable[object] = (),
    metrics: Mapping[str, object] | None = None,
    workspace: str | None = None,
) -> RunFacts:
    """Facts of one run, or BadData naming why the run cannot be counted.

    `logged_at`: times the run logged something (its latest metrics, system metrics included); the
    latest is its last sign of life. A RUNNING run silent for longer than stale_after is STALE and
    costed to its last sign of life; so is a run a clean-up marked FAILED or KILLED long after it.
    """
    status = (status or "").upper()
    if status not in TERMINAL_STATUSES and status not in OPEN_STATUSES:
        raise BadData("unknown_status", f"status {status!r}")
    start_ms = _as_ms(start_time)
    if start_ms is None:
        raise BadData("missing_start_time")
    if start_ms < EARLIEST_MS:
        raise BadData("start_before_2000", f"start_time {start_ms}")
    latest = now_ms + FUTURE_TOLERANCE_MS
    if start_ms > latest:
        raise BadData("start_in_future", f"start_time {start_ms}")
    end_ms: int | None = None
    if status in TERMINAL_STATUSES:
        end_ms = _as_ms(end_time)
        if end_ms is None:
            raise BadData("missing_end_time")
        if end_ms > latest:  # e.g. a client that logged microseconds
            raise BadData("end_in_future", f"end_time {end_ms}")
        if end_ms < start_ms:
            raise BadData("end_before_start")
    alive = [t for t in (_as_ms(v) for v in logged_at) if t is not None and start_ms <= t <= latest]
    last_alive = max(alive, default=start_ms)
    if status == ACCRUING_STATUS and now_ms - last_alive > rules.stale_after_ms:
        status, end_ms = STALE, last_alive
    elif status in CLEANED_UP and end_ms is not None and end_ms - last_alive > rules.stale_after_ms:
        end_ms = last_alive  # crashed long before the clean-up: costed to its last sign of life
    rate = rules.pricer.rate(tags, params)
    months = rules.month_costs(rate.hourly, start_ms, end_ms) if end_ms is not None else ()
    return RunFacts(
        run_id=run_id,
        experiment_id=_shared(experiment_id),
        run_name=(run_name or tags.get("mlflow.runName") or run_id)[:200],
        status=_shared(status),
        start_ms=start_ms,
        end_ms=end_ms,
        hourly=_shared(rate.hourly),
        price_source=_shared(rate.source),
        instance_type=_shared(rate.instance_type),
        estimator=_shared(rules.estimator(tags, params)),
        start_local_hour=rules.local_hour(start_ms),
        allocation=_shared(rules.allocation(tags, workspace)),
        month=_shared(months[0][0]) if len(months) == 1 else "",
        month_split=tuple((_shared(m), nano) for m, nano in months) if len(months) > 1 else (),
        parent_run_id=str(tags.get(PARENT_TAG) or "").strip()[:64] or None,
        last_alive_ms=last_alive,
        catalog_provider=_shared(rate.provider),
        join_values=rules.join_values(tags),
        system=system_metrics(metrics or {}),
    )


_SHARED: dict[object, object] = {}
MAX_SHARED = 100_000  # distinct values kept; past it the table starts over (values stay correct, only less shared)


def _shared(value: Any) -> Any:
    """One object for equal values that many runs repeat (experiment ids, statuses, prices, instance
    types, estimators, allocation values, months): the ledger holds 100,000s of runs, and each run
    would otherwise hold its own copies, as MLflow's replies decode them."""
    if value is None:
        return None
    found = _SHARED.get(value)
    if found is None:
        if len(_SHARED) >= MAX_SHARED:
            _SHARED.clear()
        found = _SHARED[value] = value
    return found


# MLflow's system metrics (log_system_metrics) that say how busy a run's machine was, in percent:
# system/gpu_<i>_utilization_percentage, system/gpu_<i>_memory_usage_percentage,
# system/cpu_utilization_percentage; multi-node runs log them under system/<node>/...
SYSTEM_KEY = re.compile(r"^system/(?:[^/]+/)?(gpu_\d+_utilization_percentage|gpu_\d+_memory_usage_percentage|"
                        r"cpu_utilization_percentage)$")
MAX_SYSTEM_KEYS = 64  # GPUs x nodes a run may report; beyond that it is not read


def system_metrics(metrics: Mapping[str, object]) -> tuple[tuple[str, float], ...]:
    """The utilization system metrics of a run and their latest values (0-100), sorted; odd values left out."""
    out = []
    for key, value in metrics.items():
        if isinstance(key, str) and SYSTEM_KEY.match(key):
            try:
                number = float(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                continue
            if math.isfinite(number):
                out.append((key, min(100.0, max(0.0, number))))
    return tuple(sorted(out)[:MAX_SYSTEM_KEYS])


def facts_of(rules: RunRules, run: Any, now_ms: int, workspace: str | None = None) -> RunFacts:
    """Facts of an MLflow run entity (of `workspace`, on a server with workspaces). Whatever is wrong
    with its data raises BadData, never anything else: one odd run is skipped and counted, it never
    fails a poll or a report."""
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
            # the latest value of each metric comes with its time in what search_runs returns
            # already: no request per run (RunData keeps them as Metric objects)
            logged_at=[m.timestamp for m in getattr(data, "_metric_objs", None) or ()],
            metrics=getattr(data, "metrics", None) or {},
            workspace=workspace,
        )
    except BadData:
        raise
    except Exception as exc:  # noqa: BLE001 - a check we did not foresee: skip the run, say why
        raise BadData("invalid_data", f"{type(exc).__name__}: {exc}") from exc


NESTED_RULES = ("auto", "within_parent", "separate")


def on_parents_machine(child: RunFacts, parent: RunFacts, rule: str = "auto") -> bool:
    """Whether a child run ran on its parent's machine, so that its cost is a share of the parent's.

    auto: unless it names a machine of its own: another instance type, or another hourly price
    (launchers copy the parent's instance_type to every trial, and pricing.default_hourly_cost
    prices untagged trials: neither makes a machine of its own)."""
    if rule == "separate":
        return False
    if rule == "within_parent":
        return True
    other_type = child.instance_type is not None and child.instance_type != parent.instance_type
    other_price = child.price_source != "default" and child.hourly != parent.hourly
    return not (other_type or other_price)


def shares(parent: RunFacts, children: list[RunFacts], now_ms: int) -> dict[str, int]:
    """Cost in nano of each child run on its parent's machine: its running time at the parent's rate,
    scaled down where children overlap so that together they never exceed the parent's hours."""
    busy = sum(child.duration_ms(now_ms) for child in children)
    own = parent.duration_ms(now_ms)
    out = {}
    for child in children:
        ms = child.duration_ms(now_ms)
        out[child.run_id] = cost_nano(parent.hourly, ms if busy <= own else ms * own // busy)
    return out
