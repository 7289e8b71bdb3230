"""The MLflow source: runs kept in step with MLflow (run_sync), artifact sizes (artifacts), and the
cost, activity and budget figures the metric modules render from them."""

from __future__ import annotations

import time

from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter.config import Config
from mlops_kpi_exporter.facts import LedgerFacts
from mlops_kpi_exporter.ledger import RunLedger
from mlops_kpi_exporter.metrics import activity, budgets, costs
from mlops_kpi_exporter.metrics import utilization as utilization_metrics
from mlops_kpi_exporter.mlflow_client import MlflowConnection
from mlops_kpi_exporter.resolved import run_rules
from mlops_kpi_exporter.snapshot import slot
from mlops_kpi_exporter.sources.artifacts import ArtifactSizes
from mlops_kpi_exporter.sources.run_sync import PollReport, RunSync
from mlops_kpi_exporter.sources.utilization import UtilizationReader
from mlops_kpi_exporter.views import RunsView


def render(view: RunsView) -> list[Metric]:
    """Every family of the MLflow source, in exposition order; the derived stage's figures (budgets,
    the bill's calibration and join: they need other sources' facts too) take the marked places."""
    return [
        *costs.experiments(view),
        *costs.run_series(view),
        *activity.start_hours_and_estimators(view),
        *activity.distributions(view),
        *costs.bookkeeping(view),
        *budgets.experiment_month(view),
        slot("budgets"),
        *costs.allocation(view),
        *costs.allocation_by_month(view),
        slot("bill"),
        *utilization_metrics.families(view),
        *costs.storage(view),
        *costs.sync(view),
    ]


class MlflowSource:
    name = "mlflow"

    def __init__(self, config: Config, mlflow: MlflowConnection, clock=time.time):
        self.config = config
        self.rules = run_rules(config)
        self.interval = config.mlflow.poll_interval
        self.retry_backoff = config.mlflow.retry_backoff
        self.uri_for_humans = mlflow.uri_for_humans
        self.clock = clock
        self.artifacts: ArtifactSizes | None = None
        self.runs = RunSync(config, mlflow, self.rules)
        self.utilization: UtilizationReader | None = None
        readers: list = []  # what reads more of a completed run once the sync has costed it
        if config.artifacts.enabled:
            self.artifacts = ArtifactSizes(config.artifacts, lambda: self.runs.client,
                                           lambda exp_id: self.runs.workspace_of.get(exp_id))
            readers.append(self.artifacts)
        if config.utilization.enabled:
            self.utilization = UtilizationReader(config.utilization.max_runs_per_poll, config.utilization.max_points,
                                                 lambda: self.runs.client, lambda exp_id: self.runs.workspace_of.get(exp_id))
            readers.append(self.utilization)
        self.runs.on_costed = lambda facts: [reader.costed(facts) for reader in readers]
        self.runs.on_experiment_gone = lambda exp_id: [reader.forget_experiment(exp_id) for reader in readers]
        self.last_report: PollReport | None = None
        self._facts: LedgerFacts | None = None
        self.watched: dict[str, str] = {}  # id -> name, as `check` found them

    @property
    def ledger(self) -> RunLedger | None:
        return self.runs.ledger

    @property
    def workspaces(self) -> tuple[str, ...] | None:
        return self.runs.workspaces

    @property
    def experiments(self) -> dict[str, str]:
        return self.runs.experiments

    def check(self) -> str:
        """Reach MLflow once and say what would be watched."""
        experiments = self.watched = self.runs.matching_experiments()
        names = ", ".join(sorted(experiments.values())[:10]) + (" ..." if len(experiments) > 10 else "")
        return f"{self.uri_for_humans}: reachable; {len(experiments)} experiments watched ({names or 'none'})"

    def poll(self) -> tuple[list[Metric], str]:
        now = self.clock()
        report = self.last_report = self.runs.sync(now)
        summary = report.summary()
        for reader in (self.artifacts, self.utilization):
            if reader is not None:
                assert self.runs.ledger is not None
                if report.full_sync:
                    reader.forget_runs_not_in(self.runs.ledger)
                summary += "; " + reader.measure(self.runs.ledger)
        now_ms = int(now * 1000)
        self._facts = self.summary(now_ms)
        return render(self.view(now_ms)), summary

    def facts(self) -> LedgerFacts | None:
        """What the derived stage joins with the other sources' facts; None before a good poll."""
        return self._facts

    def summary(self, now_ms: int) -> LedgerFacts:
        cfg = self.config
        return LedgerFacts.of(self.runs.ledger or self.runs.new_ledger(), self.runs.experiments, now_ms, self.rules,
                              calibration=cfg.pricing.calibrate_from_bill, join=bool(cfg.billing.run_join),
                              series=cfg.runs.max_run_series, workspaces=self.workspaces is not None)

    def view(self, now_ms: int) -> RunsView:
        cfg = self.config
        return RunsView(
            ledger=self.runs.ledger or self.runs.new_ledger(),
            experiments=self.runs.experiments,
            now_ms=now_ms,
            rules=self.rules,
            currency=cfg.pricing.currency,
            max_run_series=cfg.runs.max_run_series,
            max_estimators=cfg.runs.max_estimators,
            activity_window_ms=int(cfg.runs.activity_window * 1000),
            allocation_tags=tuple(cfg.allocation.tags),
            allocation_max_values=cfg.allocation.max_values,
            artifacts=self.artifacts.view() if self.artifacts is not None else None,
            storage_gb_month=cfg.pricing.storage_gb_month,
            last_full_sync=self.runs.last_full_sync,
            bill_months=cfg.billing.months if cfg.billing.sources else 0,
            utilization=self.utilization.figures() if self.utilization is not None else None,
            utilization_pending=len(self.utilization.pending) if self.utilization is not None else 0,
        )
