"""The MLflow source against a real `mlflow server`: exact costs, counts, hours and estimators."""

from __future__ import annotations

import json
import time

import pytest

from conftest import HOUR_MS, add_run, render, samples, value, connected
from mlops_kpi_exporter.config import config_from_dict
from mlops_kpi_exporter.sources.mlflow_runs import MlflowSource

MIN_MS = 60_000


def make_config(url: str, prefix: str, pricing: dict | None = None, **runs):
    return config_from_dict(
        {
            "mlflow": {
                "tracking_uri": url,
                "experiments": [f"{prefix}-*"],
                "poll_interval": "1s",
                "resync_interval": "1h",
                "timeout": "5s",
                "retry_backoff": "1s",
            },
            "pricing": {"default_hourly_cost": 0.2, "instances": {"onprem-gpu": 2.0}, **(pricing or {})},
            "runs": {"max_run_series": 3, **runs},
        }
    )


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def seeded(mlflow_server, prefix):
    """Known runs in '<prefix>-train' and '<prefix>-tune', and an experiment the globs exclude."""
    client = mlflow_server.client()
    now_ms = int(time.time() * 1000)
    midnight = now_ms - now_ms % (24 * HOUR_MS) - 2 * 24 * HOUR_MS  # two days ago, 00:00 UTC
    train = client.create_experiment(f"{prefix}-train")
    tune = client.create_experiment(f"{prefix}-tune")
    other = client.create_experiment(f"other-{prefix}")
    ids = {
        "A": add_run(client, train, midnight + 9 * HOUR_MS, midnight + 9 * HOUR_MS + int(2.5 * HOUR_MS),
                     tags={"instance_type": "p3.2xlarge", "estimator": "XGBClassifier"}, name="run-a"),
        "B": add_run(client, train, midnight + 14 * HOUR_MS, midnight + 15 * HOUR_MS, "FAILED",
                     tags={"instance_type": "m5.xlarge"}, params={"instance_count": 2, "estimator": "RandomForest"}),
        "C": add_run(client, train, midnight + 14 * HOUR_MS + 40 * MIN_MS, midnight + 15 * HOUR_MS + 10 * MIN_MS,
                     tags={"mlops.hourly_cost": "1.5", "instance_type": "p3.2xlarge", "estimator": "XGBClassifier"},
                     name="run-c"),
        "D": add_run(client, train, midnight + 23 * HOUR_MS, midnight + 24 * HOUR_MS,
                     tags={"instance_type": "mystery-box"}, name="run-d"),
        "E": add_run(client, train, midnight + 3 * HOUR_MS, midnight + 3 * HOUR_MS + 15 * MIN_MS, "KILLED",
                     tags={"instance_type": "onprem-gpu", "estimator": "TwoTower"}),
        # Runs that cannot be costed: skipped and counted, never a crash or a wrong number.
        "F": add_run(client, train, midnight + 10 * HOUR_MS, midnight + 9 * HOUR_MS, tags={"instance_type": "m5.xlarge"}),
        "G": add_run(client, train, midnight + 10 * HOUR_MS, midnight + 11 * HOUR_MS, tags={"mlops.hourly_cost": "abc"}),
        "H": add_run(client, train, midnight + 10 * HOUR_MS, midnight + 11 * HOUR_MS,
                     tags={"instance_type": "m5.xlarge", "instance_count": "0"}),
        "R": add_run(client, tune, now_ms - HOUR_MS, None, tags={"instance_type": "g4dn.xlarge", "estimator": "LGBM"},
                     name="running-r"),
    }
    add_run(client, other, midnight, midnight + HOUR_MS, tags={"instance_type": "p3.16xlarge"})
    return {"client": client, "ids": ids, "now_ms": now_ms, "midnight": midnight, "train": train, "tune": tune}


def poll(source: MlflowSource):
    families, summary = source.poll()
    return samples(render(families)), summary


