"""The model registry source: registered models, versions, aliases (and legacy stages), and the
chapter's "model deployment time" KPI as the lead time from a run's end to the creation of the
version that now holds the deploy alias."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter.config import Config
import logging

from mlflow.exceptions import MlflowException

from mlops_kpi_exporter.mlflow_client import MlflowConnection, MlflowReader, is_data_error, is_not_found, paged
from mlops_kpi_exporter.mlflow_workspaces import discover, in_workspace, matches, qualified
from mlops_kpi_exporter.metrics.registry import families

log = logging.getLogger(__name__)

LIVE_STAGES = ("Staging", "Production")  # legacy stages worth a series; Archived ones are history


@dataclass(frozen=True)
class ModelFacts:
    name: str
    versions: int
    aliases: tuple[tuple[str, str, str], ...]  # (alias, version, run_id)
    stages: tuple[tuple[str, str, str], ...]  # (stage, version, run_id)
    lead_time_seconds: float | None
    lead_time_unknown: str = ""  # why lead_time_seconds is None, when the deploy alias exists


def _aliases(model: Any) -> list[tuple[str, str]]:
    raw = getattr(model, "aliases", None) or {}
    if isinstance(raw, dict):
        return [(str(a), str(v)) for a, v in raw.items()]
    return [(str(a.alias), str(a.version)) for a in raw]  # older clients: a list of alias objects


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '\\"') + '"' if "'" in name else f"'{name}'"


class RegistrySource(MlflowReader):
    name = "registry"

    def __init__(self, config: Config, mlflow: MlflowConnection):
        super().__init__(config, mlflow)
        self.cfg = config.registry
        self.mlflow_cfg = config.mlflow
        self.workspaces: tuple[str, ...] | None = None  # the server's, read each poll (None: it has none)

    def check(self) -> str:
        count = sum(len(models) for _, models in self._by_workspace())
        return f"{count} registered models watched"

    def poll(self) -> tuple[list[Metric], str]:
        facts = []
        for workspace, models in self._by_workspace():
            with in_workspace(workspace):  # a model's name is its workspace's: workspace/name
                facts += [replace(f, name=qualified(workspace, f.name)) for f in map(self._facts_or_skip, models)]
        facts.sort(key=lambda f: f.name)
        return families(facts, self.cfg.deploy_alias), f"{len(facts)} models, {sum(f.versions for f in facts)} versions"

    def _by_workspace(self) -> list[tuple[str | None, list[Any]]]:
        """(workspace, its watched models) of every watched workspace; (None, models) without workspaces."""
        self.workspaces = discover(self.client, self.mlflow_cfg.workspaces, self.mlflow_cfg.exclude_workspaces)
        out = []
        for workspace in self.workspaces if self.workspaces is not None else (None,):
            with in_workspace(workspace):
                out.append((workspace, self._models(workspace)))
        return out

    def _models(self, workspace: str | None) -> list[Any]:
        models = paged(self.client.search_registered_models, max_results=1000)
        on = workspace is not None
        return sorted((m for m in models if matches(qualified(workspace, m.name), self.cfg.models, on)),
                      key=lambda m: m.name)

    def _versions(self, name: str) -> dict[str, Any]:
        versions = paged(self.client.search_model_versions, filter_string=f"name = {_quoted(name)}", max_results=1000)
        return {str(v.version): v for v in versions}

    def _facts_or_skip(self, model: Any) -> ModelFacts:
        """A model whose data we did not foresee keeps its name and says so; it never fails the poll."""
        try:
            return self._facts(model)
        except Exception as exc:
            if not is_data_error(exc):
                raise
            log.warning("model %s cannot be read: %s: %s", getattr(model, "name", "?"), type(exc).__name__, exc)
            return ModelFacts(str(getattr(model, "name", "?")), 0, (), (), None, "invalid_data")

    def _facts(self, model: Any) -> ModelFacts:
        versions = self._versions(model.name)
        aliases = []
        for alias, number in sorted(_aliases(model)):
            version = versions.get(number)
            aliases.append((alias, number, (version.run_id or "") if version else ""))
        stages = tuple(
            (v.current_stage, number, v.run_id or "")
            for number, v in sorted(versions.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0)
            if v.current_stage in LIVE_STAGES
        )
        lead, unknown = None, ""
        deployed = dict((a, n) for a, n, _ in aliases).get(self.cfg.deploy_alias)
        if deployed is not None:
            lead, unknown = self._lead_time(versions.get(deployed))
        return ModelFacts(model.name, len(versions), tuple(aliases), stages, lead, unknown)

    def _lead_time(self, version: Any) -> tuple[float | None, str]:
        """Seconds from the end of the version's source run to the version's creation."""
        if version is None or not version.run_id:
            return None, "no_run"
        try:
            run = self.client.get_run(version.run_id)  # by id: works whatever experiment it is in
        except MlflowException as exc:
            if is_not_found(exc):
                return None, "run_gone"
            raise
        if not run.info.end_time:
            return None, "run_not_ended"
        # A version registered while its run was still going was ready before the run ended: 0.
        return max(0.0, (version.creation_timestamp - run.info.end_time) / 1000), ""
