"""The runs of the watched experiments, kept in step with MLflow in a RunLedger.

The first sync (and every `resync_interval`) pages through all runs of the watched experiments, a
few searches in parallel (mlflow.concurrency), and drops what it did not see. In between, a sync asks
only for what can have changed: runs RUNNING now, runs that ended or started since the last sync
(minus an overlap for late clocks), the full history of newly watched experiments, and, one by one,
the open runs we knew that have since disappeared from the RUNNING set. Its cost follows the number
of changes, not the size of the history. An incremental sync reads everything before the ledger is
touched: a failed one leaves it whole (the full sync: see _full_sync).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

from mlops_kpi_exporter.config import Config
from mlops_kpi_exporter.ledger import RunLedger
from mlops_kpi_exporter.extras import is_database_uri
from mlops_kpi_exporter.mlflow_client import (
    MlflowConnection,
    MlflowReader,
    is_not_found,
    pages,
    pages_in_parallel,
    paged,
)
from mlops_kpi_exporter.bad_data import BadData
from mlops_kpi_exporter.mlflow_workspaces import discover, matches, qualified, within
from mlops_kpi_exporter.runs import RunFacts, RunRules, facts_of

log = logging.getLogger(__name__)

EXPERIMENT_CHUNK = 100  # experiment ids per search_runs call


@dataclass(frozen=True)
class PollReport:
    full_sync: bool
    fetched: int
    changed: int
    runs: int
    skipped: int
    experiments: int
    stale: int = 0  # runs left RUNNING with no sign of life

    def summary(self) -> str:
        kind = "full sync" if self.full_sync else "incremental"
        return (
            f"{kind}: {self.fetched} runs fetched, {self.changed} changed; "
            f"{self.runs} runs ({self.skipped} skipped, {self.stale} stale) in {self.experiments} experiments"
        )


@dataclass
class _Changes:
    """What an incremental sync read, before it touches the ledger."""

    fetched: dict[str, Any] = field(default_factory=dict)  # run_id -> run
    vanished: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)  # experiments no longer watched (or replaced)


class RunSync(MlflowReader):
    def __init__(self, config: Config, mlflow: MlflowConnection, rules: RunRules,
                 on_costed: Callable[[RunFacts], None] | None = None,
                 on_experiment_gone: Callable[[str], None] | None = None):
        super().__init__(config, mlflow)
        self.cfg = config.mlflow
        self.buckets = (tuple(config.runs.duration_buckets), tuple(config.runs.cost_buckets))
        self.nested = config.runs.nested
        self.keep_recent = config.runs.max_run_series
        self.rules = rules
        self.on_costed = on_costed or (lambda facts: None)
        self.on_experiment_gone = on_experiment_gone or (lambda experiment_id: None)
        self.ledger: RunLedger | None = None
        self.experiments: dict[str, str] = {}  # id -> name of the watched experiments (workspace/name)
        # The server's workspaces that are read (None: it has none), and each watched experiment's.
        # Experiment ids are unique across workspaces; names are not, hence the qualified names.
        self.workspaces: tuple[str, ...] | None = None
        self.workspace_of: dict[str, str | None] = {}
        # id -> creation time, as listed now and as of the last sync: the same id created at another
        # time is another experiment (MLflow restarted on another database, a restored backup).
        self._created: dict[str, Any] = {}
        self._created_before: dict[str, Any] = {}
        self.watermark_ms: int | None = None
        self.last_full_sync: float | None = None

    # -- reading MLflow (public: the report reads runs the same way) -------------------------------
    def matching_experiments(self) -> dict[str, str]:
        """Id -> name of the watched experiments, as MLflow lists them now, in every watched workspace
        (listed anew each time: a new team's workspace is read from its first poll)."""
        self.workspaces = discover(self.client, self.cfg.workspaces, self.cfg.exclude_workspaces)
        out: dict[str, str] = {}
        where: dict[str, str | None] = {}
        shard = self.cfg.shard
        for workspace in self.workspaces if self.workspaces is not None else (None,):
            search = within(workspace, self.client.search_experiments)
            for exp in paged(search, view_type=ViewType.ACTIVE_ONLY, max_results=1000):
                name = qualified(workspace, exp.name)
                if self._watched(name) and (shard is None or shard.owns(exp.experiment_id, workspace)):
                    out[exp.experiment_id], where[exp.experiment_id] = name, workspace
                    self._created[exp.experiment_id] = exp.creation_time
        self.workspace_of = where
        return out

    def workspace_of_run(self, run: Any) -> str | None:
        """The workspace of a run entity's experiment (None on a server without workspaces)."""
        return self.workspace_of.get(getattr(getattr(run, "info", None), "experiment_id", None))

    def _watched(self, name: str) -> bool:
        on = self.workspaces is not None
        return matches(name, self.cfg.experiments, on) and not matches(name, self.cfg.exclude_experiments, on)

    def search(self, experiment_ids: Iterable[str], filter_string: str = "") -> Iterator[Any]:
        """Every active run of the experiments that matches the filter, in no particular order."""
        for _, page in self._search_pages(experiment_ids, (filter_string,)):
            yield from page

    def _search_pages(self, experiment_ids: Iterable[str], filters: tuple[str, ...]) -> Iterator[tuple[int, Any]]:
        """(index of the filter, page) of every active run of the experiments matching each filter.

        Up to mlflow.concurrency searches are in flight (mlflow_client.pages_in_parallel). A search
        names at most EXPERIMENT_CHUNK experiments; when there are fewer searches than that
        concurrency, the experiments are dealt round-robin into more of them, so that one large
        read (the full sync) is shared between the workers too, and each of MLflow's deep-offset
        pages sorts only its part of the history."""
        by_workspace: dict[str | None, list[str]] = {}  # a search reaches one workspace
        for exp_id in sorted(experiment_ids):
            by_workspace.setdefault(self.workspace_of.get(exp_id), []).append(exp_id)
        workers = 0 if is_database_uri(self.mlflow.tracking_uri) else self.cfg.concurrency
        streams, owners = [], []
        for index, filter_string in enumerate(filters):
            for workspace, ids in sorted(by_workspace.items(), key=lambda item: item[0] or ""):
                groups = max(math.ceil(len(ids) / EXPERIMENT_CHUNK), min(len(ids), math.ceil(workers / len(filters))))
                search = within(workspace, self.client.search_runs)
                for group in range(groups):
                    streams.append(partial(
                        pages, search, experiment_ids=ids[group::groups], filter_string=filter_string,
                        run_view_type=ViewType.ACTIVE_ONLY, max_results=self.cfg.page_size))
                    owners.append(index)
        for stream, page in pages_in_parallel(streams, workers):
            yield owners[stream], page

    def refetch(self, run_id: str, experiment_id: str) -> Any | None:
        """A run looked up by id (in its experiment's workspace); None when it is gone (deleted or purged)."""
        try:
            run = within(self.workspace_of.get(experiment_id), self.client.get_run)(run_id)
        except MlflowException as exc:
            if is_not_found(exc):
                return None
            raise
        return None if run.info.lifecycle_stage == "deleted" else run

    # -- syncing -----------------------------------------------------------------------------------
    def new_ledger(self) -> RunLedger:
        return RunLedger(*self.buckets, nested=self.nested, keep_recent=self.keep_recent)

    def sync(self, now: float) -> PollReport:
        now_ms = int(now * 1000)
        experiments = self.matching_experiments()
        due = self.last_full_sync is None or now - self.last_full_sync >= self.cfg.resync_interval
        if self.ledger is None or self.watermark_ms is None or due:
            report = self._full_sync(experiments, now_ms)
            self.last_full_sync = now
        else:
            report = self._incremental(experiments, now_ms)
        self.experiments = experiments
        self._created_before = dict(self._created)
        self.watermark_ms = now_ms
        assert self.ledger is not None
        return replace(report, stale=sum(self.ledger.stale_counts().values()))

    def _full_sync(self, experiments: dict[str, str], now_ms: int) -> PollReport:
        """Every run read again, applied as it comes (pages are not all held at once); the runs not
        seen are then dropped: deleted, purged, moved or of experiments no longer watched.

        The first sync builds a ledger aside and installs it only when complete. A resync updates
        the ledger in place, each run to what MLflow says of it now, and drops the unseen only once
        every page was read: a resync that fails half way leaves every figure true to some moment,
        and the next poll resyncs again."""
        ledger = self.ledger if self.ledger is not None else self.new_ledger()
        seen: set[str] = set()
        changed = 0
        for run in self.search(experiments):
            seen.add(run.info.run_id)
            changed += self._apply(ledger, run, now_ms)
        for run_id in [r for r in ledger.runs if r not in seen]:
            changed += ledger.remove(run_id)
        for run_id in [r for r in ledger.skipped if r not in seen]:
            changed += ledger.forget_skipped(run_id)
        self.ledger = ledger
        return PollReport(True, len(seen), changed, len(ledger), len(ledger.skipped), len(experiments))

    def _incremental(self, experiments: dict[str, str], now_ms: int) -> PollReport:
        ledger = self.ledger
        assert ledger is not None
        changes = self._read_changes(experiments, ledger)
        changed = 0
        for exp_id in changes.gone:
            ledger.remove_experiment(exp_id)
            self.on_experiment_gone(exp_id)
        for run in changes.fetched.values():
            changed += self._apply(ledger, run, now_ms)
        for run_id in changes.vanished:
            changed += ledger.remove(run_id)
        return PollReport(False, len(changes.fetched), changed, len(ledger), len(ledger.skipped), len(experiments))

    def _read_changes(self, experiments: dict[str, str], ledger: RunLedger) -> _Changes:
        assert self.watermark_ms is not None
        since = self.watermark_ms - int(self.cfg.watermark_overlap * 1000)
        before = self.experiments
        replaced = {e for e in experiments if e in before and self._created.get(e) != self._created_before.get(e)}
        known = [e for e in experiments if e in before and e not in replaced]
        changes = _Changes(gone=[e for e in before if e not in experiments or e in replaced])
        filters = ("attributes.status = 'RUNNING'", f"attributes.end_time >= {since}", f"attributes.start_time >= {since}")
        found: list[list[Any]] = [[] for _ in filters]
        for index, page in self._search_pages(known, filters):  # read in parallel,
            found[index].extend(page)
        for runs in found:  # merged in this order: a run both RUNNING and since ended keeps its ended self
            for run in runs:
                changes.fetched[run.info.run_id] = run
        for run in self.search(e for e in experiments if e not in known):  # new (or replaced): all of it
            changes.fetched[run.info.run_id] = run
        for run_id, known_run in [(r, f) for r, f in ledger.open_runs.items() if r not in changes.fetched]:
            run = self.refetch(run_id, known_run.experiment_id)
            if run is None or run.info.experiment_id not in experiments:
                changes.vanished.append(run_id)
            else:
                changes.fetched[run_id] = run
        return changes

    def _apply(self, ledger: RunLedger, run: Any, now_ms: int) -> bool:
        try:
            facts = facts_of(self.rules, run, now_ms, self.workspace_of_run(run))
        except BadData as exc:
            run_id, exp_id = getattr(run.info, "run_id", "?"), getattr(run.info, "experiment_id", "?")
            if ledger.skipped.get(run_id, (None, None))[1] != exc.reason:  # once per run and reason
                level = logging.WARNING if exc.reason == "invalid_data" else logging.INFO
                log.log(level, "skipping run %s of experiment %s: %s (%s)", run_id, exp_id, exc.reason, exc)
            return ledger.skip(run_id, exp_id, exc.reason)
        self.on_costed(facts)
        return ledger.upsert(facts)
