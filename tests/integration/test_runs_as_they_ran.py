"""Runs as they really ran, against a real local MLflow store: tuning sweeps costed once, crashed runs
not billed forever. Every cost is worked out by hand from the catalog price of a p3.2xlarge (3.06 an
hour) and an m5.xlarge (0.192 an hour)."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone

import pytest

from conftest import HOUR_MS, add_run, connected, render, samples, value
from mlops_kpi_exporter.config import config_from_dict
from mlops_kpi_exporter.report import Period, write_report
from mlops_kpi_exporter.sources.mlflow_runs import MlflowSource

DAY_MS = 24 * HOUR_MS
P3 = {"instance_type": "p3.2xlarge"}
# Every run is written relative to this moment and every source polls at it: a day and a half into a
# month, so the healthy run's three days straddle the month's start (runs.timezone is UTC).
NOW_MS = int(datetime(2025, 6, 2, 12, tzinfo=timezone.utc).timestamp() * 1000)


def log_at(client, run_id: str, at_ms: int, key: str = "loss") -> None:
    client.log_metric(run_id, key, 0.5, timestamp=at_ms)


def sweep(client, exp, start, trial_tags, overlapping=False, trial_machine=None):
    parent = add_run(client, exp, start, start + 2 * HOUR_MS, tags=P3, name="sweep")
    for i in range(4):
        t0 = start if overlapping else start + i * HOUR_MS // 2
        t1 = start + 2 * HOUR_MS if overlapping else t0 + HOUR_MS // 2
        add_run(client, exp, t0, t1, tags={**trial_tags, "mlflow.parentRunId": parent}, name=f"trial-{i}")
    return parent


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("as-they-ran")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    now = NOW_MS
    start = now - 5 * HOUR_MS
    ids = {}
    for name, tags, overlapping in [("seq-untagged", {}, False), ("seq-tagged", P3, False), ("overlap", {}, True),
                                    ("other-machines", {"instance_type": "m5.xlarge"}, False)]:
        exp = client.create_experiment(name, artifact_location=str(folder / name))
        ids[name] = sweep(client, exp, start, tags, overlapping)
    exp = client.create_experiment("crashes", artifact_location=str(folder / "crashes"))
    long_ago = now - 40 * DAY_MS
    ids["crashed"] = add_run(client, exp, long_ago, None, tags=P3)  # killed 40 days ago...
    log_at(client, ids["crashed"], long_ago + HOUR_MS)  # ...an hour after its last metric
    ids["silent"] = add_run(client, exp, long_ago, None, tags=P3)  # crashed before logging anything
    ids["cleaned"] = add_run(client, exp, long_ago, None, tags=P3)
    log_at(client, ids["cleaned"], long_ago + HOUR_MS)
    client.set_terminated(ids["cleaned"], "KILLED", end_time=now - HOUR_MS)  # a clean-up script, today
    ids["healthy"] = add_run(client, exp, now - 3 * DAY_MS, None, tags=P3)  # three days, logging all along
    for minutes in range(3 * 24 * 60, 0, -360):
        log_at(client, ids["healthy"], now - minutes * 60_000, "system/gpu_0_utilization_percentage")
    log_at(client, ids["healthy"], now - 5 * 60_000, "system/gpu_0_utilization_percentage")
    return client, uri, now, ids


def poll(uri, now, **runs):
    config = config_from_dict({"mlflow": {"tracking_uri": uri}, "runs": runs} if runs else {"mlflow": {"tracking_uri": uri}})
    source = MlflowSource(*connected(config), clock=lambda: now / 1000)
    families, summary = source.poll()
    return samples(render(families)), summary


def test_sweeps_on_one_machine_are_costed_once(store):
    _, uri, now, _ = store
    m, _ = poll(uri, now)
    for name in ("seq-untagged", "seq-tagged", "overlap"):
        assert value(m, "mlops_experiment_cost", experiment=name, status="FINISHED") == pytest.approx(6.12), name
        assert value(m, "mlops_runs", experiment=name, status="FINISHED") == 5  # trials are runs all the same
        assert value(m, "mlops_experiment_run_seconds", experiment=name, status="FINISHED") == 7200
    trials = [(dict(k[1]), v) for k, v in m.items() if k[0] == "mlops_run_cost" and dict(k[1])["experiment"] == "overlap"]
    assert sorted(v for labels, v in trials if labels["run_name"].startswith("trial")) == [pytest.approx(1.53)] * 4
    info = [dict(k[1]) for k in m if k[0] == "mlops_run_info" and dict(k[1])["run_name"] == "trial-0"]
    machines = {i["experiment"]: i["machine"] for i in info}
    assert machines == {"seq-untagged": "parent", "seq-tagged": "parent", "overlap": "parent", "other-machines": "own"}
    assert all(i["parent_run_id"] for i in info)


def test_trials_on_other_machines_are_costed_on_their_own(store):
    _, uri, now, _ = store
    m, _ = poll(uri, now)
    assert value(m, "mlops_experiment_cost", experiment="other-machines", status="FINISHED") == pytest.approx(
        6.12 + 4 * 0.5 * 0.192)


def test_nested_separate_costs_each_trial_on_a_machine_of_its_own(store):
    _, uri, now, _ = store
    m, _ = poll(uri, now, nested="separate")
    assert value(m, "mlops_experiment_cost", experiment="seq-tagged", status="FINISHED") == pytest.approx(12.24)
    assert value(m, "mlops_experiment_cost", experiment="seq-untagged", status="FINISHED") == pytest.approx(6.12)


def test_crashed_runs_stop_costing_at_their_last_sign_of_life(store):
    _, uri, now, ids = store
    m, summary = poll(uri, now)
    assert value(m, "mlops_runs_stale", experiment="crashes") == 2
    assert value(m, "mlops_experiment_cost", experiment="crashes", status="STALE") == pytest.approx(3.06)  # not 2,937.60
    assert value(m, "mlops_experiment_cost", experiment="crashes", status="KILLED") == pytest.approx(3.06)
    assert value(m, "mlops_experiment_cost", experiment="crashes", status="RUNNING") == pytest.approx(3.06 * 72)
    assert value(m, "mlops_running_hourly_cost", experiment="crashes") == pytest.approx(3.06)  # the healthy one only
    # This month holds only the healthy run's 36 hours since June 1st; the others stopped costing in April.
    assert value(m, "mlops_experiment_cost_month_to_date", experiment="crashes") == pytest.approx(3.06 * 36)
    assert "2 stale" in summary
    stale_ids = {dict(k[1])["run_id"] for k in m if k[0] == "mlops_run_cost" and dict(k[1])["status"] == "STALE"}
    assert stale_ids == {ids["crashed"], ids["silent"]}  # listed for the clean-up


def test_a_stale_run_comes_back_to_life(store):
    client, uri, now, ids = store
    exp = client.get_experiment_by_name("crashes").experiment_id
    run_id = add_run(client, exp, now - 2 * DAY_MS, None, tags=P3)
    log_at(client, run_id, now - 2 * DAY_MS + HOUR_MS)
    config = config_from_dict({"mlflow": {"tracking_uri": uri, "experiments": ["crashes"]}})
    clock = {"now": now}
    source = MlflowSource(*connected(config), clock=lambda: clock["now"] / 1000)
    m = samples(render(source.poll()[0]))
    assert value(m, "mlops_runs_stale", experiment="crashes") == 3
    log_at(client, run_id, now + 60_000)  # it was only quiet
    clock["now"] = now + 2 * 60_000
    m = samples(render(source.poll()[0]))  # an incremental poll
    assert value(m, "mlops_runs_stale", experiment="crashes") == 2
    assert value(m, "mlops_runs", experiment="crashes", status="RUNNING") == 2
    costs = {dict(k[1])["run_id"]: v for k, v in m.items() if k[0] == "mlops_run_cost"}
    assert costs[run_id] == pytest.approx(3.06 * (48 + 2 / 60))  # all its hours, none lost, none twice
    client.delete_run(run_id)


def test_the_report_uses_the_same_rules(store):
    _, uri, now, _ = store
    config = config_from_dict({"mlflow": {"tracking_uri": uri, "experiments": ["seq-*", "overlap", "crashes"]}})
    m, _ = poll(uri, now)
    out = io.StringIO()
    write_report(config, connected(config)[1], Period(now - 60 * DAY_MS, now), "json", out, now)
    report = json.loads(out.getvalue())
    for name in ("seq-untagged", "seq-tagged", "overlap"):
        assert report["by_experiment"][name] == pytest.approx(6.12)
    exported = sum(v for k, v in m.items() if k[0] == "mlops_experiment_cost" and dict(k[1])["experiment"] == "crashes")
    assert report["by_experiment"]["crashes"] == pytest.approx(exported, abs=1e-3)
