"""The MLflow source: polls runs and experiments into a RunLedger and renders cost and activity metrics.

The first poll (and every `resync_interval`) pages through all runs of the watched experiments and
builds a fresh ledger. In between, a poll asks only for what can have changed: runs RUNNING now,
runs that ended or started since the last poll (minus an overlap for late clocks), the full history
of newly watched experiments, and, one by one, the open runs we knew that have since disappeared
from the RUNNING set. Its cost follows the number of changes, not the size of the history.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from mlops_kpi_exporter.config import Config
from mlops_kpi_exporter.mlflow_client import MlflowConnection, MlflowReader, is_not_found, paged
from mlops_kpi_exporter.pricing import BadRunData, Pricer
from mlops_kpi_exporter.runs import (
    NANO,
    SKIP_REASONS,
    UNTAGGED,
    RunFacts,
    RunLedger,
    RunRules,
    facts_of,
)
from mlops_kpi_exporter.snapshot import POLLED_NOTE

log = logging.getLogger(__name__)

PRICE_SOURCES = ("tag", "config", "catalog", "default")
OTHER = "other"  # the estimator label that gathers everything beyond runs.max_estimators
EXPERIMENT_CHUNK = 100  # experiment ids per search_runs call
MAX_ARTIFACT_ENTRIES = 10_000  # per run: a run with more files is counted up to here
GB = 2**30  # cloud storage bills count a GB as 2^30 bytes
FORECAST_MIN_ELAPSED_MS = 86_400_000


def top_with_other(counts: dict[str, int], limit: int) -> Counter[str]:
    """The `limit` largest entries (ties by name), the rest summed as 'other': bounded labels, same total."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = Counter(dict(ranked[:limit]))
    for _, n in ranked[limit:]:
        kept[OTHER] += n
    return kept


@dataclass(frozen=True)
class PollReport:
    full_sync: bool
    fetched: int
    changed: int
    runs: int
    skipped: int
    experiments: int

    def summary(self) -> str:
        kind = "full sync" if self.full_sync else "incremental"
        return (
            f"{kind}: {self.fetched} runs fetched, {self.changed} changed; "
            f"{self.runs} runs ({self.skipped} skipped) in {self.experiments} experiments"
        )