def test_costs_counts_hours_and_estimators_are_exact(mlflow_server, prefix, seeded):
    clock = Clock((seeded["now_ms"] + 0) / 1000)  # the running run started exactly 1 h before
    source = MlflowSource(*connected(make_config(mlflow_server.url, prefix)), clock=clock)
    m, summary = poll(source)
    train, tune = f"{prefix}-train", f"{prefix}-tune"
    assert "full sync" in summary

    # cost = hourly rate x run time: tag beats catalog, params name the count, unknown -> default
    assert value(m, "mlops_experiment_cost", experiment=train, status="FINISHED") == pytest.approx(7.65 + 0.75 + 0.2, abs=1e-9)
    assert value(m, "mlops_experiment_cost", experiment=train, status="FAILED") == pytest.approx(0.192 * 2, abs=1e-9)
    assert value(m, "mlops_experiment_cost", experiment=train, status="KILLED") == pytest.approx(0.5, abs=1e-9)
    assert value(m, "mlops_experiment_cost", experiment=tune, status="RUNNING") == pytest.approx(0.526, abs=1e-9)
    assert value(m, "mlops_experiment_run_seconds", experiment=train, status="FINISHED") == 9000 + 1800 + 3600
    assert value(m, "mlops_runs", experiment=train, status="FINISHED") == 3
    assert value(m, "mlops_runs", experiment=train, status="FAILED") == 1
    assert value(m, "mlops_runs", experiment=tune, status="RUNNING") == 1
    assert value(m, "mlops_running_hourly_cost", experiment=tune) == pytest.approx(0.526)
    assert value(m, "mlops_running_hourly_cost", experiment=train) == 0
    # excluded experiment is nowhere
    assert not any(f"other-{prefix}" in str(k) for k in m)

    hours = {h: value(m, "mlops_runs_by_start_hour", experiment=train, hour=str(h)) for h in range(24)}
    assert hours == {h: (1 if h in (3, 9, 23) else 2 if h == 14 else 0) for h in range(24)}
    assert value(m, "mlops_runs_by_estimator", experiment=train, estimator="XGBClassifier") == 2
    assert value(m, "mlops_runs_by_estimator", experiment=train, estimator="RandomForest") == 1
    assert value(m, "mlops_runs_by_estimator", experiment=train, estimator="unknown") == 1
    assert value(m, "mlops_runs_by_estimator", experiment=tune, estimator="LGBM") == 1

    assert value(m, "mlops_runs_skipped", reason="end_before_start") == 1
    assert value(m, "mlops_runs_skipped", reason="invalid_hourly_cost") == 1
    assert value(m, "mlops_runs_skipped", reason="invalid_instance_count") == 1
    assert value(m, "mlops_runs_skipped", reason="missing_start_time") == 0
    assert value(m, "mlops_runs_by_price_source", experiment=train, source="default") == 1
    assert value(m, "mlops_runs_by_price_source", experiment=train, source="config") == 1
    assert value(m, "mlops_runs_by_price_source", experiment=train, source="tag") == 1

    # completed-run histograms: durations 9000, 3600, 1800, 3600, 900 s
    bucket = lambda le: value(m, "mlops_completed_run_duration_seconds_bucket", experiment=train, le=le)  # noqa: E731
    assert [bucket(le) for le in ("900.0", "1800.0", "3600.0", "7200.0", "14400.0", "+Inf")] == [1, 2, 4, 4, 5, 5]
    assert value(m, "mlops_completed_run_duration_seconds_sum", experiment=train) == 18900
    assert value(m, "mlops_completed_run_cost_count", experiment=train) == 5

    # per-run series: the running run, then the two most recently ended (D, then C)
    ids = seeded["ids"]
    series = {dict(labels)["run_id"]: v for (name, labels), v in m.items() if name == "mlops_run_cost"}
    assert list(series) == [ids["R"], ids["D"], ids["C"]]
    assert series[ids["C"]] == pytest.approx(0.75)
    assert value(m, "mlops_run_info", experiment=train, run_id=ids["D"], run_name="run-d", status="FINISHED",
                 instance_type="mystery-box", estimator="unknown", price_source="default", parent_run_id="",
                 machine="own") == 1


