"""Every metric module from hand-built data: no MLflow, no endpoint, no server."""

from __future__ import annotations

import pytest

from conftest import render, samples, value
from mlops_kpi_exporter.config import KpiConfig, PricingConfig
from mlops_kpi_exporter.ledger import RunLedger
from mlops_kpi_exporter.views import ArtifactTotals, RunsView
from mlops_kpi_exporter.metrics import exporter, kpis, registry, serving
from mlops_kpi_exporter.metrics.catalogue import BY_NAME
from mlops_kpi_exporter.pricing import Pricer
from mlops_kpi_exporter.runs import MS_PER_HOUR, RunRules, make_facts
from mlops_kpi_exporter.snapshot import SourceState
from mlops_kpi_exporter.sources.endpoints import EndpointReadings
from mlops_kpi_exporter.sources.kpis import KpiReading
from mlops_kpi_exporter.sources.mlflow_runs import render as render_runs
from mlops_kpi_exporter.sources.registry import ModelFacts
from mlops_kpi_exporter.sources.upstream import Traffic

NOW = 1_794_744_000_000  # 2026-11-15 12:00 UTC
RULES = RunRules(Pricer(PricingConfig(default_hourly_cost=1.0)), ("estimator",), "UTC", ("team",))


def run(run_id, status="FINISHED", hours=2.0, ended_ago=1.0, tags=None):
    end = None if status == "RUNNING" else NOW - int(ended_ago * MS_PER_HOUR)
    start = (end or NOW) - int(hours * MS_PER_HOUR)
    return make_facts(RULES, run_id=run_id, experiment_id="1", run_name=run_id, status=status, start_time=start,
                      end_time=end, tags=tags or {}, params={}, now_ms=NOW)


@pytest.fixture
def view():
    ledger = RunLedger((3600.0, 86400.0), (1.0, 10.0))
    ledger.upsert(run("a", tags={"mlops.hourly_cost": "3.0", "estimator": "XGBClassifier", "team": "churn"}))
    ledger.upsert(run("b", status="FAILED", hours=0.5))
    ledger.upsert(run("c", status="RUNNING", hours=1.5, tags={"mlops.hourly_cost": "2.0"}))
    ledger.skip("d", "1", "end_in_future")
    return RunsView(ledger, {"1": "train"}, NOW, RULES, "EUR", allocation_tags=("team",),
                    artifacts=ArtifactTotals({"1": 2**30}, pending=2, errors=1), storage_gb_month=0.5,
                    last_full_sync=NOW / 1000)


def test_runs_figures_from_a_hand_built_ledger(view):
    text = render(render_runs(view))
    m = samples(text)
    assert value(m, "mlops_experiment_cost", experiment="train", status="FINISHED") == pytest.approx(6.0)
    assert value(m, "mlops_experiment_cost", experiment="train", status="FAILED") == pytest.approx(0.5)
    assert value(m, "mlops_experiment_cost", experiment="train", status="RUNNING") == pytest.approx(3.0)
    assert value(m, "mlops_running_hourly_cost", experiment="train") == 2.0
    assert value(m, "mlops_runs_skipped", reason="end_in_future") == 1
    assert value(m, "mlops_runs_by_estimator", experiment="train", estimator="XGBClassifier") == 1
    assert value(m, "mlops_completed_run_duration_seconds_count", experiment="train") == 2
    assert value(m, "mlops_experiment_cost_month_to_date", experiment="train") == pytest.approx(9.5)
    assert not any(name.startswith("mlops_budget") for name, _ in m)  # the derived stage's (test_derived.py)
    assert value(m, "mlops_cost_by_tag", tag="team", value="churn") == pytest.approx(6.0)
    assert value(m, "mlops_cost_by_tag", tag="team", value="untagged") == pytest.approx(3.5)
    assert value(m, "mlops_experiment_storage_monthly_cost", experiment="train") == 0.5
    assert value(m, "mlops_artifact_listing_errors_total") == 1
    assert "Compute cost in EUR" in text and "calendar month in UTC" in text  # help from the catalogue
    assert {name for name, _ in m} <= {s for spec in BY_NAME.values() for s in _series(spec.name, spec.kind)}


def _series(name, kind):
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return {name}


