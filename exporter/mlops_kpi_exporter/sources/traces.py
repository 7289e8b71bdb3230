"""The traces source: GenAI spend (LLM tokens, cost, latency) from the MLflow 3 traces of the
watched experiments, kept in step with MLflow.

Its parts live apart: what one trace says (trace_facts.py: pure parsing), what its tokens cost
(token_pricing.py), the books it is folded into (genai_books.py), the MLflow trace APIs that are
read (sources/trace_store.py), the families shown (metrics/genai.py). This module is the sync.

The spans of a trace that recorded tokens or a cost are read once, when it has ended, in batches
(up to `mlflow.concurrency` of them in flight while the search goes on), and reduced to one entry per
LLM call (only spans name the model). What is kept is sums per
experiment (genai_books.py `ExperimentSpend`), never the traces: plus the traces still IN_PROGRESS
and those that ended within the look-back window (`recent`), so that the next poll neither misses
nor counts one twice.

Each poll reads only what can have changed: traces that ended since the last poll (less
`mlflow.watermark_overlap`), the traces IN_PROGRESS, and those we knew in progress that left that
state. Every `traces.resync_interval` the books are reconciled with MLflow (deleted traces, traces
written late): `incremental` recounts every experiment from scratch; `aggregate` asks the server's
aggregation per experiment (traces by state and their tokens, up to the look-back window) and
recounts only the experiments that differ; `auto` is `aggregate` when the server answers, else
`incremental`. A recount is built aside and swapped in whole.

A trace's cost is per LLM call: MLflow's recorded cost, else its tokens x the config's price of its
model, else the shipped catalog's (data/token_prices.yaml), else unpriced (tokens counted, no cost).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from mlflow.exceptions import MlflowException
from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter.bad_data import BadData
from mlops_kpi_exporter.config import Config
from mlops_kpi_exporter.extras import is_database_uri
from mlops_kpi_exporter.facts import GenaiFacts
from mlops_kpi_exporter.genai_books import ExperimentSpend, fold
from mlops_kpi_exporter.resolved import resolve
from mlops_kpi_exporter.metrics.genai import GenaiView, families
from mlops_kpi_exporter.mlflow_client import MlflowConnection, MlflowReader, is_data_error
from mlops_kpi_exporter.sources.run_sync import RunSync
from mlops_kpi_exporter.sources.span_reads import fold_ahead
from mlops_kpi_exporter.sources.trace_store import SEARCH_PAGE, TraceStore, each_once, is_unsupported
from mlops_kpi_exporter.trace_facts import end_ms, facts_of, needs_spans, recorded_total_tokens, state_of

log = logging.getLogger(__name__)

LOGGED_SKIPS = 10_000  # trace ids remembered so that a skip is logged once, not at every recount
@dataclass(frozen=True)
class Recent:
    """A trace counted (or skipped) that ended within the look-back window."""

    experiment_id: str
    end_ms: int
    request_ms: int
    state: str
    total_tokens: int


@dataclass
class PollReport:
    mode: str  # aggregate | incremental: how resyncs reconcile
    first: bool  # the first poll: everything read
    new_traces: int  # ended traces counted (or skipped) this poll
    traces: int  # ended traces counted in the books
    in_progress: int
    skipped: int
    experiments: int
    span_reads: int  # traces whose spans were read
    checked: int = 0  # experiments checked against the server's aggregation
    recounted: int = 0  # experiments recounted from scratch
    resync: bool = False

    def summary(self) -> str:
        head = "first poll, every trace read" if self.first else f"{self.new_traces} new traces"
        text = (f"{self.mode}: {head}; {self.traces} traces ({self.in_progress} in progress, {self.skipped} "
                f"skipped) in {self.experiments} experiments; spans of {self.span_reads} traces read")
        if self.resync and not self.first:
            what = f"{self.checked} experiments checked against the server, " if self.mode == "aggregate" else ""
            text += f"; resync: {what}{self.recounted} recounted"
        elif self.recounted and not self.first:
            text += f"; {self.recounted} new experiments read"
        return text


@dataclass
class _Read:
    """A recount built aside, swapped in whole when complete."""

    spend: dict[str, ExperimentSpend]
    in_progress: dict[str, tuple[str, int]] = field(default_factory=dict)
    recent: dict[str, Recent] = field(default_factory=dict)
    counted: int = 0
    span_reads: int = 0


class TraceSource(MlflowReader):
    name = "traces"

    def __init__(self, config: Config, mlflow: MlflowConnection, clock=time.time):
        super().__init__(config, mlflow)
        self.cfg = config.traces
        self.config = config
        self.interval = self.cfg.poll_interval
        self.overlap_ms = int(config.mlflow.watermark_overlap * 1000)
        self.clock = clock
        self.rules = resolve(config).trace_rules
        self.span_workers = 0 if is_database_uri(mlflow.tracking_uri) else config.mlflow.concurrency
        # the client opens lazily (and tests swap it); each call is made in its experiment's workspace
        self.trace_store = TraceStore(lambda: self.client, lambda exp_id: self.watch.workspace_of.get(exp_id))
        self.watch = RunSync(config, mlflow, rules=None)  # type: ignore[arg-type] - only its experiment matching
        self.spend: dict[str, ExperimentSpend] | None = None
        self.experiments: dict[str, str] = {}
        self.created: dict[str, Any] = {}
        self.in_progress: dict[str, tuple[str, int]] = {}  # trace id -> (experiment id, request ms)
        self.recent: dict[str, Recent] = {}
        self.watermark_ms: int | None = None
        self.last_resync: float | None = None
        self.aggregation: bool | None = None  # the server answers traces/metrics (None: not asked yet)
        self.unsupported: str = ""  # why the server has no traces API, once seen
        self._logged: dict[str, None] = {}
        self.last_report: PollReport | None = None
        self._facts: GenaiFacts | None = None

    # -- the poller's interface --------------------------------------------------------------------
    @property
    def workspaces(self) -> tuple[str, ...] | None:
        return self.watch.workspaces

    def check(self) -> str:
        experiments = self._matching()
        try:
            self.trace_store.probe(sorted(experiments))
        except MlflowException as exc:
            if is_unsupported(exc):
                return "this MLflow server has no traces API: nothing to count"
            raise
        mode = self._mode(list(experiments))
        return f"traces API answers; {len(experiments)} watched experiments; mode {mode}"

    def poll(self) -> tuple[list[Metric], str]:
        now = self.clock()
        now_ms = int(now * 1000)
        experiments = self._matching()
        created = {e: self.watch._created.get(e) for e in experiments}  # the runs' matching records them
        try:
            report = self._sync(experiments, created, now, now_ms)
        except MlflowException as exc:
            if not is_unsupported(exc):
                raise
            if not self.unsupported:
                log.warning("MLflow at %s has no traces API (%s): the traces source counts nothing until it has",
                            self.mlflow.uri_for_humans, getattr(exc, "error_code", type(exc).__name__))
            self.unsupported = str(getattr(exc, "error_code", "") or type(exc).__name__)
            self.spend, self.watermark_ms = None, None
            self._facts = GenaiFacts(as_of_ms=now_ms, month_cost={})  # known: no GenAI spend to add
            return [], f"no traces API on this MLflow server ({self.unsupported}): nothing counted"
        self.unsupported = ""
        self.experiments, self.created, self.watermark_ms = experiments, created, now_ms
        floor = now_ms - self.overlap_ms
        self.recent = {tid: r for tid, r in self.recent.items() if r.end_ms >= floor}
        self.last_report = report
        self._facts = GenaiFacts(as_of_ms=now_ms, month_cost={
            experiments.get(e, e): dict(s.month_cost) for e, s in (self.spend or {}).items()},
            workspaces=self.workspaces is not None)
        return families(self.view(now_ms)), report.summary()

    def facts(self) -> GenaiFacts | None:
        """What the derived stage joins (budgets over GenAI); None before a good poll."""
        return self._facts

    def view(self, now_ms: int) -> GenaiView:
        in_progress = Counter(exp for exp, _ in self.in_progress.values())
        return GenaiView(
            spend=self.spend or {}, experiments=self.experiments, in_progress=in_progress,
            currency=self.config.pricing.currency, month=self.rules.month(now_ms), timezone=self.rules.timezone,
            duration_buckets=self.rules.buckets, max_models=self.cfg.max_models, breakdown=self.cfg.breakdown,
            max_breakdown_values=self.cfg.max_breakdown_values, last_resync=self.last_resync,
        )

    # -- for other parts of the exporter ------------------------------------------------------------
    def spend_between(self, start_ms: int, end_ms: int) -> tuple[dict[str, str], dict[str, ExperimentSpend]]:
        """(experiment id -> name, experiment id -> spend) of the traces started in [start_ms, end_ms) of the
        watched experiments, read afresh (for `report`); the source's own books are left alone."""
        experiments = self._matching()
        window = f"trace.timestamp_ms >= {int(start_ms)} AND trace.timestamp_ms < {int(end_ms)}"
        return experiments, self._recount(sorted(experiments), int(end_ms), window).spend

    # -- syncing -----------------------------------------------------------------------------------
    def _matching(self) -> dict[str, str]:
        return self.watch.matching_experiments()

    def _sync(self, experiments: dict[str, str], created: dict[str, Any], now: float, now_ms: int) -> PollReport:
        first = self.spend is None or self.watermark_ms is None
        due = first or self.last_resync is None or now - self.last_resync >= self.cfg.resync_interval
        mode = self._mode(list(experiments)) if due else ("aggregate" if self.aggregation and self.cfg.mode != "incremental"
                                                           else "incremental")
        new_traces, span_reads, checked = 0, 0, 0
        if first:
            self.spend, self.in_progress, self.recent = {}, {}, {}
            recount = sorted(experiments)
        else:
            assert self.spend is not None
            gone = [e for e in self.spend if e not in experiments or created.get(e) != self.created.get(e)]
            self._forget(gone)
            known = sorted(e for e in experiments if e in self.spend)
            recount = sorted(e for e in experiments if e not in self.spend)  # newly watched (or replaced)
            if due and mode == "incremental":
                recount = sorted(experiments)  # the resync recounts all: no need to read the changes first
            else:
                new_traces, span_reads = self._incremental(known, now_ms)
                if due:
                    checked = len(known)
                    recount = sorted(set(recount) | self._differ(known, now_ms))
        read = self._recount(recount, now_ms) if recount else None
        if read is not None:
            self._forget(recount)
            assert self.spend is not None
            self.spend.update(read.spend)
            self.in_progress.update(read.in_progress)
            self.recent.update(read.recent)
            span_reads += read.span_reads
            if first:
                new_traces = read.counted
        if due:
            self.last_resync = now
        assert self.spend is not None
        return PollReport(
            mode=mode, first=first, new_traces=new_traces,
            traces=sum(sum(s.traces.values()) for s in self.spend.values()), in_progress=len(self.in_progress),
            skipped=sum(sum(s.skipped.values()) for s in self.spend.values()), experiments=len(experiments),
            span_reads=span_reads, checked=checked, recounted=len(recount) if not first else 0, resync=due,
        )

    def _forget(self, experiment_ids: Iterable[str]) -> None:
        ids = set(experiment_ids)
        if not ids:
            return
        for exp_id in ids:
            (self.spend or {}).pop(exp_id, None)
        self.in_progress = {t: v for t, v in self.in_progress.items() if v[0] not in ids}
        self.recent = {t: r for t, r in self.recent.items() if r.experiment_id not in ids}

    def _mode(self, experiment_ids: list[str]) -> str:
        """aggregate or incremental, as configured; auto asks the server once whether it aggregates."""
        if self.cfg.mode == "incremental":
            return "incremental"
        if self.aggregation is None and experiment_ids:
            try:
                self.trace_store.count_by_state(experiment_ids[0], None)
                self.aggregation = True
            except MlflowException as exc:
                if not is_unsupported(exc):
                    raise
                self.aggregation = False
                level = logging.WARNING if self.cfg.mode == "aggregate" else logging.INFO
                log.log(level, "MLflow at %s does not aggregate traces (traces/metrics: %s): resyncs recount "
                        "every experiment (traces.mode incremental)", self.mlflow.uri_for_humans,
                        getattr(exc, "error_code", type(exc).__name__))
        return "aggregate" if self.aggregation else "incremental"

    def _incremental(self, known: list[str], now_ms: int) -> tuple[int, int]:
        """Fold the traces that ended since the last poll; follow the ones in progress. Each folded
        trace is remembered in `recent` as it is folded, so a poll that fails half-way and is retried
        never counts one twice."""
        assert self.watermark_ms is not None and self.spend is not None
        if not known:
            return 0, 0
        since = self.watermark_ms - self.overlap_ms
        found: dict[str, Any] = {}
        for filter_string in (f"trace.end_time_ms >= {since}", "trace.status = 'IN_PROGRESS'"):
            for info in self.trace_store.search(known, filter_string):
                found[info.trace_id] = info
        watched = set(known)
        missing = [t for t, (exp, _) in self.in_progress.items() if exp in watched and t not in found]
        if missing:
            fetched = {info.trace_id: info for info in self.trace_store.trace_infos(
                [(t, self.in_progress[t][0]) for t in missing])}
            for trace_id in missing:
                if trace_id in fetched:
                    found[trace_id] = fetched[trace_id]
                else:
                    self.in_progress.pop(trace_id, None)  # deleted while in progress
        read = _Read(spend=self.spend, in_progress=self.in_progress, recent=self.recent)
        new = (info for trace_id, info in found.items()
               if str(info.experiment_id) in watched and trace_id not in self.recent)
        self._fold_all(self._ended(new, read), read, since)
        return read.counted, read.span_reads

    def _recount(self, experiment_ids: list[str], now_ms: int, filter_string: str | None = None) -> _Read:
        """Every trace of the experiments (that the filter keeps), read afresh into books of their own."""
        read = _Read(spend={e: ExperimentSpend() for e in experiment_ids})
        remember_from = now_ms - self.overlap_ms  # what the next poll's look-back will find again
        self._fold_all(self._ended(each_once(self.trace_store.search(experiment_ids, filter_string)), read),
                       read, remember_from)
        return read

    def _ended(self, infos: Iterable[Any], read: _Read) -> Iterator[list[Any]]:
        """The ended traces of `infos`, in chunks of up to SEARCH_PAGE (each trace sorted by _take)."""
        pending: list[Any] = []
        for info in infos:
            self._take(info, read, pending)
            if len(pending) >= SEARCH_PAGE:
                yield pending
                pending = []
        if pending:
            yield pending

    def _fold_all(self, chunks: Iterable[list[Any]], read: _Read, remember_from: int) -> None:
        """Fold chunks of ended traces in order, their spans read ahead (span_reads.py)."""
        def reads(chunk: list[Any]) -> tuple[int, list[Callable[[], Any]]]:
            wanted = [info for info in chunk if state_of(info) in ("OK", "ERROR") and needs_spans(info)]
            return len(wanted), self.trace_store.span_reads(wanted)

        fold_ahead(chunks, reads, lambda chunk, count, spans: self._fold_chunk(chunk, count, spans, read, remember_from),
                   self.span_workers)

    def _take(self, info: Any, read: _Read, pending: list[Any]) -> None:
        """Sort one trace info: in progress (followed), or ended (folded with the next batch)."""
        exp_id = str(info.experiment_id)
        if exp_id not in read.spend:
            return
        if state_of(info) == "IN_PROGRESS":
            request = info.request_time if isinstance(info.request_time, int) else 0
            read.in_progress[info.trace_id] = (exp_id, request)
            return
        read.in_progress.pop(info.trace_id, None)
        pending.append(info)

    def _fold_chunk(self, chunk: list[Any], span_reads: int, spans: dict[str, list[Any] | None], read: _Read,
                    remember_from: int) -> None:
        """Fold a chunk of ended traces once every read of its spans has come; each trace is remembered in
        `recent` (when it ended at or after `remember_from`) as it is folded, never before."""
        read.span_reads += span_reads
        for info in chunk:
            exp_id = str(info.experiment_id)
            spend = read.spend[exp_id]
            state, tokens = state_of(info), recorded_total_tokens(info)
            try:
                fold(spend, facts_of(info, spans.get(info.trace_id)), self.rules)
                read.counted += 1
            except BadData as exc:
                self._skip(spend, info, exc.reason, str(exc))
            except Exception as exc:  # noqa: BLE001 - one odd trace is skipped, never a failed poll
                if not is_data_error(exc):
                    raise
                self._skip(spend, info, "invalid_data", f"{type(exc).__name__}: {exc}")
            spend.seen[state] += 1
            spend.seen_tokens[state] += tokens
            request = info.request_time if isinstance(info.request_time, int) else 0
            if end_ms(info) >= remember_from:
                read.recent[info.trace_id] = Recent(exp_id, end_ms(info), request, state, tokens)

    def _skip(self, spend: ExperimentSpend, info: Any, reason: str, detail: str) -> None:
        spend.skipped[reason] += 1
        if info.trace_id not in self._logged:
            self._logged[info.trace_id] = None
            if len(self._logged) > LOGGED_SKIPS:
                self._logged.pop(next(iter(self._logged)))
            level = logging.WARNING if reason == "invalid_data" else logging.INFO
            log.log(level, "skipping trace %s of experiment %s: %s (%s)", info.trace_id, info.experiment_id, reason,
                    detail[:200])

    def _differ(self, known: list[str], now_ms: int) -> set[str]:
        """The experiments whose books differ from the server's aggregation, for traces started before
        the look-back window (the later ones may be written as we ask): by state, and their tokens."""
        cutoff = now_ms - self.overlap_ms
        late: dict[str, Counter[str]] = defaultdict(Counter)
        late_tokens: dict[str, Counter[str]] = defaultdict(Counter)
        for r in self.recent.values():
            if r.request_ms >= cutoff:
                late[r.experiment_id][r.state] += 1
                late_tokens[r.experiment_id][r.state] += r.total_tokens
        running: dict[str, Counter[str]] = defaultdict(Counter)
        for exp_id, request in self.in_progress.values():
            if request < cutoff:
                running[exp_id]["IN_PROGRESS"] += 1
        differ = set()
        assert self.spend is not None
        for exp_id in known:
            spend = self.spend[exp_id]
            mine = +(spend.seen - late[exp_id] + running[exp_id])
            theirs = +self.trace_store.count_by_state(exp_id, cutoff - 1)
            mine_tokens = +(spend.seen_tokens - late_tokens[exp_id])
            theirs_tokens = Counter()
            for state in sorted(s for s in theirs if s != "IN_PROGRESS"):
                theirs_tokens[state] = self.trace_store.tokens_of_state(exp_id, state, cutoff - 1)
            if mine != theirs or mine_tokens != +theirs_tokens:
                log.info("traces of experiment %s differ from the server's aggregation (%s, %s tokens; server %s, %s "
                         "tokens): recounting it", self.experiments.get(exp_id, exp_id), dict(mine),
                         dict(mine_tokens), dict(theirs), dict(theirs_tokens))
                differ.add(exp_id)
        return differ