def test_running_run_cost_grows_between_polls(mlflow_server, prefix, seeded):
    clock = Clock(seeded["now_ms"] / 1000)
    source = MlflowSource(*connected(make_config(mlflow_server.url, prefix)), clock=clock)
    tune = f"{prefix}-tune"
    first, _ = poll(source)
    clock.t += 1800
    second, summary = poll(source)
    assert "incremental" in summary
    assert value(first, "mlops_experiment_cost", experiment=tune, status="RUNNING") == pytest.approx(0.526)
    assert value(second, "mlops_experiment_cost", experiment=tune, status="RUNNING") == pytest.approx(0.526 * 1.5)
    assert value(second, "mlops_experiment_run_seconds", experiment=tune, status="RUNNING") == pytest.approx(5400)


def test_incremental_poll_sees_changes_and_resync_reconciles_deletions(mlflow_server, prefix, seeded):
    client, ids, now_ms = seeded["client"], seeded["ids"], seeded["now_ms"]
    clock = Clock(now_ms / 1000)
    source = MlflowSource(*connected(make_config(mlflow_server.url, prefix)), clock=clock)
    train, tune = f"{prefix}-train", f"{prefix}-tune"
    poll(source)

    clock.t += 60
    new_run = add_run(client, seeded["train"], now_ms - HOUR_MS, now_ms, tags={"instance_type": "p3.2xlarge"})
    # The running run ends with a clock far behind ours: its end time is older than the watermark.
    client.set_terminated(ids["R"], "FINISHED", end_time=now_ms - HOUR_MS + 30 * MIN_MS)
    late = client.create_experiment(f"{prefix}-late")  # a new experiment: its whole history is read
    add_run(client, late, now_ms - 20 * 24 * HOUR_MS, now_ms - 20 * 24 * HOUR_MS + HOUR_MS, tags={"instance_type": "m5.xlarge"})
    client.delete_run(ids["D"])
    m, summary = poll(source)
    assert "incremental" in summary
    assert value(m, "mlops_experiment_cost", experiment=train, status="FINISHED") == pytest.approx(8.6 + 3.06)
    assert value(m, "mlops_runs", experiment=tune, status="FINISHED") == 1
    assert value(m, "mlops_experiment_cost", experiment=tune, status="FINISHED") == pytest.approx(0.263)
    assert ("mlops_runs", (("experiment", tune), ("status", "RUNNING"))) not in m
    assert value(m, "mlops_running_hourly_cost", experiment=tune) == 0
    assert value(m, "mlops_experiment_cost", experiment=f"{prefix}-late", status="FINISHED") == pytest.approx(0.192)

    clock.t += 3600  # resync_interval: a full reconciliation drops the deleted run
    m, summary = poll(source)
    assert "full sync" in summary
    assert value(m, "mlops_experiment_cost", experiment=train, status="FINISHED") == pytest.approx(8.6 - 0.2 + 3.06)
    assert value(m, "mlops_runs", experiment=train, status="FINISHED") == 3
    assert new_run in {dict(k[1]).get("run_id") for k in m if k[0] == "mlops_run_cost"}


def test_restart_gives_identical_totals(mlflow_server, prefix, seeded):
    """A new exporter process recomputes the same figures from MLflow: a restart never looks like spend."""
    clock = Clock(seeded["now_ms"] / 1000)
    first = render(MlflowSource(*connected(make_config(mlflow_server.url, prefix)), clock=clock).poll()[0])
    second = render(MlflowSource(*connected(make_config(mlflow_server.url, prefix)), clock=clock).poll()[0])
    assert first == second
    assert "mlops_experiment_cost{" in first


def test_per_run_series_are_bounded(mlflow_server, prefix):
    client = mlflow_server.client()
    exp = client.create_experiment(f"{prefix}-many")
    now_ms = int(time.time() * 1000)
    for i in range(30):
        add_run(client, exp, now_ms - (i + 2) * HOUR_MS, now_ms - (i + 1) * HOUR_MS, tags={"estimator": f"est-{i % 6}"})
    source = MlflowSource(*connected(make_config(mlflow_server.url, prefix, max_run_series=5, max_estimators=3)))
    m, _ = poll(source)
    assert sum(1 for k in m if k[0] == "mlops_run_cost") == 5
    estimators = {dict(k[1])["estimator"]: v for k, v in m.items() if k[0] == "mlops_runs_by_estimator"}
    assert len(estimators) == 4 and estimators["other"] == 15  # 3 kept (5 runs each) + the rest
    assert sum(estimators.values()) == 30


