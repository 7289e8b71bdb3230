"""A report's figures of one period: the runs' cost and hours inside it, streamed page by page into
running totals (memory stays bounded whatever the size of the store), and the rows of the per-run CSV.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from mlops_kpi_exporter.bad_data import BadData
from mlops_kpi_exporter.runs import (
    MS_PER_HOUR,
    NANO,
    UNTAGGED,
    WORKSPACE_DIMENSION,
    RunFacts,
    cost_nano,
    facts_of,
    on_parents_machine,
)

if TYPE_CHECKING:
    from mlops_kpi_exporter.sources.run_sync import RunSync
TOP_RUNS = 15
MAX_SYSTEM_RUNS = 5_000  # runs whose system metrics a report reads (one request per metric and 100 runs)
STRIP_POINTS = 300  # run-time points kept per experiment (a uniform sample of them)


@dataclass
class Period:
    start_ms: int
    end_ms: int

    @property
    def hours(self) -> float:
        return (self.end_ms - self.start_ms) / MS_PER_HOUR

    def previous(self) -> Period:
        length = self.end_ms - self.start_ms
        return Period(self.start_ms - length, self.start_ms)

    def label(self) -> str:
        fmt = "%Y-%m-%d %H:%M UTC"
        return f"{utc_of(self.start_ms).strftime(fmt)} to {utc_of(self.end_ms).strftime(fmt)}"


def utc_of(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


@dataclass
class Figures:
    """Running totals over the runs of one period, all money in nano-units."""

    period: Period
    total: int = 0
    runs: int = 0
    skipped: Counter = field(default_factory=Counter)
    by_experiment: Counter = field(default_factory=Counter)
    by_status: Counter = field(default_factory=Counter)
    by_tag: dict[str, Counter] = field(default_factory=dict)
    estimators: Counter = field(default_factory=Counter)
    start_hours: Counter = field(default_factory=Counter)
    run_hours: dict[str, list[float]] = field(default_factory=dict)
    _seen_per_experiment: Counter = field(default_factory=Counter)
    top: list = field(default_factory=list)  # heap of (cost, run_id, row)
    system: list = field(default_factory=list)  # (facts, cost in the period) of runs with system metrics
    system_left_out: int = 0  # beyond MAX_SYSTEM_RUNS

    def add(self, row: dict[str, Any], cost: int, tags: dict[str, str], rng: random.Random) -> None:
        """A run of the period; a child on its parent's machine (row machine == "parent") counts as a
        run, and its cost (a share of its parent's) is in its row, but not a second time in the totals."""
        exp = row["experiment"]
        self.runs += 1
        if row["machine"] == "parent":
            cost = 0
        self.total += cost
        self.by_experiment[exp] += cost
        self.by_status[row["status"]] += cost
        for tag, value in tags.items():
            self.by_tag.setdefault(tag, Counter())[value] += cost
        self.estimators[row["estimator"]] += 1
        self.start_hours[row["start_hour"]] += 1
        # a uniform sample of run times per experiment (reservoir): the strip chart in bounded memory
        self._seen_per_experiment[exp] += 1
        sample = self.run_hours.setdefault(exp, [])
        if len(sample) < STRIP_POINTS:
            sample.append(row["hours"])
        else:
            slot = rng.randrange(self._seen_per_experiment[exp])
            if slot < STRIP_POINTS:
                sample[slot] = row["hours"]
        entry = (cost, row["run_id"], row)
        if not cost:
            return
        if len(self.top) < TOP_RUNS:
            heapq.heappush(self.top, entry)
        elif entry > self.top[0]:
            heapq.heapreplace(self.top, entry)


def period_cost(facts, period: Period, now_ms: int) -> tuple[int, float]:
    """Cost (nano) and hours of a run inside the period; a running run counts up to now."""
    end = facts.end_ms if facts.end_ms is not None else (now_ms if facts.status == "RUNNING" else facts.start_ms)
    overlap = max(0, min(end, period.end_ms) - max(facts.start_ms, period.start_ms))
    return cost_nano(facts.hourly, overlap), overlap / MS_PER_HOUR


def collect(runs: RunSync, period: Period, now_ms: int, rows_out=None, seed: int = 1) -> Figures:
    """Stream every run of the watched experiments that ran inside the period into Figures.

    Child runs wait for the end of the stream (their cost depends on their parent's machine, and
    parents come after their children, newest first); only they and their parents are kept."""
    experiments = runs.matching_experiments()
    figures = Figures(period)
    rng = random.Random(seed)
    children: list[RunFacts] = []
    parents: dict[str, RunFacts] = {}
    wanted: set[str] = set()  # parents of the children seen so far

    def add(facts: RunFacts, machine: str = "own", cost_hours: tuple[int, float] | None = None) -> None:
        cost, hours = cost_hours or period_cost(facts, period, now_ms)
        if hours <= 0 and not (period.start_ms <= facts.start_ms < period.end_ms):
            return  # ran entirely outside the period
        row = _row(facts, experiments, hours, cost, machine)
        tags = dict(zip(runs.rules.allocation_tags, facts.allocation))
        if runs.workspaces is not None:  # a server with workspaces: the report splits by them unasked
            tags.setdefault(WORKSPACE_DIMENSION, runs.workspace_of.get(facts.experiment_id) or UNTAGGED)
        figures.add(row, cost, tags, rng)
        if facts.system and cost:
            if len(figures.system) < MAX_SYSTEM_RUNS:
                figures.system.append((facts, cost))
            else:
                figures.system_left_out += 1
        if rows_out is not None:
            rows_out.writerow({k: row[k] for k in CSV_FIELDS})

    for run in runs.search(experiments, f"attributes.start_time < {period.end_ms}"):
        try:
            facts = facts_of(runs.rules, run, now_ms, runs.workspace_of_run(run))
        except BadData as exc:
            figures.skipped[exc.reason] += 1
            continue
        if facts.run_id in wanted:
            parents[facts.run_id] = facts
        if facts.parent_run_id:
            children.append(facts)
            wanted.add(facts.parent_run_id)
        else:
            add(facts)
    for facts in children:  # a child may be a parent too (nested sweeps)
        parents.setdefault(facts.run_id, facts)
    by_parent: dict[str, list[RunFacts]] = {}
    for child in children:
        parent = parents.get(child.parent_run_id) or _watched_run(runs, child, experiments, now_ms)
        if parent is not None:
            parents[parent.run_id] = parent
        if parent is None or not on_parents_machine(child, parent, runs.nested):
            add(child)
        else:
            by_parent.setdefault(parent.run_id, []).append(child)
    for parent_id, within in by_parent.items():
        parent = parents[parent_id]
        own, busy = parent.duration_ms(now_ms), sum(c.duration_ms(now_ms) for c in within)
        for child in within:
            _, hours = period_cost(child, period, now_ms)
            ms = int(hours * MS_PER_HOUR)
            add(child, "parent", (cost_nano(parent.hourly, ms if busy <= own else ms * own // busy), hours))
    return figures


def _watched_run(runs: RunSync, child: RunFacts, experiments: dict[str, str], now_ms: int) -> RunFacts | None:
    """A child's parent the stream did not bring (it ran before the period): looked up by id, in the
    child's workspace (a run's parent lives in the same workspace; another's would read as missing)."""
    run = runs.refetch(child.parent_run_id, child.experiment_id) if child.parent_run_id else None
    if run is None or run.info.experiment_id not in experiments:
        return None
    try:
        return facts_of(runs.rules, run, now_ms, runs.workspace_of_run(run))
    except BadData:
        return None


def _row(facts: RunFacts, experiments: dict[str, str], hours: float, cost: int, machine: str) -> dict[str, Any]:
    return {
        "run_id": facts.run_id, "run_name": facts.run_name,
        "experiment": experiments.get(facts.experiment_id, facts.experiment_id),
        "experiment_id": facts.experiment_id, "status": facts.status, "start": utc_of(facts.start_ms).isoformat(),
        "end": utc_of(facts.end_ms).isoformat() if facts.end_ms else "", "hours": round(hours, 6),
        "hourly": facts.hourly, "cost": cost / NANO, "instance_type": facts.instance_type or "",
        "estimator": facts.estimator, "price_source": facts.price_source, "start_hour": facts.start_local_hour,
        "parent_run_id": facts.parent_run_id or "", "machine": machine,
    }


CSV_FIELDS = ["run_id", "run_name", "experiment", "status", "start", "end", "hours", "hourly", "cost",
              "instance_type", "estimator", "price_source", "parent_run_id", "machine"]
