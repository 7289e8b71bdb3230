"""KPIs, model registry lead time, budgets, allocation and storage against a real `mlflow server`."""

from __future__ import annotations

import time

import pytest

from conftest import HOUR_MS, InProcess, add_run, connected, render, samples, value
from mlops_kpi_exporter.config import config_from_dict
from mlops_kpi_exporter.sources.kpis import KpiSource
from mlops_kpi_exporter.sources.mlflow_runs import MlflowSource
from mlops_kpi_exporter.metrics.costs import fixed_costs
from mlops_kpi_exporter.sources.registry import RegistrySource
from mlops_kpi_exporter.runs import RunRules
from mlops_kpi_exporter.pricing import Pricer
from mlops_kpi_exporter.config import PricingConfig


def config(url: str, prefix: str, **sections):
    return config_from_dict({"mlflow": {"tracking_uri": url, "experiments": [f"{prefix}-*"], "timeout": "5s"}, **sections})


def poll(source):
    """What /metrics shows after one poll of the source; the MLflow source's through the store, so that
    the derived stage's figures (budgets) are in."""
    if isinstance(source, MlflowSource):
        return InProcess(source.config, [source]).poll()
    return samples(render(source.poll()[0]))


def log_metrics(client, run_id: str, **metrics: float) -> None:
    for key, val in metrics.items():
        client.log_metric(run_id, key, val)


def test_kpis_from_each_source_kind(mlflow_server, prefix):
    client = mlflow_server.client()
    exp = client.create_experiment(f"{prefix}-churn")
    now = int(time.time() * 1000)
    old = add_run(client, exp, now - 5 * HOUR_MS, now - 4 * HOUR_MS)
    newer = add_run(client, exp, now - 3 * HOUR_MS, now - 2 * HOUR_MS)
    latest_without = add_run(client, exp, now - 2 * HOUR_MS, now - HOUR_MS)  # ended last, no KPI logged
    running = add_run(client, exp, now - HOUR_MS, None)
    log_metrics(client, old, lift=0.20, fpr=0.01, acc=0.91)
    log_metrics(client, newer, lift=0.08, fpr=0.04, acc=0.80)
    log_metrics(client, running, lift=0.99)  # not finished: never a KPI source
    log_metrics(client, latest_without, other=1.0)
    model = f"{prefix}-model"
    client.create_registered_model(model)
    client.create_model_version(model, "s3://models/m1", run_id=old)
    client.create_model_version(model, "s3://models/m2", run_id=newer)
    client.set_registered_model_alias(model, "champion", "1")
    kpis = [
        {"name": "lift_latest", "metric": "lift", "experiment": f"{prefix}-churn", "target": 0.10},
        {"name": "lift_best", "metric": "lift", "experiment": f"{prefix}-churn", "source": "best_run", "target": 0.10},
        {"name": "fpr_best", "metric": "fpr", "experiment": f"{prefix}-churn", "source": "best_run",
         "direction": "lower_is_better", "target": 0.02},
        {"name": "fpr_latest", "metric": "fpr", "experiment": f"{prefix}-churn", "direction": "lower_is_better",
         "target": 0.02},
        {"name": "champion_acc", "metric": "acc", "source": "model_alias", "model": model, "alias": "champion",
         "target": 0.85},
        {"name": "no_such_metric", "metric": "nope", "experiment": f"{prefix}-churn", "target": 1},
        {"name": "no_such_experiment", "metric": "lift", "experiment": f"{prefix}-gone"},
        {"name": "no_such_alias", "metric": "acc", "source": "model_alias", "model": model, "alias": "ghost"},
    ]
    source = KpiSource(*connected(config(mlflow_server.url, prefix, kpis=kpis)))
    m = poll(source)
    exp_name = f"{prefix}-churn"
    assert value(m, "mlops_kpi", kpi="lift_latest", experiment=exp_name) == 0.08
    assert value(m, "mlops_kpi_target_met", kpi="lift_latest") == 0  # higher is better, 0.08 < 0.10
    assert value(m, "mlops_kpi", kpi="lift_best", experiment=exp_name) == 0.20
    assert value(m, "mlops_kpi_target_met", kpi="lift_best") == 1
    assert value(m, "mlops_kpi", kpi="fpr_best", experiment=exp_name) == 0.01  # lower is better: the min
    assert value(m, "mlops_kpi_target_met", kpi="fpr_best") == 1
    assert value(m, "mlops_kpi_target_met", kpi="fpr_latest") == 0  # 0.04 > 0.02
    assert value(m, "mlops_kpi", kpi="champion_acc", experiment=exp_name) == 0.91
    assert value(m, "mlops_kpi_target", kpi="champion_acc") == 0.85
    info = {dict(k[1])["kpi"]: dict(k[1]) for k in m if k[0] == "mlops_kpi_source_info"}
    assert info["champion_acc"]["run_id"] == old and info["champion_acc"]["version"] == "1"
    assert info["lift_latest"]["run_id"] == newer
    # Missing KPIs are absent with a reason, not zero.
    for kpi, reason in (("no_such_metric", "metric_missing"), ("no_such_experiment", "experiment_not_found"),
                        ("no_such_alias", "alias_not_found")):
        assert value(m, "mlops_kpi_missing", kpi=kpi, reason=reason) == 1
        assert not any(k[0] == "mlops_kpi" and dict(k[1])["kpi"] == kpi for k in m)
        assert not any(k[0] == "mlops_kpi_target_met" and dict(k[1])["kpi"] == kpi for k in m)

    client.set_registered_model_alias(model, "champion", "2")  # the alias moves to a new version
    m = poll(source)
    assert value(m, "mlops_kpi", kpi="champion_acc", experiment=exp_name) == 0.80
    assert value(m, "mlops_kpi_target_met", kpi="champion_acc") == 0