def test_kpi_figures():
    met = KpiReading(KpiConfig(name="acc", metric="accuracy", experiment="e", target=0.9), value=0.95, experiment="e",
                     run_id="r1")
    missing = KpiReading(KpiConfig(name="fpr", metric="fpr", experiment="e", target=0.05,
                                   direction="lower_is_better"), missing="metric_missing")
    m = samples(render(kpis.families([met, missing])))
    assert value(m, "mlops_kpi", kpi="acc", experiment="e") == 0.95
    assert value(m, "mlops_kpi_target_met", kpi="acc") == 1
    assert value(m, "mlops_kpi_missing", kpi="fpr", reason="metric_missing") == 1
    assert ("mlops_kpi", (("experiment", ""), ("kpi", "fpr"))) not in m  # unknown is not zero


def test_registry_figures():
    model = ModelFacts("churn", 3, (("champion", "2", "r2"),), (("Production", "1", "r1"),), 120.0)
    gone = ModelFacts("fraud", 1, (("champion", "1", ""),), (), None, "no_run")
    text = render(registry.families([model, gone], "champion"))
    m = samples(text)
    assert value(m, "mlops_registered_models") == 2
    assert value(m, "mlops_model_deploy_lead_time_seconds", model="churn") == 120
    assert value(m, "mlops_model_deploy_lead_time_unknown", model="fraud", reason="no_run") == 1
    assert "holding the 'champion' alias" in text


def test_serving_figures_and_no_stale_traffic():
    traffic = Traffic()
    traffic.requests.total, traffic.has_errors, traffic.errors.total = 10.0, True, 1.0
    readings = EndpointReadings(
        name="churn", currency="USD", probe_up=True, probes={"success": 3, "timeout": 1}, probe_bounds=(0.1, 1.0),
        probe_buckets=(3, 0, 1), probe_sum=2.5, hourly_cost=1.5, capacity_rps=10.0, metrics_up=True,
        scrapes={"success": 4}, traffic=traffic)
    m = samples(render(serving.families(readings)))
    assert value(m, "mlops_endpoint_probes_total", endpoint="churn", outcome="timeout") == 1
    assert value(m, "mlops_endpoint_probe_duration_seconds_bucket", endpoint="churn", le="1.0") == 3
    assert value(m, "mlops_endpoint_requests_total", endpoint="churn") == 10
    assert value(m, "mlops_endpoint_errors_total", endpoint="churn") == 1
    down = samples(render(serving.families(
        EndpointReadings(**{**readings.__dict__, "metrics_up": False}))))
    assert value(down, "mlops_endpoint_metrics_up", endpoint="churn") == 0
    assert not any(name == "mlops_endpoint_requests_total" for name, _ in down)


def test_exporter_health_figures():
    states = [SourceState("mlflow", up=True, polls_total=3, errors_total=1, last_success=1.0, last_duration=0.2),
              SourceState("kpis")]
    m = samples(render(exporter.health(states, "1.2.3", "EUR", reload_ok=False)))
    assert value(m, "mlops_source_up", source="mlflow") == 1 and value(m, "mlops_source_up", source="kpis") == 0
    assert value(m, "mlops_source_errors_total", source="mlflow") == 1
    assert value(m, "mlops_exporter_info", version="1.2.3", currency="EUR") == 1
    assert value(m, "mlops_exporter_config_last_reload_successful") == 0
    assert not any(name == "mlops_source_last_success_timestamp_seconds" and ("source", "kpis") in labels
                   for name, labels in m)  # absent before the first success


@pytest.mark.parametrize("accept, expected", [
    # Prometheus 3 (scrape_protocols default): it fails a scrape whose Content-Type it does not know
    ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;"
     "version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
     "application/openmetrics-text; version=1.0.0"),
    # Prometheus 2.x
    ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1", "application/openmetrics-text; version=1.0.0"),
    ("", "text/plain; version=0.0.4"),  # curl
])
def test_the_scrape_content_type_is_one_prometheus_2_and_3_accept(accept, expected):
    from prometheus_client.registry import CollectorRegistry

    from mlops_kpi_exporter.server import ExporterApp
    from mlops_kpi_exporter.snapshot import ExporterCollector, SnapshotStore

    store = SnapshotStore()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ExporterCollector(store, "1.0", "USD"))
    body, content_type = ExporterApp(registry, store, "t", {}).render(accept)
    assert content_type.startswith(expected) and body
