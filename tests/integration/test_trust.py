"""Figures people can trust: odd runs never stop the healthy ones from being costed exactly, a refused
reload changes nothing (seen on the wire), every relative path follows the config file, and
autologged runs show their estimator with no configuration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests
import yaml

from conftest import EXPORTER, HOUR_MS, add_run, child_env, free_port, samples, value
from test_cli import Served, run_cli


@pytest.fixture(scope="module")
def odd_store(tmp_path_factory):
    """A local MLflow store (no server): runs of known cost next to one run of each kind of odd data."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("odd-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("trust", artifact_location=str(folder / "artifacts"))
    now = int(time.time() * 1000)
    start = now - 5 * HOUR_MS
    # healthy: 2 h of m5.xlarge (0.192/h) = 0.384; 30 min at a tagged 2.0/h = 1.0
    add_run(client, exp, start, start + 2 * HOUR_MS, tags={"instance_type": "m5.xlarge"}, name="healthy-a")
    add_run(client, exp, start, start + HOUR_MS // 2, tags={"mlops.hourly_cost": "2.0"}, name="healthy-b")
    odd = {
        "end_in_future": add_run(client, exp, start, now * 1000),  # a client logging microseconds
        "start_before_2000": add_run(client, exp, now // 1000, now // 1000 + 3600),  # seconds, not ms
        "start_in_future": add_run(client, exp, now + 3 * 24 * HOUR_MS, None),
        "invalid_hourly_cost": add_run(client, exp, start, start + HOUR_MS, tags={"mlops.hourly_cost": "1e308"}),
        "invalid_instance_count": add_run(client, exp, start, start + HOUR_MS,
                                          tags={"instance_type": "m5.xlarge", "instance_count": "1e300"}),
    }
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump({"mlflow": {"tracking_uri": uri}, "registry": {"enabled": False}}))
    return config, odd


def test_odd_runs_are_counted_by_reason_and_healthy_runs_stay_exact(odd_store):
    config, odd = odd_store
    proc = run_cli("once", "--config", str(config), "--log-format", "json")
    assert proc.returncode == 0, proc.stderr
    m = samples(proc.stdout)
    assert value(m, "mlops_experiment_cost", experiment="trust", status="FINISHED") == pytest.approx(1.384, abs=1e-9)
    assert value(m, "mlops_runs", experiment="trust", status="FINISHED") == 2
    assert value(m, "mlops_source_up", source="mlflow") == 1
    for reason in odd:
        assert value(m, "mlops_runs_skipped", reason=reason) == 1, reason
    assert value(m, "mlops_runs_skipped", reason="invalid_data") == 0
    logged = [json.loads(line)["msg"] for line in proc.stderr.splitlines() if line.startswith("{")]
    for reason, run_id in odd.items():  # each odd run is named in the log with its reason
        assert any(run_id in msg and reason in msg for msg in logged), reason


def test_the_report_skips_the_same_runs(odd_store, tmp_path):
    config, odd = odd_store
    out = tmp_path / "report.json"
    proc = run_cli("report", "--config", str(config), "--since", "1d", "--format", "json", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["total_compute"] == pytest.approx(1.384, abs=1e-6)
    # a run starting after the period is not in it at all; every other odd run is counted as in /metrics
    assert report["skipped_runs"] == {reason: 1 for reason in odd if reason != "start_in_future"}


def _exporter_config(path, url: str, prefix: str, timeout: str, token_env: str | None, **extra) -> None:
    mlflow = {"tracking_uri": url, "experiments": [f"{prefix}-*"], "poll_interval": "1s", "timeout": timeout,
              "retry_backoff": "1s"}
    if token_env:
        mlflow["auth"] = {"token_env": token_env}
    path.write_text(yaml.safe_dump({"mlflow": mlflow, "registry": {"enabled": False}, **extra}))


def _fresh_requests(proxy, since: int, count: int = 3, timeout: float = 60) -> list[dict]:
    """Headers of `count` requests the exporter sends after request number `since`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(proxy.headers) >= since + count:
            return proxy.headers[since:]
        time.sleep(0.2)
    raise AssertionError(f"the exporter sent {len(proxy.headers) - since} requests, expected {count}")


def test_a_refused_reload_changes_nothing_and_removing_auth_stops_sending_it(tmp_path, mlflow_server, prefix):
    """Observed on the wire: a loopback proxy in front of MLflow records the Authorization header."""
    from upstream import Upstream

    mlflow_server.client().create_experiment(f"{prefix}-wire")
    proxy = Upstream()
    proxy.forward_to = mlflow_server.url
    config = tmp_path / "config.yaml"
    _exporter_config(config, proxy.url, prefix, "10s", "OLD_TOKEN")
    port = free_port()
    env = child_env() | {"OLD_TOKEN": "token-old-1111", "NEW_TOKEN": "token-new-2222"}
    served = Served(["serve", "--config", str(config), "--listen", f"127.0.0.1:{port}"], port, env)
    try:
        served.wait_metric('mlops_source_up{source="mlflow"} 1.0')
        assert _fresh_requests(proxy, 0)[0].get("Authorization") == "Bearer token-old-1111"

        # Refused: a new token and a 1 s timeout, but an endpoint on a machine no price list knows
        # (a file that parses, refused only when its sources are built: after the MLflow settings).
        _exporter_config(config, proxy.url, prefix, "1s", "NEW_TOKEN",
                         endpoints=[{"name": "bad", "url": "http://127.0.0.1:9", "instance_type": "no-such-machine"}])
        served.proc.send_signal(signal.SIGHUP)
        served.wait_metric("mlops_exporter_config_last_reload_successful 0.0")
        proxy.delays["/api/2.0/mlflow/experiments/search"] = 2.5  # slower than the refused 1 s timeout
        seen = len(proxy.headers)
        polls = value(samples(requests.get(f"{served.url}/metrics", timeout=5).text), "mlops_source_polls_total",
                      source="mlflow")
        after = _fresh_requests(proxy, seen, count=8)
        assert {h.get("Authorization") for h in after} == {"Bearer token-old-1111"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # polls go on succeeding with the old 10 s timeout
            m = samples(requests.get(f"{served.url}/metrics", timeout=5).text)
            if value(m, "mlops_source_polls_total", source="mlflow") >= polls + 2:
                break
            time.sleep(0.3)
        assert value(m, "mlops_source_polls_total", source="mlflow") >= polls + 2
        assert value(m, "mlops_source_up", source="mlflow") == 1
        assert value(m, "mlops_source_errors_total", source="mlflow") == 0

        # Accepted, without mlflow.auth: the token is not sent any more.
        proxy.delays.clear()
        _exporter_config(config, proxy.url, prefix, "10s", None)
        served.proc.send_signal(signal.SIGHUP)
        served.wait_metric("mlops_exporter_config_last_reload_successful 1.0")
        seen = len(proxy.headers)
        assert all("Authorization" not in h for h in _fresh_requests(proxy, seen))
    finally:
        code, err = served.stop()
        proxy.close()
    assert code == 0
    assert "token-old-1111" not in err and "token-new-2222" not in err


def test_report_check_and_once_read_an_authenticated_mlflow(tmp_path, mlflow_server, prefix):
    """MLflow behind authentication (a proxy that answers 401 without the token): every command
    uses the same client set-up as serve, credentials included."""
    from upstream import Upstream

    client = mlflow_server.client()
    exp = client.create_experiment(f"{prefix}-auth")
    now = int(time.time() * 1000)
    add_run(client, exp, now - 3 * HOUR_MS, now - HOUR_MS, tags={"instance_type": "p3.2xlarge"})
    proxy = Upstream()
    proxy.forward_to = mlflow_server.url
    proxy.require_authorization = "Bearer report-token-3333"
    config = tmp_path / "config.yaml"
    _exporter_config(config, proxy.url, prefix, "10s", "REPORT_TOKEN")
    env = child_env() | {"REPORT_TOKEN": "report-token-3333"}
    try:
        out = tmp_path / "report.json"
        proc = run_cli("report", "--config", str(config), "--since", "1d", "--format", "json", "--out", str(out), env=env)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(out.read_text())["total_compute"] == pytest.approx(6.12, abs=1e-6)
        assert run_cli("check", "--config", str(config), env=env).returncode == 0
        once = run_cli("once", "--config", str(config), env=env)
        assert once.returncode == 0, once.stderr
        assert value(samples(once.stdout), "mlops_experiment_cost", experiment=f"{prefix}-auth",
                     status="FINISHED") == pytest.approx(6.12)
        denied = run_cli("report", "--config", str(config), "--out", str(out), env=child_env() | {"REPORT_TOKEN": "wrong"})
        assert denied.returncode == 1 and "wrong" not in denied.stderr + denied.stdout
    finally:
        proxy.close()


def test_relative_paths_are_relative_to_the_config_file(tmp_path, mlflow_server, prefix):
    """Started from another working directory (as in a container), relative secret, CA and body
    files are still found next to the config."""
    from upstream import Upstream

    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "token").write_text("file-token-4444\n")
    (folder / "body.json").write_text('{"inputs": [[1]]}')
    mlflow_server.client().create_experiment(f"{prefix}-paths")
    proxy = Upstream()
    proxy.forward_to = mlflow_server.url
    proxy.require_authorization = "Bearer file-token-4444"
    model = Upstream()
    from upstream import Reply

    model.replies["/invocations"] = Reply(200, b'{"predictions": [2]}', "application/json")
    data = {"mlflow": {"tracking_uri": proxy.url, "experiments": [f"{prefix}-*"], "auth": {"token_file": "token"}},
            "registry": {"enabled": False},
            "endpoints": [{"name": "m", "url": model.url,
                           "probe": {"path": "/invocations", "method": "POST", "body_file": "body.json"}}]}
    (folder / "config.yaml").write_text(yaml.safe_dump(data))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    try:
        proc = subprocess.run([EXPORTER, "once", "--config", "../etc/config.yaml"],
                              capture_output=True, text=True, env=child_env(), cwd=elsewhere, timeout=120)
        assert proc.returncode == 0, proc.stderr
        m = samples(proc.stdout)
        assert value(m, "mlops_source_up", source="mlflow") == 1
        assert value(m, "mlops_endpoint_up", endpoint="m") == 1
        assert model.requests[-1][2] == b'{"inputs": [[1]]}'
    finally:
        proxy.close()
        model.close()


def test_autologged_runs_show_their_estimator_with_a_minimal_config(tmp_path):
    """Runs written by mlflow.sklearn.autolog() (tags estimator_name / estimator_class)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = f"""
import mlflow, numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier
mlflow.set_tracking_uri({uri!r})
mlflow.set_experiment("autolog")
mlflow.sklearn.autolog(log_models=False, log_datasets=False, log_post_training_metrics=False)
X, y = np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([0, 0, 1, 1])
LogisticRegression().fit(X, y)
LogisticRegression().fit(X, y)
DecisionTreeClassifier().fit(X, y)
"""
    made = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=child_env(),
                          cwd=tmp_path, timeout=300)
    assert made.returncode == 0, made.stderr
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"mlflow": {"tracking_uri": uri}}))
    proc = run_cli("once", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    m = samples(proc.stdout)
    assert value(m, "mlops_runs_by_estimator", experiment="autolog", estimator="LogisticRegression") == 2
    assert value(m, "mlops_runs_by_estimator", experiment="autolog", estimator="DecisionTreeClassifier") == 1
    assert not any(k[0] == "mlops_runs_by_estimator" and ("estimator", "unknown") in k[1] for k in m)


def test_an_unset_header_variable_is_a_config_error(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "mlflow": {"tracking_uri": "http://127.0.0.1:1"},
        "endpoints": [{"name": "m", "url": "http://127.0.0.1:2", "probe": {"headers_env": {"X-Api-Key": "NO_SUCH_VAR_77"}}}],
    }))
    env = {k: v for k, v in child_env().items() if k != "NO_SUCH_VAR_77"}
    proc = run_cli("check", "--config", str(config), env=env)
    assert proc.returncode == 2
    assert "endpoints[0].probe.headers_env: header X-Api-Key: environment variable NO_SUCH_VAR_77 is not set" in proc.stderr
    assert os.environ.get("NO_SUCH_VAR_77") is None