def test_registry_versions_aliases_and_lead_time(mlflow_server, prefix):
    client = mlflow_server.client()
    train = client.create_experiment(f"{prefix}-train")
    elsewhere = client.create_experiment(f"unwatched-{prefix}")  # a run in another experiment
    now = int(time.time() * 1000)
    r1 = add_run(client, train, now - 5 * HOUR_MS, now - 4 * HOUR_MS)
    r2 = add_run(client, elsewhere, now - 3 * HOUR_MS, now - 2 * HOUR_MS)
    model = f"{prefix}-clf"
    client.create_registered_model(model)
    client.create_model_version(model, "s3://models/a", run_id=r1)
    v2 = client.create_model_version(model, "s3://models/b", run_id=r2)
    client.create_model_version(model, "s3://models/c", run_id=None)  # a version with no source run
    client.set_registered_model_alias(model, "champion", "2")
    client.set_registered_model_alias(model, "shadow", "3")
    unrelated = f"other-{prefix}"
    client.create_registered_model(unrelated)
    source = RegistrySource(*connected(config(mlflow_server.url, prefix, registry={"models": [f"{prefix}-*"]})))
    m = poll(source)
    assert value(m, "mlops_registered_models") == 1
    assert value(m, "mlops_model_versions", model=model) == 3
    assert value(m, "mlops_model_version_info", model=model, version="2", alias="champion", run_id=r2) == 1
    assert value(m, "mlops_model_version_info", model=model, version="3", alias="shadow", run_id="") == 1
    expected = (client.get_model_version(model, "2").creation_timestamp - (now - 2 * HOUR_MS)) / 1000
    assert value(m, "mlops_model_deploy_lead_time_seconds", model=model) == pytest.approx(expected, abs=1e-6)
    assert v2.run_id == r2

    client.set_registered_model_alias(model, "champion", "3")  # now the champion has no run
    m = poll(source)
    assert value(m, "mlops_model_deploy_lead_time_unknown", model=model, reason="no_run") == 1
    assert not any(k[0] == "mlops_model_deploy_lead_time_seconds" for k in m)


