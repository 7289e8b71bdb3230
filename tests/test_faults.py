"""MLflow going away and coming back: last good values kept, health says so, recovery by itself."""

from __future__ import annotations

import time

import pytest

from conftest import HOUR_MS, add_run, samples, value
from mlops_kpi_exporter.cli import build_registry
from mlops_kpi_exporter.config import config_from_dict
from mlops_kpi_exporter.mlflow_source import MlflowSource
from mlops_kpi_exporter.poller import Poller, backoff_delay
from mlops_kpi_exporter.snapshot import SnapshotStore
from prometheus_client.exposition import generate_latest


def scrape(registry) -> dict:
    return samples(generate_latest(registry).decode())


def wait_for(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_mlflow_killed_then_restarted(own_mlflow_server):
    server = own_mlflow_server
    client = server.client()
    exp = client.create_experiment("faults")
    now = int(time.time() * 1000)
    add_run(client, exp, now - 2 * HOUR_MS, now - HOUR_MS, tags={"instance_type": "p3.2xlarge"})
    config = config_from_dict({"mlflow": {"tracking_uri": server.url, "poll_interval": "1s", "timeout": "2s",
                                          "retry_backoff": "1s"}})
    store = SnapshotStore()
    poller = Poller([MlflowSource(config)], store)
    registry = build_registry(store, config)
    cost = lambda m: value(m, "mlops_experiment_cost", experiment="faults", status="FINISHED")  # noqa: E731
    poller.start()
    try:
        m = wait_for(lambda: (s := scrape(registry)) and value(s, "mlops_source_up", source="mlflow") == 1 and s)
        assert cost(m) == pytest.approx(3.06)
        last_success = value(m, "mlops_source_last_success_timestamp_seconds", source="mlflow")

        server.kill()
        m = wait_for(lambda: (s := scrape(registry)) and value(s, "mlops_source_up", source="mlflow") == 0 and s)
        assert cost(m) == pytest.approx(3.06)  # last good values are kept
        assert value(m, "mlops_source_errors_total", source="mlflow") >= 1
        assert value(m, "mlops_source_last_success_timestamp_seconds", source="mlflow") == last_success

        server.start()  # same port, same database
        add_run(client, exp, now - HOUR_MS, now, tags={"instance_type": "p3.2xlarge"})
        m = wait_for(lambda: (s := scrape(registry)) and value(s, "mlops_source_up", source="mlflow") == 1 and s,
                     timeout=90)
        m = wait_for(lambda: (s := scrape(registry)) and cost(s) > 4 and s)
        assert cost(m) == pytest.approx(6.12)
    finally:
        poller.stop()


def test_mlflow_down_at_start_serves_health_only():
    config = config_from_dict({"mlflow": {"tracking_uri": "http://127.0.0.1:9", "timeout": "1s"}})
    store = SnapshotStore()
    source = MlflowSource(config)
    poller = Poller([source], store)
    assert not poller.poll_once(source)
    m = scrape(build_registry(store, config))
    assert value(m, "mlops_source_up", source="mlflow") == 0
    assert value(m, "mlops_source_errors_total", source="mlflow") == 1
    assert not any(k[0] == "mlops_experiment_cost" for k in m)  # unknown, not zero
    assert not any(k[0] == "mlops_source_last_success_timestamp_seconds" for k in m)


def test_backoff_doubles_up_to_the_interval():
    class S:
        name, interval, retry_backoff = "s", 60.0, 5.0

    delays = [backoff_delay(S, n) for n in range(1, 8)]
    assert 4 <= delays[0] <= 5 and 8 <= delays[1] <= 10 and 16 <= delays[2] <= 20
    assert all(d <= 60 for d in delays) and delays[-1] >= 48


def test_polls_of_a_source_never_overlap():
    """A poll slower than its interval delays the next one; it never runs twice at once."""
    import threading

    class Slow:
        name, interval, retry_backoff = "slow", 1.0, 1.0

        def __init__(self):
            self.active = 0
            self.most = 0
            self.polls = 0
            self.lock = threading.Lock()

        def poll(self):
            with self.lock:
                self.active += 1
                self.most = max(self.most, self.active)
            time.sleep(2.5)
            with self.lock:
                self.active -= 1
                self.polls += 1
            return [], "slow poll"

    source = Slow()
    poller = Poller([source], SnapshotStore())
    poller.start()
    try:
        wait_for(lambda: source.polls >= 2, timeout=20)
    finally:
        poller.stop()
    assert source.most == 1
