"""The MLflow source: runs kept in step with MLflow (run_sync), artifact sizes (artifacts), and the
cost, activity and budget figures the metric modules render from them."""

from __future__ import annotations

import time

from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter.bill_join import calibration_ratios, join
from mlops_kpi_exporter.bill_share import SharedBills, catalog_provider
from mlops_kpi_exporter.config import Config
from mlops_kpi_exporter.genai_share import SharedGenAI
from mlops_kpi_exporter.ledger import RunLedger
from mlops_kpi_exporter.views import RunsView
from mlops_kpi_exporter.metrics import activity, budgets, costs
from mlops_kpi_exporter.metrics import bill_join as bill_join_metrics
from mlops_kpi_exporter.metrics import utilization as utilization_metrics
from mlops_kpi_exporter.mlflow_client import MlflowConnection
from mlops_kpi_exporter.resolved import run_rules
from mlops_kpi_exporter.sources.artifacts import ArtifactSizes
from mlops_kpi_exporter.sources.utilization import UtilizationReader
from mlops_kpi_exporter.sources.run_sync import PollReport, RunSync


def render(view: RunsView) -> list[Metric]:
    """Every family of the MLflow source, in exposition order."""
    return [
        *costs.experiments(view),
        *costs.run_series(view),
        *activity.start_hours_and_estimators(view),
        *activity.distributions(view),
        *costs.bookkeeping(view),
        *budgets.families(view),
        *costs.allocation(view),
        *costs.allocation_by_month(view),
        *costs.calibrated(view),
        *bill_join_metrics.families(view),
        *utilization_metrics.families(view),
        *costs.storage(view),
        *costs.sync(view),
    ]


class MlflowSource:
    name = "mlflow"

    def __init__(self, config: Config, mlflow: MlflowConnection, clock=time.time, bills: SharedBills | None = None,
                 genai: SharedGenAI | None = None):
        self.config = config
        self.genai = genai  # the traces source's month to date, for budgets that include GenAI spend
        self.bills = bills  # the billing sources' latest bills: calibration and the run join
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
            self.artifacts = ArtifactSizes(config.artifacts, lambda: self.runs.client)
            readers.append(self.artifacts)
        if config.utilization.enabled:
            self.utilization = UtilizationReader(config.utilization.max_runs_per_poll, config.utilization.max_points,
                                                 lambda: self.runs.client)
            readers.append(self.utilization)
        self.runs.on_costed = lambda facts: [reader.costed(facts) for reader in readers]
        self.runs.on_experiment_gone = lambda exp_id: [reader.forget_experiment(exp_id) for reader in readers]
        self.last_report: PollReport | None = None

    @property
    def ledger(self) -> RunLedger | None:
        return self.runs.ledger

    @property
    def experiments(self) -> dict[str, str]:
        return self.runs.experiments

    def check(self) -> str:
        """Reach MLflow once and say what would be watched."""
        experiments = self.runs.matching_experiments()
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
        return render(self.view(int(now * 1000))), summary

    def joined(self, ledger: RunLedger, now_ms: int):
        """The latest bills joined to the runs (billing.run_join), and the calibration ratios."""
        rules = self.config.billing.run_join
        if not rules or self.bills is None:
            return None, {}

        def runs_for(index: int, key: str) -> list:
            rule = rules[index]
            if rule.run == "run_id":
                run = ledger.runs.get(key)
                return [run] if run is not None else []
            ids = ledger.join_index.get((self.rules.join_tags.index(rule.run_tag), key), ())
            return [ledger.runs[i] for i in ids]

        joined = join(self.bills.bills(), tuple(rules), runs_for, now_ms)
        return joined, calibration_ratios(joined, ledger, now_ms, int(self.config.billing.calibration_window * 1000))

    def view(self, now_ms: int) -> RunsView:
        cfg = self.config
        ledger = self.runs.ledger or self.runs.new_ledger()
        joined, ratios = self.joined(ledger, now_ms)
        by_type = {}
        for (provider, kind), (billed, estimated) in ratios.items():
            if catalog_provider(provider) and estimated > 0:
                by_type[(catalog_provider(provider), kind)] = billed / estimated
        return RunsView(
            ledger=ledger,
            experiments=self.runs.experiments,
            now_ms=now_ms,
            rules=self.rules,
            currency=cfg.pricing.currency,
            max_run_series=cfg.runs.max_run_series,
            max_estimators=cfg.runs.max_estimators,
            activity_window_ms=int(cfg.runs.activity_window * 1000),
            budgets=tuple(cfg.budgets),
            allocation_tags=tuple(cfg.allocation.tags),
            allocation_max_values=cfg.allocation.max_values,
            artifacts=self.artifacts.view() if self.artifacts is not None else None,
            storage_gb_month=cfg.pricing.storage_gb_month,
            last_full_sync=self.runs.last_full_sync,
            bill_months=cfg.billing.months if cfg.billing.sources else 0,
            calibration=self.bills.factors() if self.bills is not None and cfg.pricing.calibrate_from_bill else None,
            calibration_by_type=by_type if cfg.pricing.calibrate_from_bill else {},
            joined=joined,
            calibration_ratios=ratios,
            max_join_keys=cfg.billing.max_join_keys,
            utilization=self.utilization.figures() if self.utilization is not None else None,
            utilization_pending=len(self.utilization.pending) if self.utilization is not None else 0,
            genai_month_to_date=self.genai.month_to_date() if self.genai is not None else None,
        )
