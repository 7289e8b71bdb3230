"""Artifact storage: each completed run's artifacts listed once, a few runs at a time, cached across
resyncs (listing costs one MLflow call per folder, so it is never repeated for a run)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mlops_kpi_exporter.config import ArtifactsConfig
from mlops_kpi_exporter.ledger import RunLedger
from mlops_kpi_exporter.mlflow_workspaces import within
from mlops_kpi_exporter.views import ArtifactTotals
from mlops_kpi_exporter.runs import RunFacts

log = logging.getLogger(__name__)

MAX_ARTIFACT_ENTRIES = 10_000  # per run: a run with more files is counted up to here


class ArtifactSizes:
    def __init__(self, config: ArtifactsConfig, client: Callable[[], Any],
                 workspace_of: Callable[[str], str | None] = lambda experiment_id: None):
        self.config = config
        self.client = client
        self.workspace_of = workspace_of  # experiment id -> its MLflow workspace
        self.bytes: dict[str, tuple[str, int]] = {}  # run_id -> (experiment_id, bytes)
        self.totals: Counter[str] = Counter()  # experiment_id -> bytes, kept in step
        self.pending: set[str] = set()
        self.errors = 0

    def costed(self, facts: RunFacts) -> None:
        """The sync costed a run: a completed one not listed yet waits for listing."""
        if not facts.open and facts.run_id not in self.bytes:
            self.pending.add(facts.run_id)

    def forget_runs_not_in(self, ledger: RunLedger) -> None:
        for run_id in [r for r in self.bytes if r not in ledger.runs]:
            self._forget(run_id)

    def forget_experiment(self, experiment_id: str) -> None:
        for run_id in [r for r, (e, _) in self.bytes.items() if e == experiment_id]:
            self._forget(run_id)

    def _forget(self, run_id: str) -> None:
        exp_id, size = self.bytes.pop(run_id)
        self.totals[exp_id] -= size

    def measure(self, ledger: RunLedger) -> str:
        """List the artifacts of up to max_runs_per_poll waiting runs, a few at a time."""
        batch = []
        while self.pending and len(batch) < self.config.max_runs_per_poll:
            run_id = self.pending.pop()
            run = ledger.runs.get(run_id)
            if run is not None and not run.open and run_id not in self.bytes:
                batch.append(run)
        errors = 0
        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            for run, size in zip(batch, pool.map(self._size, [r.run_id for r in batch], [r.experiment_id for r in batch])):
                if size is None:
                    errors += 1
                    self.pending.add(run.run_id)  # tried again next poll
                else:
                    self.bytes[run.run_id] = (run.experiment_id, size)
                    self.totals[run.experiment_id] += size
        self.errors += errors
        return f"artifacts of {len(batch)} runs listed ({errors} failed, {len(self.pending)} pending)"

    def view(self) -> ArtifactTotals:
        return ArtifactTotals(dict(self.totals), len(self.pending), self.errors)

    def _size(self, run_id: str, experiment_id: str) -> int | None:
        """Total bytes under a run's artifact root; None when it cannot be listed (counted)."""
        total, folders, seen = 0, [None], 0
        list_artifacts = within(self.workspace_of(experiment_id), self.client().list_artifacts)
        try:
            while folders and seen < MAX_ARTIFACT_ENTRIES:
                for item in list_artifacts(run_id, folders.pop()):
                    seen += 1
                    if item.is_dir:
                        folders.append(item.path)
                    else:
                        total += max(0, int(item.file_size or 0))
        except Exception as exc:  # noqa: BLE001 - one run's store failing must not fail the poll
            log.info("cannot list artifacts of run %s: %s", run_id, exc)
            return None
        return total