def test_month_to_date_splits_runs_at_the_month_boundary(mlflow_server, prefix):
    client = mlflow_server.client()
    exp = client.create_experiment(f"{prefix}-monthly")
    other = client.create_experiment(f"{prefix}-other")
    rules = RunRules(Pricer(PricingConfig()), ("estimator",), "UTC")
    now = int(time.time() * 1000)
    _, month_start, next_month = rules.month_bounds(now)
    clock_ms = month_start + 10 * 24 * HOUR_MS  # the 11th of this month, 00:00 UTC
    # 2 h in the previous month, 1 h in this one: only 1 h of p3.2xlarge counts this month.
    add_run(client, exp, month_start - 2 * HOUR_MS, month_start + HOUR_MS, tags={"instance_type": "p3.2xlarge"})
    add_run(client, exp, month_start - 30 * 24 * HOUR_MS, month_start - 29 * 24 * HOUR_MS, tags={"instance_type": "p3.2xlarge"})
    # Running since 3 h before the month started: 10 days x 24 h of it fall in this month.
    alive = add_run(client, other, month_start - 3 * HOUR_MS, None, tags={"instance_type": "m5.large"})
    client.log_metric(alive, "loss", 0.1, timestamp=clock_ms - HOUR_MS)  # alive: it logged an hour ago
    budgets = [{"name": "monthly", "experiments": f"{prefix}-monthly", "monthly": 100},
               {"name": "everything", "experiments": [f"{prefix}-*"], "monthly": 500}]
    source = MlflowSource(*connected(config(mlflow_server.url, prefix, budgets=budgets)), clock=lambda: clock_ms / 1000)
    m = poll(source)
    month_fraction = (next_month - month_start) / (clock_ms - month_start)
    assert value(m, "mlops_experiment_cost_month_to_date", experiment=f"{prefix}-monthly") == pytest.approx(3.06, abs=1e-9)
    assert value(m, "mlops_experiment_cost", experiment=f"{prefix}-monthly", status="FINISHED") == pytest.approx(3.06 * 3 + 3.06 * 24)
    running_mtd = 0.096 * 240
    assert value(m, "mlops_experiment_cost_month_to_date", experiment=f"{prefix}-other") == pytest.approx(running_mtd, abs=1e-9)
    assert value(m, "mlops_experiment_cost_forecast_month", experiment=f"{prefix}-monthly") == pytest.approx(3.06 * month_fraction)
    assert value(m, "mlops_budget_monthly", budget="monthly") == 100
    assert value(m, "mlops_budget_cost_month_to_date", budget="monthly") == pytest.approx(3.06)
    assert value(m, "mlops_budget_cost_month_to_date", budget="everything") == pytest.approx(3.06 + running_mtd)
    assert value(m, "mlops_budget_cost_forecast_month", budget="everything") == pytest.approx((3.06 + running_mtd) * month_fraction)


def test_month_split_in_a_time_zone_with_dst():
    rules = RunRules(Pricer(PricingConfig()), (), "America/New_York")
    key, first, following = rules.month_bounds(1_762_000_000_000)  # 2025-11-01 12:26 UTC = 08:26 EDT
    assert key == "2025-11" and (following - first) == (30 * 24 + 1) * HOUR_MS  # November gains the DST hour
    pieces = rules.month_costs(1.0, first - HOUR_MS, first + 2 * HOUR_MS)
    assert pieces == (("2025-10", 1_000_000_000), ("2025-11", 2_000_000_000))


def test_allocation_by_tag_adds_up_and_is_bounded(mlflow_server, prefix):
    client = mlflow_server.client()
    exp = client.create_experiment(f"{prefix}-alloc")
    now = int(time.time() * 1000)
    for team, hours in (("a", 1), ("a", 2), ("b", 1), ("c", 4), ("d", 1), (None, 3)):
        tags = {"mlops.hourly_cost": "1"} | ({"team": team} if team else {})
        add_run(client, exp, now - 10 * HOUR_MS, now - 10 * HOUR_MS + hours * HOUR_MS, tags=tags)
    add_run(client, exp, now - HOUR_MS, None, tags={"mlops.hourly_cost": "2", "team": "b"})
    source = MlflowSource(*connected(config(mlflow_server.url, prefix, allocation={"tags": ["team", "env"], "max_values": 3})),
                          clock=lambda: now / 1000)
    m = poll(source)
    team = {dict(k[1])["value"]: v for k, v in m.items() if k[0] == "mlops_cost_by_tag" and dict(k[1])["tag"] == "team"}
    # top 3 named values (a and b tie at 3: kept by name), untagged always shown, the rest as "other"
    assert team == pytest.approx({"c": 4, "a": 3, "b": 3, "untagged": 3, "other": 1})
    env = {dict(k[1])["value"]: v for k, v in m.items() if k[0] == "mlops_cost_by_tag" and dict(k[1])["tag"] == "env"}
    total = sum(v for k, v in m.items() if k[0] == "mlops_experiment_cost")
    assert env == pytest.approx({"untagged": total}) and sum(team.values()) == pytest.approx(total)


def test_artifact_storage_bytes_of_real_artifacts(mlflow_server, prefix, tmp_path):
    client = mlflow_server.client()
    exp = client.create_experiment(f"{prefix}-store")
    now = int(time.time() * 1000)
    run = client.create_run(exp, start_time=now - HOUR_MS)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(b"w" * 5000)
    (tmp_path / "model" / "nested").mkdir()
    (tmp_path / "model" / "nested" / "vocab.txt").write_bytes(b"v" * 1234)
    (tmp_path / "report.txt").write_bytes(b"r" * 100)
    client.log_artifacts(run.info.run_id, str(tmp_path / "model"), "model")
    client.log_artifact(run.info.run_id, str(tmp_path / "report.txt"))
    client.set_terminated(run.info.run_id, "FINISHED", end_time=now)
    running = client.create_run(exp, start_time=now - HOUR_MS)  # not listed until it ends
    client.log_artifact(running.info.run_id, str(tmp_path / "report.txt"))
    source = MlflowSource(*connected(config(mlflow_server.url, prefix, artifacts={"enabled": True},
                                 pricing={"storage_gb_month": 0.10})))
    m = poll(source)
    assert value(m, "mlops_experiment_artifact_bytes", experiment=f"{prefix}-store") == 6334
    assert value(m, "mlops_experiment_storage_monthly_cost", experiment=f"{prefix}-store") == pytest.approx(6334 / 2**30 * 0.10)
    assert value(m, "mlops_artifact_runs_pending") == 0
    listed = dict(source.artifacts.bytes)
    client.set_terminated(running.info.run_id, "FINISHED", end_time=now)
    m = poll(source)  # the newly finished run is listed; the first is not listed again
    assert value(m, "mlops_experiment_artifact_bytes", experiment=f"{prefix}-store") == 6434
    assert source.artifacts.bytes[run.info.run_id] == listed[run.info.run_id]