class MlflowSource(MlflowReader):
    name = "mlflow"

    def __init__(self, config: Config, mlflow: MlflowConnection, clock=time.time):
        self.cfg = config.mlflow
        self.runs_cfg = config.runs
        self.currency = config.pricing.currency
        self.rules = RunRules(
            pricer=Pricer(config.pricing),
            estimator_keys=tuple(config.runs.estimator_keys),
            timezone=config.runs.timezone,
            allocation_tags=tuple(config.allocation.tags),
        )
        self.budgets = config.budgets
        self.allocation = config.allocation
        self.artifacts = config.artifacts
        self.storage_gb_month = config.pricing.storage_gb_month
        # Artifact sizes survive resyncs: a finished run's artifacts are listed once, then cached.
        self.artifact_bytes: dict[str, tuple[str, int]] = {}  # run_id -> (experiment_id, bytes)
        self.artifact_totals: Counter[str] = Counter()  # experiment_id -> bytes, kept in step
        self.artifact_pending: set[str] = set()
        self.artifact_errors = 0
        self.uri_for_humans = mlflow.uri_for_humans
        self.clock = clock
        super().__init__(config, mlflow)
        self.ledger: RunLedger | None = None
        self.experiments: dict[str, str] = {}  # id -> name of the watched experiments
        # id -> creation time, as listed now and as of the last poll: the same id created at another
        # time is another experiment (MLflow restarted on another database, a restored backup).
        self._created: dict[str, Any] = {}
        self._created_before: dict[str, Any] = {}
        self.watermark_ms: int | None = None
        self.last_full_sync: float | None = None
        self.last_report: PollReport | None = None

    # -- MLflow access ---------------------------------------------------------------------------
    def matching_experiments(self) -> dict[str, str]:
        """Id -> name of the watched experiments, as MLflow lists them now."""
        out: dict[str, str] = {}
        for exp in paged(self.client.search_experiments, view_type=ViewType.ACTIVE_ONLY, max_results=1000):
            if self._watched(exp.name):
                out[exp.experiment_id] = exp.name
                self._created[exp.experiment_id] = exp.creation_time
        return out

    def _watched(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, g) for g in self.cfg.experiments) and not any(
            fnmatch.fnmatchcase(name, g) for g in self.cfg.exclude_experiments
        )

    def search(self, experiment_ids: Iterable[str], filter_string: str = "") -> Iterator[Any]:
        """Every active run of the experiments that matches the filter, page by page."""
        ids = sorted(experiment_ids)
        for start in range(0, len(ids), EXPERIMENT_CHUNK):
            yield from paged(
                self.client.search_runs,
                experiment_ids=ids[start : start + EXPERIMENT_CHUNK],
                filter_string=filter_string,
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=self.cfg.page_size,
            )

    def _refetch(self, run_id: str) -> Any | None:
        """A run looked up by id; None when it is gone (deleted or purged)."""
        try:
            run = self.client.get_run(run_id)
        except MlflowException as exc:
            if is_not_found(exc):
                return None
            raise
        return None if run.info.lifecycle_stage == "deleted" else run

    # -- polling ---------------------------------------------------------------------------------
    def check(self) -> str:
        """Reach MLflow once and say what would be watched."""
        experiments = self.matching_experiments()
        names = ", ".join(sorted(experiments.values())[:10]) + (" ..." if len(experiments) > 10 else "")
        return f"{self.uri_for_humans}: reachable; {len(experiments)} experiments watched ({names or 'none'})"

    def poll(self) -> tuple[list[Metric], str]:
        now = self.clock()
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
        self.last_report = report
        summary = report.summary()
        if self.artifacts.enabled:
            summary += "; " + self._measure_artifacts()
        return self.families(now_ms), summary

    def _new_ledger(self) -> RunLedger:
        return RunLedger(tuple(self.runs_cfg.duration_buckets), tuple(self.runs_cfg.cost_buckets))

    def _full_sync(self, experiments: dict[str, str], now_ms: int) -> PollReport:
        ledger = self._new_ledger()  # built aside and swapped in whole: a failed sync changes nothing
        fetched = 0
        for run in self.search(experiments):
            fetched += 1
            self._apply(ledger, run, now_ms)
        self.ledger = ledger
        for run_id in [r for r in self.artifact_bytes if r not in ledger.runs]:
            self._forget_artifacts(run_id)
        return PollReport(True, fetched, fetched, len(ledger), len(ledger.skipped), len(experiments))

    def _incremental(self, experiments: dict[str, str], now_ms: int) -> PollReport:
        ledger = self.ledger
        assert ledger is not None and self.watermark_ms is not None
        since = self.watermark_ms - int(self.cfg.watermark_overlap * 1000)
        replaced = {e for e in experiments if e in self.experiments and self._created.get(e) != self._created_before.get(e)}
        known = [e for e in experiments if e in self.experiments and e not in replaced]
        added = [e for e in experiments if e not in self.experiments or e in replaced]
        gone = [e for e in self.experiments if e not in experiments or e in replaced]
        fetched: dict[str, Any] = {}
        for filter_string in (
            "attributes.status = 'RUNNING'",
            f"attributes.end_time >= {since}",
            f"attributes.start_time >= {since}",
        ):
            for run in self.search(known, filter_string):
                fetched[run.info.run_id] = run
        for run in self.search(added):
            fetched[run.info.run_id] = run
        vanished = []
        for run_id in [r for r in ledger.open_runs if r not in fetched]:
            run = self._refetch(run_id)
            if run is None or run.info.experiment_id not in experiments:
                vanished.append(run_id)
            else:
                fetched[run_id] = run
        # Everything was read; only now is the ledger touched, so a failed poll leaves it whole.
        changed = 0
        for exp_id in gone:
            ledger.remove_experiment(exp_id)
            for run_id in [r for r, (e, _) in self.artifact_bytes.items() if e == exp_id]:
                self._forget_artifacts(run_id)
        for run in fetched.values():
            changed += self._apply(ledger, run, now_ms)
        for run_id in vanished:
            changed += ledger.remove(run_id)
        return PollReport(False, len(fetched), changed, len(ledger), len(ledger.skipped), len(experiments))

    def _apply(self, ledger: RunLedger, run: Any, now_ms: int) -> bool:
        try:
            facts = facts_of(self.rules, run, now_ms)
        except BadRunData as exc:
            run_id, exp_id = getattr(run.info, "run_id", "?"), getattr(run.info, "experiment_id", "?")
            if ledger.skipped.get(run_id, (None, None))[1] != exc.reason:  # once per run and reason
                level = logging.WARNING if exc.reason == "invalid_data" else logging.INFO
                log.log(level, "skipping run %s of experiment %s: %s (%s)", run_id, exp_id, exc.reason, exc)
            return ledger.skip(run_id, exp_id, exc.reason)
        if self.artifacts.enabled and not facts.open and facts.run_id not in self.artifact_bytes:
            self.artifact_pending.add(facts.run_id)
        return ledger.upsert(facts)

    # -- artifact storage ------------------------------------------------------------------------
    def _measure_artifacts(self) -> str:
        """List the artifacts of up to max_runs_per_poll newly completed runs, a few at a time."""
        from concurrent.futures import ThreadPoolExecutor

        ledger = self.ledger
        assert ledger is not None
        batch = []
        while self.artifact_pending and len(batch) < self.artifacts.max_runs_per_poll:
            run_id = self.artifact_pending.pop()
            run = ledger.runs.get(run_id)
            if run is not None and not run.open and run_id not in self.artifact_bytes:
                batch.append(run)
        errors = 0
        with ThreadPoolExecutor(max_workers=self.artifacts.concurrency) as pool:
            for run, size in zip(batch, pool.map(self._artifact_size, [r.run_id for r in batch])):
                if size is None:
                    errors += 1
                    self.artifact_pending.add(run.run_id)  # tried again next poll
                else:
                    self.artifact_bytes[run.run_id] = (run.experiment_id, size)
                    self.artifact_totals[run.experiment_id] += size
        self.artifact_errors += errors
        return f"artifacts of {len(batch)} runs listed ({errors} failed, {len(self.artifact_pending)} pending)"

    def _forget_artifacts(self, run_id: str) -> None:
        exp_id, size = self.artifact_bytes.pop(run_id)
        self.artifact_totals[exp_id] -= size

    def _artifact_size(self, run_id: str) -> int | None:
        """Total bytes under a run's artifact root; None when it cannot be listed (counted)."""
        total, folders, seen = 0, [None], 0
        try:
            while folders and seen < MAX_ARTIFACT_ENTRIES:
                for item in self.client.list_artifacts(run_id, folders.pop()):
                    seen += 1
                    if item.is_dir:
                        folders.append(item.path)
                    else:
                        total += max(0, int(item.file_size or 0))
        except Exception as exc:  # noqa: BLE001 - one run's store failing must not fail the poll
            log.info("cannot list artifacts of run %s: %s", run_id, exc)
            return None
        return total

    # -- metrics ---------------------------------------------------------------------------------
    def families(self, now_ms: int) -> list[Metric]:
        ledger = self.ledger or self._new_ledger()
        names = self.experiments
        cur = self.currency

        def exp_name(exp_id: str) -> str:
            return names.get(exp_id, exp_id)

        cost = GaugeMetricFamily(
            "mlops_experiment_cost",
            f"Cumulative compute cost in {cur} of the experiment's runs by run status; running runs accrue "
            f"up to the poll. Recomputed from MLflow, so it only falls when runs are deleted. {POLLED_NOTE}",
            labels=["experiment", "status"],
        )
        seconds = GaugeMetricFamily(
            "mlops_experiment_run_seconds",
            f"Cumulative run time of the experiment's runs by run status. {POLLED_NOTE}",
            labels=["experiment", "status"],
        )
        count = GaugeMetricFamily(
            "mlops_runs", f"Runs of the experiment by run status. {POLLED_NOTE}", labels=["experiment", "status"]
        )
        for (exp_id, status), totals in sorted(ledger.status_totals(now_ms).items()):
            labels = [exp_name(exp_id), status]
            cost.add_metric(labels, totals.cost_nano / NANO)
            seconds.add_metric(labels, totals.run_ms / 1000)
            count.add_metric(labels, totals.runs)

        burn = GaugeMetricFamily(
            "mlops_running_hourly_cost",
            f"Summed hourly rate in {cur} of the experiment's runs RUNNING now: the current burn rate. {POLLED_NOTE}",
            labels=["experiment"],
        )
        hourly = ledger.running_hourly()
        for exp_id in sorted(names):
            burn.add_metric([names[exp_id]], hourly.get(exp_id, 0.0))

        info = InfoMetricFamily(
            "mlops_experiment", "Watched MLflow experiments, for joins and links.", labels=["experiment", "experiment_id"]
        )
        for exp_id in sorted(names):
            info.add_metric([names[exp_id], exp_id], {})

        families: list[Metric] = [cost, seconds, count, burn, info]
        families += self._run_series(ledger, now_ms, exp_name)
        families += self._activity(ledger, now_ms, exp_name)
        families += self._distributions(ledger, exp_name)

        skipped = GaugeMetricFamily(
            "mlops_runs_skipped",
            "Runs left out of every figure because their data cannot be costed, by reason. " + POLLED_NOTE,
            labels=["reason"],
        )
        skip_counts = ledger.skip_counts()
        for reason in sorted(set(SKIP_REASONS) | set(skip_counts)):
            skipped.add_metric([reason], skip_counts.get(reason, 0))
        priced = GaugeMetricFamily(
            "mlops_runs_by_price_source",
            "Runs by where their hourly rate came from: tag, config, catalog, or default (machine unknown).",
            labels=["experiment", "source"],
        )
        for (exp_id, source), n in sorted(ledger.price_sources.items()):
            priced.add_metric([exp_name(exp_id), source], n)
        tracked = GaugeMetricFamily("mlops_mlflow_runs_tracked", "Runs held by the exporter's ledger.")
        tracked.add_metric([], len(ledger))
        families += [skipped, priced, tracked]
        families += self._months(ledger, now_ms, exp_name)
        families += self._allocation(ledger, now_ms)
        if self.artifacts.enabled:
            families += self._storage(exp_name)
        if self.last_full_sync is not None:
            resync = GaugeMetricFamily(
                "mlops_mlflow_last_full_sync_timestamp_seconds", "Unix time of the last full reconciliation with MLflow."
            )
            resync.add_metric([], self.last_full_sync)
            families.append(resync)
        return families

    def _run_series(self, ledger: RunLedger, now_ms: int, exp_name) -> list[Metric]:
        labels = ["experiment", "run_id", "run_name", "status"]
        note = f"Running runs and the most recently ended ones, at most runs.max_run_series. {POLLED_NOTE}"
        run_cost = GaugeMetricFamily("mlops_run_cost", f"Compute cost in {self.currency} of one run. {note}", labels=labels)
        run_seconds = GaugeMetricFamily("mlops_run_seconds", f"Run time of one run. {note}", labels=labels)
        run_rate = GaugeMetricFamily(
            "mlops_run_hourly_cost", f"Hourly rate in {self.currency} of one run's machines. {note}", labels=labels
        )
        run_start = GaugeMetricFamily("mlops_run_start_timestamp_seconds", f"Start time of one run. {note}", labels=labels)
        run_info = InfoMetricFamily(
            "mlops_run",
            f"Machine, estimator and price source of one run. {note}",
            labels=[*labels, "instance_type", "estimator", "price_source"],
        )
        run: RunFacts
        for run in ledger.run_series(self.runs_cfg.max_run_series):
            values = [exp_name(run.experiment_id), run.run_id, run.run_name, run.status]
            run_cost.add_metric(values, run.cost_nano(now_ms) / NANO)
            run_seconds.add_metric(values, run.duration_ms(now_ms) / 1000)
            run_rate.add_metric(values, run.hourly)
            run_start.add_metric(values, run.start_ms / 1000)
            run_info.add_metric(
                [*values, run.instance_type or "", run.estimator, run.price_source], {}
            )
        return [run_cost, run_seconds, run_rate, run_start, run_info]

    def _activity(self, ledger: RunLedger, now_ms: int, exp_name) -> list[Metric]:
        window = int(self.runs_cfg.activity_window * 1000)
        by_hour = GaugeMetricFamily(
            "mlops_runs_by_start_hour",
            f"Runs started within runs.activity_window, by hour of day (0-23, {self.runs_cfg.timezone}). {POLLED_NOTE}",
            labels=["experiment", "hour"],
        )
        counts = ledger.start_hour_counts(now_ms, window)
        for exp_id in sorted(self.experiments):
            for hour in range(24):
                by_hour.add_metric([exp_name(exp_id), str(hour)], counts.get((exp_id, hour), 0))

        by_estimator = GaugeMetricFamily(
            "mlops_runs_by_estimator",
            f"Runs by estimator (the first of runs.estimator_keys found in tags, then params); "
            f"beyond runs.max_estimators per experiment they count as '{OTHER}'. {POLLED_NOTE}",
            labels=["experiment", "estimator"],
        )
        per_exp: dict[str, Counter[str]] = {}
        for (exp_id, estimator), n in ledger.estimators.items():
            per_exp.setdefault(exp_id, Counter())[estimator] = n
        limit = self.runs_cfg.max_estimators
        for exp_id in sorted(per_exp):
            for estimator, n in sorted(top_with_other(per_exp[exp_id], limit).items()):
                by_estimator.add_metric([exp_name(exp_id), estimator], n)
        return [by_hour, by_estimator]

    def _months(self, ledger: RunLedger, now_ms: int, exp_name) -> list[Metric]:
        cur = self.currency
        mtd, first_ms, length_ms = ledger.month_to_date(now_ms, self.rules)
        # Straight line: the month so far, stretched to the whole month. The first day counts as a full
        # day, so that ten minutes of a GPU job at 00:10 on the 1st do not project a month of it.
        elapsed = max(FORECAST_MIN_ELAPSED_MS, now_ms - first_ms)
        scale = length_ms / elapsed
        month_note = f"calendar month in {self.runs_cfg.timezone}"
        to_date = GaugeMetricFamily(
            "mlops_experiment_cost_month_to_date",
            f"Compute cost in {cur} of the experiment's runs within the current {month_note}; runs spanning "
            f"the month start count only their hours in it; running runs up to the poll. {POLLED_NOTE}",
            labels=["experiment"],
        )
        forecast = GaugeMetricFamily(
            "mlops_experiment_cost_forecast_month",
            f"Straight-line forecast in {cur} of the experiment's compute cost for the whole current "
            f"{month_note}: month-to-date x month length / time elapsed (at least one day). {POLLED_NOTE}",
            labels=["experiment"],
        )
        for exp_id in sorted(self.experiments):
            spent = mtd.get(exp_id, 0) / NANO
            to_date.add_metric([exp_name(exp_id)], spent)
            forecast.add_metric([exp_name(exp_id)], spent * scale)
        families: list[Metric] = [to_date, forecast]
        if self.budgets:
            monthly = GaugeMetricFamily("mlops_budget_monthly", f"Monthly budget in {cur}.", labels=["budget"])
            used = GaugeMetricFamily(
                "mlops_budget_cost_month_to_date",
                f"Month-to-date compute cost in {cur} of the experiments the budget covers. {POLLED_NOTE}",
                labels=["budget"],
            )
            projected = GaugeMetricFamily(
                "mlops_budget_cost_forecast_month",
                f"Straight-line month-end forecast in {cur} of the experiments the budget covers. {POLLED_NOTE}",
                labels=["budget"],
            )
            info = InfoMetricFamily("mlops_budget", "Experiment globs each budget covers.", labels=["budget", "experiments"])
            for budget in self.budgets:
                covered = [e for e, name in self.experiments.items() if any(fnmatch.fnmatchcase(name, g) for g in budget.experiments)]
                spent = sum(mtd.get(e, 0) for e in covered) / NANO
                monthly.add_metric([budget.name], budget.monthly)
                used.add_metric([budget.name], spent)
                projected.add_metric([budget.name], spent * scale)
                info.add_metric([budget.name, ",".join(budget.experiments)], {})
            families += [monthly, used, projected, info]
        return families

    def _allocation(self, ledger: RunLedger, now_ms: int) -> list[Metric]:
        if not self.allocation.tags:
            return []
        by_tag = GaugeMetricFamily(
            "mlops_cost_by_tag",
            f"Cumulative compute cost in {self.currency} of all watched runs by the value of each allocation "
            f"tag; runs without the tag count as 'untagged' (always shown), the values beyond allocation.max_values as "
            f"'{OTHER}', so each tag's values add up to the total. {POLLED_NOTE}",
            labels=["tag", "value"],
        )
        costs = ledger.cost_by_tag(now_ms)
        for index, tag in enumerate(self.allocation.tags):
            # "untagged" is always its own series: unallocated spend is what showback must expose.
            values = {v: n for (i, v), n in costs.items() if i == index and v != UNTAGGED}
            kept = top_with_other(values, self.allocation.max_values)
            kept[UNTAGGED] = costs.get((index, UNTAGGED), 0)
            for tag_value, nano in sorted(kept.items()):
                by_tag.add_metric([tag, tag_value], nano / NANO)
        return [by_tag]

    def _storage(self, exp_name) -> list[Metric]:
        per_exp = self.artifact_totals
        size = GaugeMetricFamily(
            "mlops_experiment_artifact_bytes",
            f"Bytes of artifacts logged by the experiment's completed runs (each run listed once). {POLLED_NOTE}",
            labels=["experiment"],
        )
        cost = GaugeMetricFamily(
            "mlops_experiment_storage_monthly_cost",
            f"Monthly cost in {self.currency} of storing those artifacts at pricing.storage_gb_month "
            "(GB = 2^30 bytes).",
            labels=["experiment"],
        )
        for exp_id in sorted(self.experiments):
            size.add_metric([exp_name(exp_id)], per_exp.get(exp_id, 0))
            cost.add_metric([exp_name(exp_id)], per_exp.get(exp_id, 0) / GB * self.storage_gb_month)
        pending = GaugeMetricFamily("mlops_artifact_runs_pending", "Completed runs whose artifacts are not listed yet.")
        pending.add_metric([], len(self.artifact_pending))
        errors = CounterMetricFamily("mlops_artifact_listing_errors", "Runs whose artifacts could not be listed.")
        errors.add_metric([], self.artifact_errors)
        return [size, cost, pending, errors]

    def _distributions(self, ledger: RunLedger, exp_name) -> list[Metric]:
        durations = HistogramMetricFamily(
            "mlops_completed_run_duration_seconds",
            f"Run time of the experiment's completed runs (FINISHED, FAILED, KILLED). {POLLED_NOTE}",
            labels=["experiment"],
        )
        costs = HistogramMetricFamily(
            "mlops_completed_run_cost",
            f"Compute cost in {self.currency} of the experiment's completed runs. {POLLED_NOTE}",
            labels=["experiment"],
        )
        for exp_id in sorted(ledger.duration_hist):
            hist = ledger.duration_hist[exp_id]
            if hist.count:
                durations.add_metric([exp_name(exp_id)], hist.cumulative(), hist.total / 1000)
        for exp_id in sorted(ledger.cost_hist):
            hist = ledger.cost_hist[exp_id]
            if hist.count:
                costs.add_metric([exp_name(exp_id)], hist.cumulative(), hist.total / NANO)
        return [durations, costs]
