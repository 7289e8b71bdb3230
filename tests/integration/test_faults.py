"""MLflow going away and coming back: last good values kept, health says so, recovery by itself."""

from __future__ import annotations

import time

import pytest

from conftest import HOUR_MS, add_run, render, samples, value, connected
from mlops_kpi_exporter.cli import build_registry
from mlops_kpi_exporter.config import config_from_dict
from mlops_kpi_exporter.sources.mlflow_runs import MlflowSource
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
    poller = Poller([MlflowSource(*connected(config))], store)
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
    source = MlflowSource(*connected(config))
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
            time.sleep(2.5)  # the slow poll under test, not a wait
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


def test_mlflow_restarted_on_another_database_totals_fall_honestly(own_mlflow_server):
    """Same URL, same experiment name and id, other runs: the old runs leave the figures at once."""
    server = own_mlflow_server
    client = server.client()
    exp = client.create_experiment("swap")
    now = int(time.time() * 1000)
    for _ in range(3):
        add_run(client, exp, now - 2 * HOUR_MS, now - HOUR_MS, tags={"instance_type": "p3.2xlarge"})
    source = MlflowSource(*connected(config_from_dict({"mlflow": {"tracking_uri": server.url, "timeout": "5s"}})))
    families, _ = source.poll()
    assert value(samples(render(families)), "mlops_experiment_cost", experiment="swap", status="FINISHED") == pytest.approx(9.18)
    first = client.get_experiment(exp).creation_time
    server.kill()
    server.db.unlink()  # a new, empty database behind the same URL
    wait_for(lambda: int(time.time() * 1000) > first)  # the new experiment's creation time must differ
    server.start()
    client = server.client()
    exp = client.create_experiment("swap")
    add_run(client, exp, now - 2 * HOUR_MS, now - HOUR_MS, tags={"instance_type": "m5.large"})
    families, summary = source.poll()
    m = samples(render(families))
    assert "incremental" in summary
    assert value(m, "mlops_experiment_cost", experiment="swap", status="FINISHED") == pytest.approx(0.096)
    assert value(m, "mlops_runs", experiment="swap", status="FINISHED") == 1


def test_mlflow_slower_than_the_timeout_fails_the_poll_in_time():
    from upstream import Reply, Upstream

    slow = Upstream()
    slow.replies["/api/2.0/mlflow/experiments/search"] = Reply(200, b'{"experiments": []}', "application/json", delay=5)
    try:
        source = MlflowSource(*connected(config_from_dict({"mlflow": {"tracking_uri": slow.url, "timeout": "1s"}})))
        store = SnapshotStore()
        started = time.monotonic()
        assert not Poller([source], store).poll_once(source)
        assert time.monotonic() - started < 4  # one timeout, no hidden retries
        _, states = store.states()
        assert "timed out" in states[0].last_error.lower() or "timeout" in states[0].last_error.lower()
    finally:
        slow.close()


def test_flapping_endpoint_is_counted_probe_by_probe():
    from mlops_kpi_exporter.sources.endpoints import EndpointSource
    from mlops_kpi_exporter.pricing import Pricer
    from upstream import Reply, Upstream

    flappy = Upstream()
    try:
        config = config_from_dict({"mlflow": {"tracking_uri": "sqlite:///x.db"},
                                   "endpoints": [{"name": "flap", "url": flappy.url, "probe": {"timeout": "1s"}}]})
        source = EndpointSource(config.endpoints[0], config, Pricer(config.pricing))
        ups = []
        for i in range(6):
            flappy.replies["/ping"] = Reply(200 if i % 2 == 0 else 503, b"")
            ups.append(value(samples(render(source.poll()[0])), "mlops_endpoint_up", endpoint="flap"))
        assert ups == [1, 0, 1, 0, 1, 0]
        assert source.probes["success"] == 3 and source.probes["http_error"] == 3
    finally:
        flappy.close()


def test_sigterm_during_a_poll_exits_cleanly(tmp_path):
    import signal
    import subprocess

    import yaml
    from upstream import Reply, Upstream

    from conftest import EXPORTER, child_env, free_port, wait_http

    slow = Upstream()
    slow.replies["/api/2.0/mlflow/experiments/search"] = Reply(200, b'{"experiments": []}', "application/json", delay=3)
    config = tmp_path / "c.yml"
    config.write_text(yaml.safe_dump({"mlflow": {"tracking_uri": slow.url, "timeout": "10s"}, "registry": {"enabled": False}}))
    port = free_port()
    proc = subprocess.Popen([EXPORTER, "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}"],
                            env=child_env(), stderr=subprocess.PIPE, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        wait_for(lambda: slow.requests, timeout=10)  # the poll is under way, waiting on MLflow
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        slow.close()
    assert proc.returncode == 0
    assert "received SIGTERM, shutting down" in err and "Traceback" not in err


def test_an_oversized_mlflow_reply_is_refused_unread(monkeypatch):
    import mlops_kpi_exporter.mlflow_client as mlflow_client
    from upstream import Reply, Upstream

    monkeypatch.setattr(mlflow_client, "MAX_MLFLOW_REPLY_BYTES", 1000)
    big = Upstream()
    big.replies["/api/2.0/mlflow/experiments/search"] = Reply(
        200, b'{"experiments": [' + b",".join([b'{"experiment_id": "1", "name": "x"}'] * 200) + b"]}", "application/json")
    try:
        source = MlflowSource(*connected(config_from_dict({"mlflow": {"tracking_uri": big.url, "timeout": "2s"}})))
        store = SnapshotStore()
        assert not Poller([source], store).poll_once(source)
        _, states = store.states()
        assert "more than the 1,000 allowed" in states[0].last_error
    finally:
        big.close()


def test_credentials_do_not_follow_a_redirect_to_another_host(monkeypatch):
    from upstream import Reply, Upstream

    other = Upstream()
    other.replies["/api/2.0/mlflow/experiments/search"] = Reply(200, b'{"experiments": []}', "application/json")
    first = Upstream()
    first.replies["/api/2.0/mlflow/experiments/search"] = Reply(
        302, b"", location=f"{other.url}/api/2.0/mlflow/experiments/search")
    monkeypatch.setenv("REDIRECT_TEST_TOKEN", "tok-redirect-4411")
    try:
        config = config_from_dict({"mlflow": {"tracking_uri": first.url, "timeout": "2s",
                                              "auth": {"token_env": "REDIRECT_TEST_TOKEN"}}})
        source = MlflowSource(*connected(config))
        source.runs.matching_experiments()
        assert first.headers[0].get("Authorization") == "Bearer tok-redirect-4411"  # MLflow itself gets it
        assert other.requests and "Authorization" not in other.headers[0]  # the other host does not
    finally:
        first.close()
        other.close()
        connected(config_from_dict({"mlflow": {"tracking_uri": first.url}}))  # the token goes with its config
