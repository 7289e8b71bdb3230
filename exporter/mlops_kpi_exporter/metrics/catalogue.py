"""Every metric the exporter exposes, declared once: name as exposed, type, labels, help, meaning.

The metric modules build their families from here (`family(...)`), the README's metric reference is
generated from here (`python -m mlops_kpi_exporter.metrics.catalogue --write README.md`), and the
tests check that every metric named by a dashboard, a rule or a PromQL test is declared here with
the labels it uses. A name is written as Prometheus shows it: `mlops_endpoint_requests_total`, not
the `mlops_endpoint_requests` that prometheus-client is given.

The declarations (MetricSpec, in spec.py) are kept by area: catalogue_runs (MLflow runs' costs,
activity, budgets, idle spend), catalogue_service (KPIs, registry, serving, exporter health),
catalogue_spend (the cloud bill, GenAI traces, the bill joined to runs) and catalogue_gateway (the AI
Gateway's budgets). CATALOGUE puts them together in the README's order.

Help texts may use {currency}, {timezone} (runs.timezone), {deploy_alias} (registry.deploy_alias)
and {polled}; nothing else is filled in.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter.metrics.catalogue_gateway import GATEWAY
from mlops_kpi_exporter.metrics.catalogue_runs import ACTIVITY, BUDGETS, COSTS, UTILIZATION
from mlops_kpi_exporter.metrics.catalogue_service import EXPORTER, KPIS, REGISTRY, SERVING
from mlops_kpi_exporter.metrics.catalogue_spend import BILL_JOIN, BILLING, GENAI
from mlops_kpi_exporter.metrics.spec import MetricSpec

# The README's order: by area, as the metric modules render them.
CATALOGUE: tuple[MetricSpec, ...] = (*COSTS, *ACTIVITY, *BUDGETS, *KPIS, *REGISTRY, *SERVING, *UTILIZATION, *BILLING,
                                     *GENAI, *GATEWAY, *BILL_JOIN, *EXPORTER)
BY_NAME = {spec.name: spec for spec in CATALOGUE}


def _workspace_label(spec: MetricSpec) -> str | None:
    """The label that names a tenant's thing, qualified as workspace/name when MLflow has workspaces:
    the experiment, a registered model (GenAI's and serving's `model` are not the registry's), or an AI
    Gateway budget policy."""
    if "experiment" in spec.labels:
        return "experiment"
    if spec.area == "registry" and "model" in spec.labels:
        return "model"
    return "policy" if spec.area == "gateway" and "policy" in spec.labels else None


def labels_shown(spec: MetricSpec) -> tuple[str, ...]:
    """The labels a metric may show: its own, and `workspace` where MLflow has workspaces."""
    return (*spec.labels, "workspace") if _workspace_label(spec) else spec.labels


# Family name (as prometheus_client holds it: no _total or _info) -> the label split into `workspace`
# and the name (mlflow_workspaces.split_workspace_labels).
WORKSPACE_SPLIT = {spec.name.removesuffix("_total" if spec.kind == "counter" else "_info" if spec.kind == "info" else ""): label
                   for spec in CATALOGUE if (label := _workspace_label(spec))}


def family(name: str, **values: str) -> Metric:
    """The empty family of a declared metric, by the name Prometheus shows (KeyError for any other)."""
    return BY_NAME[name].family(**values)


def series_names(spec: MetricSpec) -> tuple[str, ...]:
    """The sample names a metric shows up as in PromQL."""
    if spec.kind == "histogram":
        return tuple(f"{spec.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return (spec.name,)


def reference_table() -> str:
    """The README's metric reference, in markdown."""
    kinds = {"info": "info (gauge)"}
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for spec in CATALOGUE:
        labels = ", ".join(spec.labels) or "-"
        rows.append(f"| `{spec.name}` | {kinds.get(spec.kind, spec.kind)} | {labels} | {spec.meaning} |")
    return "\n".join(rows) + "\n"


BEGIN = "<!-- metric reference: generated from exporter/mlops_kpi_exporter/metrics/catalogue.py (make generate) -->\n"
END = "<!-- end of metric reference -->\n"


def with_reference(readme: str) -> str:
    """The README with its generated metric reference brought up to date."""
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(readme):
        raise ValueError("the README has no generated metric reference markers")
    return pattern.sub(lambda _: BEGIN + reference_table() + END, readme)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--write":
        sys.exit("usage: python -m mlops_kpi_exporter.metrics.catalogue --write README.md")
    path = Path(sys.argv[2])
    path.write_text(with_reference(path.read_text(encoding="utf-8")), encoding="utf-8")
