"""Model registry figures: models, versions, aliases and legacy stages, and the deployment lead time.

    mlops_registered_models 2.0
    mlops_model_versions{model="churn-classifier"} 3.0
    mlops_model_version_info{alias="champion",model="churn-classifier",run_id="<run id>",version="2"} 1.0
"""

from __future__ import annotations

from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter.metrics.catalogue import family


def families(models: list, deploy_alias: str) -> list[Metric]:
    """`models`: the registry source's ModelFacts of each watched model."""
    count = family("mlops_registered_models")
    count.add_metric([], len(models))
    versions = family("mlops_model_versions")
    alias_info = family("mlops_model_version_info")
    stage_info = family("mlops_model_version_stage_info")
    lead = family("mlops_model_deploy_lead_time_seconds", deploy_alias=deploy_alias)
    unknown = family("mlops_model_deploy_lead_time_unknown")
    for m in models:
        versions.add_metric([m.name], m.versions)
        for alias, number, run_id in m.aliases:
            alias_info.add_metric([m.name, number, alias, run_id], {})
        for stage, number, run_id in m.stages:
            stage_info.add_metric([m.name, number, stage, run_id], {})
        if m.lead_time_seconds is not None:
            lead.add_metric([m.name], m.lead_time_seconds)
        elif m.lead_time_unknown:
            unknown.add_metric([m.name, m.lead_time_unknown], 1)
    return [count, versions, alias_info, stage_info, lead, unknown]
