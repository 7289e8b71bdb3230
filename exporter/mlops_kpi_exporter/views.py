"""What the MLflow source hands the metric modules after a poll: plain data, rendering only reads it."""

from __future__ import annotations

from dataclasses import dataclass, field

from mlops_kpi_exporter.bill_join import Joined
from mlops_kpi_exporter.facts import LedgerFacts
from mlops_kpi_exporter.ledger import RunLedger
from mlops_kpi_exporter.runs import RunRules


@dataclass(frozen=True)
class ArtifactTotals:
    """Artifact bytes of completed runs per experiment, as listed so far, and the listing backlog."""

    bytes_by_experiment: dict[str, int]
    pending: int
    errors: int


@dataclass(frozen=True)
class RunsView:
    """What the MLflow source hands the metric modules after a poll: the ledger, the watched
    experiments and the settings that shape the figures. Rendering only reads it."""

    ledger: RunLedger
    experiments: dict[str, str]  # id -> name of the watched experiments
    now_ms: int
    rules: RunRules  # the time zone of hours of day and calendar months
    currency: str
    max_run_series: int = 100
    max_estimators: int = 20
    activity_window_ms: int = 30 * 86_400_000
    allocation_tags: tuple[str, ...] = ()
    allocation_max_values: int = 20
    artifacts: ArtifactTotals | None = None  # None: artifacts.enabled is off
    storage_gb_month: float = 0.0
    last_full_sync: float | None = None
    bill_months: int = 0  # > 0 when billing is configured: the estimate by month and tag, this many months
    utilization: dict | None = None  # run id -> Utilization of completed runs read; None: utilization off
    utilization_pending: int = 0

    def name(self, experiment_id: str) -> str:
        return self.experiments.get(experiment_id, experiment_id)


@dataclass(frozen=True)
class BillView:
    """What the derived stage hands the bill's joined figures (metrics/bill_join.py, costs.calibrated):
    the MLflow source's facts beside the bills' calibration and join. Rendering only reads it."""

    ledger: LedgerFacts
    currency: str
    timezone: str
    allocation_tags: tuple[str, ...] = ()
    allocation_max_values: int = 20
    bill_months: int = 0
    calibration: dict[str, float] | None = None  # pricing.calibrate_from_bill: factor per catalog provider
    calibration_by_type: dict[tuple[str, str], float] = field(default_factory=dict)  # (provider, type): run join
    joined: Joined | None = None  # billing.run_join: the bill joined to the runs
    calibration_ratios: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)  # see bill_join
    max_join_keys: int = 20
    billed_catalog: dict = field(default_factory=dict)  # the catalog cost of runs already billed (not scaled)

    def name(self, experiment_id: str) -> str:
        return self.ledger.name(experiment_id)
