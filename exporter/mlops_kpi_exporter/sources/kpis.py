"""The KPI source: business and quality KPIs read from metrics logged in MLflow (`mlflow.log_metric`).

Each KPI in the config names an MLflow metric and where to read it: the latest finished run of an
experiment that logged it, the best such run, or the run behind a registered model's alias. A KPI
that cannot be read is reported absent with a reason, never as zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter.config import Config, KpiConfig
import logging

from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

from mlops_kpi_exporter.mlflow_client import MlflowConnection, MlflowReader, is_data_error, is_not_found
from mlops_kpi_exporter.mlflow_workspaces import DEFAULT, discover, in_workspace, qualified, split
from mlops_kpi_exporter.metrics.kpis import families

log = logging.getLogger(__name__)

MISSING_REASONS = ("experiment_not_found", "metric_missing", "alias_not_found", "run_gone", "not_a_number", "invalid_data")


@dataclass(frozen=True)
class KpiReading:
    kpi: KpiConfig
    value: float | None = None
    experiment: str = ""
    run_id: str = ""
    model_version: str = ""
    missing: str = ""  # the reason when value is None

    @property
    def target_met(self) -> bool | None:
        if self.value is None or self.kpi.target is None:
            return None
        return self.value >= self.kpi.target if self.kpi.higher_is_better else self.value <= self.kpi.target


def _metric_filter(metric: str) -> str:
    # `> -1e308` keeps only runs that logged a real number for the key (no missing, no NaN).
    return f"attributes.status = 'FINISHED' and metrics.`{metric}` > -1e308"


class KpiSource(MlflowReader):
    name = "kpis"

    def __init__(self, config: Config, mlflow: MlflowConnection):
        super().__init__(config, mlflow)
        self.kpis = config.kpis
        self.cfg = config.mlflow
        self.workspaces: tuple[str, ...] | None = None  # the server's, read each poll (None: it has none)

    def check(self) -> str:
        self.discover()
        readings = self.checked = [self.read_or_skip(k) for k in self.kpis]
        missing = [f"{r.kpi.name} ({r.missing})" for r in readings if r.value is None]
        return f"{len(readings) - len(missing)} of {len(readings)} KPIs readable" + (
            f"; missing: {', '.join(missing)}" if missing else ""
        )

    def poll(self) -> tuple[list[Metric], str]:
        self.discover()
        readings = [self.read_or_skip(k) for k in self.kpis]
        missing = sum(1 for r in readings if r.value is None)
        return families(readings), f"{len(readings) - missing} KPIs read, {missing} missing"

    def discover(self) -> None:
        self.workspaces = discover(self.client, ["*"], [])  # a KPI names its workspace itself

    def read_or_skip(self, kpi: KpiConfig) -> KpiReading:
        """One odd KPI (data MLflow holds that we did not foresee) is missing, never a failed poll;
        an MLflow that cannot be reached still fails the poll."""
        try:
            if self.workspaces is None:
                return self.read(kpi)
            # with workspaces, a KPI's experiment (or model) is `workspace/name`; a bare name is the default's
            workspace = split(kpi.experiment if kpi.source != "model_alias" else kpi.model or "")[0] or DEFAULT
            with in_workspace(workspace):
                reading = self.read(kpi.model_copy(update=self._bare(kpi)))
            return replace(reading, kpi=kpi, experiment=qualified(workspace, split(reading.experiment)[1])
                           if reading.experiment else "")
        except Exception as exc:
            if not is_data_error(exc):
                raise
            log.warning("KPI %s cannot be read: %s: %s", kpi.name, type(exc).__name__, exc)
            return KpiReading(kpi, experiment=kpi.experiment or "", missing="invalid_data")

    @staticmethod
    def _bare(kpi: KpiConfig) -> dict[str, str]:
        """The KPI's experiment and model names without their workspace."""
        return {key: split(value)[1] for key in ("experiment", "model") if (value := getattr(kpi, key))}

    def read(self, kpi: KpiConfig) -> KpiReading:
        if kpi.source == "model_alias":
            return self._from_alias(kpi)
        exp = self.client.get_experiment_by_name(kpi.experiment)
        if exp is None or exp.lifecycle_stage == "deleted":
            return KpiReading(kpi, experiment=kpi.experiment or "", missing="experiment_not_found")
        if kpi.source == "best_run":
            order = [f"metrics.`{kpi.metric}` {'DESC' if kpi.higher_is_better else 'ASC'}", "attributes.end_time DESC"]
        else:
            order = ["attributes.end_time DESC"]
        runs = self.client.search_runs(
            [exp.experiment_id], _metric_filter(kpi.metric), run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1, order_by=order,
        )
        if not runs:
            return KpiReading(kpi, experiment=exp.name, missing="metric_missing")
        return self._reading(kpi, runs[0], exp.name)

    def _from_alias(self, kpi: KpiConfig) -> KpiReading:
        try:
            version = self.client.get_model_version_by_alias(kpi.model, kpi.alias)
        except MlflowException as exc:
            if is_not_found(exc):
                return KpiReading(kpi, experiment=kpi.experiment or "", missing="alias_not_found")
            raise
        if not version.run_id:
            return KpiReading(kpi, experiment=kpi.experiment or "", model_version=str(version.version), missing="run_gone")
        try:
            run = self.client.get_run(version.run_id)
        except MlflowException as exc:
            if is_not_found(exc):
                return KpiReading(kpi, experiment=kpi.experiment or "", run_id=version.run_id,
                                  model_version=str(version.version), missing="run_gone")
            raise
        experiment = kpi.experiment or self._experiment_name(run.info.experiment_id)
        return self._reading(kpi, run, experiment, str(version.version))

    def _experiment_name(self, experiment_id: str) -> str:
        try:
            return self.client.get_experiment(experiment_id).name
        except Exception:  # noqa: BLE001 - the label falls back to the id; the value is still right
            return experiment_id

    @staticmethod
    def _reading(kpi: KpiConfig, run: Any, experiment: str, model_version: str = "") -> KpiReading:
        value = run.data.metrics.get(kpi.metric)
        base = {"experiment": experiment, "run_id": run.info.run_id, "model_version": model_version}
        if value is None:
            return KpiReading(kpi, missing="metric_missing", **base)
        value = float(value)
        if not math.isfinite(value):
            return KpiReading(kpi, missing="not_a_number", **base)
        return KpiReading(kpi, value=value, **base)
