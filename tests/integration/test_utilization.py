"""Money spent idle: utilization from MLflow system metrics on a real MLflow server; idle costs worked
out by hand from the histories logged here."""

from __future__ import annotations

import time

import pytest
from mlflow.entities import Metric

from conftest import HOUR_MS, add_run, connected, render, samples, value
from mlops_kpi_exporter.config import config_from_dict
from mlops_kpi_exporter.sources.mlflow_runs import MlflowSource

GPU0, GPU1 = "system/gpu_0_utilization_percentage", "system/gpu_1_utilization_percentage"
MEM0, CPU = "system/gpu_0_memory_usage_percentage", "system/cpu_utilization_percentage"


@pytest.fixture
def store(mlflow_server, prefix):
    client = mlflow_server.client()
    now = int(time.time() * 1000)
    exp = client.create_experiment(f"{prefix}-train")
    runs = {}

    def run(name, machine, start, end, history, status="FINISHED"):
        run_id = add_run(client, exp, start, None, tags={"instance_type": machine}, name=name)
        for key, values in history.items():
            metrics = [Metric(key, float(v), start + i * 10_000, i) for i, v in enumerate(values)]
            for i in range(0, len(metrics), 1000):
                client.log_batch(run_id, metrics=metrics[i:i + 1000])
        if end is not None:
            client.set_terminated(run_id, status, end_time=end)
        runs[name] = run_id

    # a well-fed GPU job: 2 h on a g4dn.xlarge (0.526/h), GPU 20-80 % (mean 50 %), memory peak 90 %
    run("fed", "g4dn.xlarge", now - 10 * HOUR_MS, now - 8 * HOUR_MS,
        {GPU0: [20, 40, 60, 80], MEM0: [50, 90, 70, 60], CPU: [30, 30, 30, 30]})
    # two GPUs, one starved: 1 h on a p3.2xlarge (3.06/h), GPU 0 at 100 %, GPU 1 at 50 %: mean 75 %
    run("starved", "p3.2xlarge", now - 7 * HOUR_MS, now - 6 * HOUR_MS, {GPU0: [100, 100], GPU1: [50, 50]})
    # a CPU job: 10 h on an m5.large (0.096/h) at 25 %
    run("cpu", "m5.large", now - 20 * HOUR_MS, now - 10 * HOUR_MS, {CPU: [25, 25, 25]})
    # no system metrics at all: counted, never guessed
    run("blind", "p3.2xlarge", now - 5 * HOUR_MS, now - 4 * HOUR_MS, {"loss": [1, 0.5]})
    # a thousand points a metric: read within the point budget
    run("long", "g4dn.xlarge", now - 30 * HOUR_MS, now - 29 * HOUR_MS, {GPU0: [40] * 1000})
    # running now: its latest value, 30 %
    run("live", "g4dn.xlarge", now - HOUR_MS, None, {GPU0: [90, 30]})
    config = config_from_dict({"mlflow": {"tracking_uri": mlflow_server.url, "experiments": [f"{prefix}-*"]},
                               "utilization": {"max_points": 50, "max_runs_per_poll": 3}})
    return config, runs, now, f"{prefix}-train"


def test_idle_cost_from_known_utilization_histories(store):
    config, runs, now, exp = store
    clock = [now / 1000]
    source = MlflowSource(*connected(config), clock=lambda: clock[0])
    m = samples(render(source.poll()[0]))
    assert value(m, "mlops_utilization_runs_pending") == 1  # four completed runs with system metrics, three a poll
    m = samples(render(source.poll()[0]))
    assert value(m, "mlops_utilization_runs_pending") == 0
    reader = source.utilization
    assert reader.points <= 8 + 4 + 4 + 4 + 2 + 3 + 50  # the long run's thousand points came as 50

    fed, starved, cpu, long = 0.526 * 2, 3.06, 0.096 * 10, 0.526
    live = 0.526 * (now - (now - HOUR_MS)) / HOUR_MS
    idle = fed * 0.5 + starved * 0.25 + cpu * 0.75 + long * 0.6 + live * 0.7
    assert value(m, "mlops_experiment_idle_cost", experiment=exp) == pytest.approx(idle, rel=1e-6)
    gpu = (fed * 0.5 + starved * 0.75 + long * 0.4) / (fed + starved + long)
    assert value(m, "mlops_experiment_utilization_ratio", experiment=exp, resource="gpu") == pytest.approx(gpu)
    assert value(m, "mlops_experiment_utilization_ratio", experiment=exp, resource="cpu") == pytest.approx(
        (fed * 0.3 + cpu * 0.25) / (fed + cpu))
    assert value(m, "mlops_experiment_utilization_ratio", experiment=exp, resource="gpu_memory") == pytest.approx(0.9)
    assert value(m, "mlops_runs_with_system_metrics", experiment=exp) == 5
    assert value(m, "mlops_runs_without_system_metrics", experiment=exp) == 1
    assert value(m, "mlops_run_utilization_ratio", experiment=exp, run_id=runs["live"], run_name="live",
                 status="RUNNING", resource="gpu") == pytest.approx(0.3)
    assert value(m, "mlops_run_utilization_ratio", experiment=exp, run_id=runs["starved"], run_name="starved",
                 status="FINISHED", resource="gpu") == pytest.approx(0.75)

    # a full resync later: the cached runs are not read again
    requests = reader.requests
    clock[0] += config.mlflow.resync_interval + 60
    synced = source.runs.last_full_sync
    source.poll()
    assert source.runs.last_full_sync != synced  # that poll was a full resync
    assert reader.requests == requests


def test_the_report_says_where_the_money_idled(store):
    import io
    import json

    from mlops_kpi_exporter.report import Period, write_report

    config, runs, now, exp = store
    out = io.StringIO()
    write_report(config, connected(config)[1], Period(now - 100 * 24 * HOUR_MS, now), "json", out, now)
    data = json.loads(out.getvalue())
    idle = data["idle_spend"]
    fed, starved, cpu, long, live = 0.526 * 2, 3.06, 0.096 * 10, 0.526, 0.526
    assert idle["by_experiment"][exp]["idle_cost"] == pytest.approx(
        fed * 0.5 + starved * 0.25 + cpu * 0.75 + long * 0.6 + live * 0.7, rel=1e-6)
    assert idle["by_experiment"][exp]["runs"] == 5 and idle["runs_without_system_metrics"] == 1
    assert idle["top_runs"][0]["run_name"] == "starved" and idle["top_runs"][0]["utilization"] == 0.75
    assert any("paid for idle GPU or CPU time" in s for s in data["what_to_look_at"])
    page = io.StringIO()
    write_report(config, connected(config)[1], Period(now - 100 * 24 * HOUR_MS, now), "html", page, now)
    assert "Where the money idled" in page.getvalue()