def test_fixed_costs_from_config():
    cfg = config_from_dict({
        "mlflow": {"tracking_uri": "sqlite:///x.db"},
        "fixed_costs": [{"category": "personnel", "monthly": 30000}, {"category": "data", "monthly": 500, "project": "churn"},
                        {"category": "data", "monthly": 250, "project": "churn"}],
    })
    m = samples(render(fixed_costs(cfg)))
    assert value(m, "mlops_fixed_cost_monthly", category="personnel", project="shared") == 30000
    assert value(m, "mlops_fixed_cost_monthly", category="data", project="churn") == 750


def test_versions_whose_run_was_deleted_or_purged(mlflow_server, prefix):
    """A soft-deleted run still has its times; a purged one is gone: lead time and KPI say so."""
    import subprocess

    from conftest import BIN, child_env

    client = mlflow_server.client()
    exp = client.create_experiment(f"{prefix}-gc")
    now = int(time.time() * 1000)
    deleted = add_run(client, exp, now - 3 * HOUR_MS, now - 2 * HOUR_MS)
    purged = add_run(client, exp, now - 3 * HOUR_MS, now - 2 * HOUR_MS)
    log_metrics(client, purged, acc=0.9)
    for name, run_id in (("soft", deleted), ("hard", purged)):
        client.create_registered_model(f"{prefix}-{name}")
        client.create_model_version(f"{prefix}-{name}", f"s3://models/{name}", run_id=run_id)
        client.set_registered_model_alias(f"{prefix}-{name}", "champion", "1")
    client.delete_run(deleted)
    client.delete_run(purged)
    gc = subprocess.run([str(BIN / "mlflow"), "gc", "--backend-store-uri", f"sqlite:///{mlflow_server.db}",
                         "--tracking-uri", mlflow_server.url, "--run-ids", purged], capture_output=True, text=True, env=child_env(), timeout=120)
    assert gc.returncode == 0, gc.stderr
    cfg = config(mlflow_server.url, prefix, registry={"models": [f"{prefix}-*"]},
                 kpis=[{"name": "acc", "metric": "acc", "source": "model_alias", "model": f"{prefix}-hard", "alias": "champion"}])
    m = poll(RegistrySource(*connected(cfg)))
    assert value(m, "mlops_model_deploy_lead_time_seconds", model=f"{prefix}-soft") > 0
    assert value(m, "mlops_model_deploy_lead_time_unknown", model=f"{prefix}-hard", reason="run_gone") == 1
    m = poll(KpiSource(*connected(cfg)))
    assert value(m, "mlops_kpi_missing", kpi="acc", reason="run_gone") == 1


def test_forecast_in_the_first_minutes_of_a_month_is_not_wild(mlflow_server, prefix):
    client = mlflow_server.client()
    exp = client.create_experiment(f"{prefix}-early")
    rules = RunRules(Pricer(PricingConfig()), ("estimator",), "UTC")
    _, month_start, next_month = rules.month_bounds(int(time.time() * 1000))
    clock_ms = month_start + 10 * 60_000  # 00:10 on the 1st
    add_run(client, exp, month_start - HOUR_MS, None, tags={"instance_type": "p3.2xlarge"})  # a GPU job running
    m = poll(MlflowSource(*connected(config(mlflow_server.url, prefix)), clock=lambda: clock_ms / 1000))
    mtd = 3.06 / 6  # ten minutes of it this month
    assert value(m, "mlops_experiment_cost_month_to_date", experiment=f"{prefix}-early") == pytest.approx(mtd)
    days = (next_month - month_start) / (24 * HOUR_MS)
    assert value(m, "mlops_experiment_cost_forecast_month", experiment=f"{prefix}-early") == pytest.approx(mtd * days)