def test_a_databricks_run_is_priced_from_its_cluster_info_alone(mlflow_server, prefix):
    """Issue 27: a run with no machine tag, only the cluster Databricks recorded, is priced from the
    catalog's VMs and the configured DBU rates."""
    client = mlflow_server.client()
    exp = client.create_experiment(f"{prefix}-dbx")
    now_ms = int(time.time() * 1000)
    cluster = {"cluster_name": "x", "spark_version": "13.1.x-cpu-ml-scala2.12", "node_type_id": "i3.xlarge",
               "driver_node_type_id": "m5.4xlarge", "autotermination_minutes": 120, "num_workers": 1}
    run = add_run(client, exp, now_ms - 3 * HOUR_MS, now_ms - HOUR_MS, name="dbx-job",
                  tags={"mlflow.databricks.cluster.info": json.dumps(cluster)})
    dbx = {"databricks": {"dbu_price": 0.15, "dbus_per_hour": {"i3.xlarge": 1.0, "m5.4xlarge": 2.74}}}
    m, _ = poll(MlflowSource(*connected(make_config(mlflow_server.url, prefix, pricing=dbx))))
    labels = {"experiment": f"{prefix}-dbx", "run_id": run, "run_name": "dbx-job", "status": "FINISHED"}
    # 1 x (0.312 + 1.0 x 0.15) + 1 x (0.768 + 2.74 x 0.15) = 1.641 an hour, for two hours
    assert value(m, "mlops_run_cost", **labels) == 3.282
    assert value(m, "mlops_run_hourly_cost", **labels) == pytest.approx(1.641, abs=1e-12)
    assert value(m, "mlops_run_info", **labels, instance_type="i3.xlarge", estimator="unknown", price_source="databricks",
                 parent_run_id="", machine="own") == 1
    assert value(m, "mlops_runs_by_price_source", experiment=f"{prefix}-dbx", source="databricks") == 1


def test_a_resync_in_place_ends_where_a_fresh_exporter_starts(mlflow_server, prefix, seeded):
    """The hourly resync updates the ledger in place: what incremental polls cannot see (a tag edited on
    an old run, a deleted run, a skipped run deleted) is reconciled, and the figures then equal those
    of an exporter that starts now, read with other page sizes and concurrencies."""
    client, ids, now_ms = seeded["client"], seeded["ids"], seeded["now_ms"]
    clock = Clock(now_ms / 1000)
    source = MlflowSource(*connected(make_config(mlflow_server.url, prefix)), clock=clock)
    poll(source)
    ledger = source.ledger
    client.set_tag(ids["A"], "instance_type", "m5.xlarge")  # old run: no incremental search finds it
    client.delete_run(ids["B"])
    client.delete_run(ids["F"])  # a skipped run
    clock.t += 60
    m, summary = poll(source)
    assert "incremental" in summary
    assert source.ledger.runs[ids["A"]].instance_type == "p3.2xlarge" and ids["F"] in source.ledger.skipped

    clock.t += 3600
    resynced, summary = poll(source)
    assert "full sync" in summary and "3 changed" in summary  # A re-priced, B and F gone
    assert source.ledger is ledger  # the same ledger, updated in place
    assert source.ledger.runs[ids["A"]].instance_type == "m5.xlarge"
    assert ids["B"] not in source.ledger.runs and ids["F"] not in source.ledger.skipped
    for mlflow in ({"page_size": 1, "concurrency": 4}, {"page_size": 2, "concurrency": 1}):
        config = make_config(mlflow_server.url, prefix)
        config = config.model_copy(update={"mlflow": config.mlflow.model_copy(update=mlflow)})
        fresh, _ = poll(MlflowSource(*connected(config), clock=clock))
        assert fresh == resynced, mlflow
