"""How busy each run's machine was, from MLflow's system metrics (log_system_metrics): its mean GPU and
CPU utilization and peak GPU memory, for the idle share of its cost.

A completed run's history is read once, a batch of runs per poll (utilization.max_runs_per_poll, the
rest pending), and cached across resyncs, as artifact sizes are: one request per metric key for up to
100 runs, through MLflow's sampled bulk history (at most utilization.max_points points per run and
key, spread evenly over the run's steps, first and last included; through a plugin's store, MLflow's
client samples each run's history as the store reads it). A running run uses the latest
values search_runs returns already: no request. Runs without system metrics are counted, never guessed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlops_kpi_exporter.ledger import RunLedger
from mlops_kpi_exporter.mlflow_workspaces import in_workspace
from mlops_kpi_exporter.mlflow_client import reads_mlflow_rest
from mlops_kpi_exporter.runs import RunFacts

log = logging.getLogger(__name__)

BULK_PATH = "/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval"  # the UI's route: no public client call
MAX_RUNS_PER_REQUEST = 100  # MLflow's limit for the bulk history
GPU = re.compile(r"gpu_(\d+)_utilization_percentage$")
GPU_MEMORY = re.compile(r"gpu_(\d+)_memory_usage_percentage$")


@dataclass(frozen=True)
class Utilization:
    """0-1 figures of one run; None where it logged nothing of the kind."""

    gpu: float | None  # mean over its GPUs (every node's) of each GPU's mean
    cpu: float | None  # mean
    gpu_memory: float | None  # peak over its GPUs

    @property
    def busy(self) -> float | None:
        """Utilization of what dominates the price: the GPUs when it has some, else the CPU."""
        return self.gpu if self.gpu is not None else self.cpu


def summarize(series: dict[str, list[float]]) -> Utilization:
    """From each system metric key's values (percent) to the run's figures."""
    gpus = [sum(v) / len(v) for k, v in series.items() if v and GPU.search(k)]
    memory = [max(v) for k, v in series.items() if v and GPU_MEMORY.search(k)]
    cpu = [x for k, v in series.items() if k.endswith("/cpu_utilization_percentage") for x in v]
    return Utilization(
        gpu=sum(gpus) / len(gpus) / 100 if gpus else None,
        cpu=sum(cpu) / len(cpu) / 100 if cpu else None,
        gpu_memory=max(memory) / 100 if memory else None,
    )


def latest(run: RunFacts) -> Utilization:
    """A running run's figures from its latest values."""
    return summarize({key: [value] for key, value in run.system})


class UtilizationReader:
    def __init__(self, max_runs_per_poll: int, max_points: int, client: Callable[[], Any],
                 workspace_of: Callable[[str], str | None] = lambda experiment_id: None):
        self.max_runs_per_poll = max_runs_per_poll
        self.max_points = max_points
        self.client = client
        self.workspace_of = workspace_of  # experiment id -> its MLflow workspace
        self.cache: dict[str, tuple[int, Utilization]] = {}  # run id -> (end ms it was read for, figures)
        self.pending: set[str] = set()
        self.requests = 0  # history requests made (each is one MLflow call)
        self.points = 0  # history points received
        self.errors = 0

    def costed(self, facts: RunFacts) -> None:
        """The sync costed a run: a completed one with system metrics, not read for this end, waits."""
        cached = self.cache.get(facts.run_id)
        if not facts.open and facts.system and (cached is None or cached[0] != facts.end_ms):
            self.pending.add(facts.run_id)

    def forget_runs_not_in(self, ledger: RunLedger) -> None:
        for run_id in [r for r in self.cache if r not in ledger.runs]:
            del self.cache[run_id]
        self.pending &= set(ledger.runs)

    def forget_experiment(self, experiment_id: str) -> None:
        del experiment_id  # the next full sync's forget_runs_not_in drops its runs

    def measure(self, ledger: RunLedger) -> str:
        """Read the histories of up to max_runs_per_poll waiting runs."""
        batch: list[RunFacts] = []
        for run_id in sorted(self.pending):
            if len(batch) >= self.max_runs_per_poll:
                break
            self.pending.discard(run_id)
            run = ledger.runs.get(run_id)
            if run is not None and not run.open and run.system:
                batch.append(run)
        failed = 0
        by_workspace: dict[str | None, list[RunFacts]] = {}  # a request reaches one workspace
        for run in batch:
            by_workspace.setdefault(self.workspace_of(run.experiment_id), []).append(run)
        chunks = [(workspace, runs[start:start + MAX_RUNS_PER_REQUEST])
                  for workspace, runs in by_workspace.items() for start in range(0, len(runs), MAX_RUNS_PER_REQUEST)]
        for workspace, chunk in chunks:
            try:
                with in_workspace(workspace):
                    series = self.histories(chunk)
            except Exception as exc:  # noqa: BLE001 - one failed read leaves its runs pending, not the poll failed
                log.info("cannot read system metrics of %d runs: %s", len(chunk), exc)
                failed += len(chunk)
                self.pending.update(r.run_id for r in chunk)
                continue
            for run in chunk:
                self.cache[run.run_id] = (run.end_ms or 0, summarize(series.get(run.run_id, {})))
        self.errors += failed
        return f"system metrics of {len(batch) - failed} runs read ({failed} failed, {len(self.pending)} pending)"

    def histories(self, runs: list[RunFacts]) -> dict[str, dict[str, list[float]]]:
        """run id -> key -> sampled values, one request per key the runs report."""
        out: dict[str, dict[str, list[float]]] = {}
        keys = sorted({key for run in runs for key, _ in run.system})
        for key in keys:
            ids = [run.run_id for run in runs if any(k == key for k, _ in run.system)]
            for run_id, value in self._bulk(ids, key):
                self.points += 1
                out.setdefault(run_id, {}).setdefault(key, []).append(min(100.0, max(0.0, float(value))))
        return out

    def _bulk(self, run_ids: list[str], key: str) -> list[tuple[str, float]]:
        client = self.client()
        store = client._tracking_client.store
        self.requests += 1
        if reads_mlflow_rest(client, store):  # a plain tracking server: the sampled bulk route over HTTP
            from mlflow.utils.rest_utils import http_request

            reply = http_request(store.get_host_creds(), BULK_PATH, "GET",
                                 params={"run_ids": run_ids, "metric_key": key, "max_results": self.max_points})
            if reply.status_code == 404:  # a server without the route: each run's first points instead
                return self._first_points(store, run_ids, key)
            reply.raise_for_status()
            return [(m["run_id"], m.get("value", 0.0)) for m in reply.json().get("metrics", [])]
        # a local store, or a plugin's (the route is the UI's, and a plugin signs only its store's calls):
        # MLflow samples the histories the store reads
        found = store.get_metric_history_bulk_interval(run_ids=run_ids, metric_key=key, max_results=self.max_points,
                                                      start_step=None, end_step=None)
        return [(m.run_id, m.value) for m in found]

    def _first_points(self, store, run_ids: list[str], key: str) -> list[tuple[str, float]]:
        out = []
        for run_id in run_ids:
            self.requests += 1
            history = store.get_metric_history(run_id, key, max_results=self.max_points)
            out += [(run_id, m.value) for m in list(history)[:self.max_points]]
        return out

    def figures(self) -> dict[str, Utilization]:
        return {run_id: figures for run_id, (_, figures) in self.cache.items()}
