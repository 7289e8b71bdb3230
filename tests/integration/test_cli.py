"""The command line and the HTTP server, run as a user would: real processes, real sockets."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import time

import pytest
import requests
import yaml

from conftest import EXPORTER, HOUR_MS, add_run, child_env, free_port, samples, value, wait_http


def write_config(tmp_path, url: str, prefix: str, **mlflow) -> str:
    path = tmp_path / "config.yaml"
    data = {"mlflow": {"tracking_uri": url, "experiments": [f"{prefix}-*"], "poll_interval": "2s",
                       "timeout": "5s", "retry_backoff": "1s", **mlflow}}
    path.write_text(yaml.safe_dump(data))
    return str(path)


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([EXPORTER, *args], capture_output=True, text=True, env=env or child_env(), timeout=timeout)


class Served:
    def __init__(self, args: list[str], port: int, env: dict | None = None):
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([EXPORTER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env or child_env())

    def wait_metric(self, needle: str, timeout: float = 90) -> str:
        wait_http(f"{self.url}/healthz", timeout=timeout, proc=self.proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = requests.get(f"{self.url}/metrics", timeout=5).text
            if needle in text:
                return text
            time.sleep(0.3)
        raise AssertionError(f"{needle!r} never appeared on /metrics")

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err


@pytest.fixture
def small_experiment(mlflow_server, prefix):
    client = mlflow_server.client()
    exp = client.create_experiment(f"{prefix}-cli")
    now = int(time.time() * 1000)
    add_run(client, exp, now - 3 * HOUR_MS, now - HOUR_MS, tags={"instance_type": "p3.2xlarge"})
    return f"{prefix}-cli"


def test_serve_metrics_health_landing_and_methods(tmp_path, mlflow_server, prefix, small_experiment, promtool, monkeypatch):
    port = free_port()
    secret = "tok-9f2c1e-do-not-leak"
    env = child_env() | {"EXPORTER_TEST_TOKEN": secret}
    config = write_config(tmp_path, mlflow_server.url, prefix, auth={"token_env": "EXPORTER_TEST_TOKEN"})
    served = Served(["serve", "--config", config, "--listen", f"127.0.0.1:{port}"], port, env)
    try:
        text = served.wait_metric('mlops_experiment_cost{experiment="%s",status="FINISHED"}' % small_experiment)
        m = samples(text)
        assert value(m, "mlops_experiment_cost", experiment=small_experiment, status="FINISHED") == pytest.approx(6.12)
        assert value(m, "mlops_source_up", source="mlflow") == 1
        (info,) = [dict(labels) for name, labels in m if name == "mlops_exporter_info"]
        assert info["currency"] == "USD" and info["version"]

        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr

        zipped = requests.get(f"{served.url}/metrics", headers={"Accept-Encoding": "gzip"}, stream=True, timeout=5)
        assert zipped.headers["Content-Encoding"] == "gzip"
        assert b"mlops_experiment_cost" in gzip.decompress(zipped.raw.read())
        om = requests.get(f"{served.url}/metrics", headers={"Accept": "application/openmetrics-text"}, timeout=5)
        assert om.headers["Content-Type"].startswith("application/openmetrics-text") and om.text.endswith("# EOF\n")

        assert requests.get(f"{served.url}/healthz", timeout=5).text == "ok\n"
        landing = requests.get(f"{served.url}/", timeout=5)
        assert landing.status_code == 200 and "/metrics" in landing.text and "mlflow" in landing.text
        assert requests.post(f"{served.url}/metrics", timeout=5).status_code == 405
        assert requests.get(f"{served.url}/nope", timeout=5).status_code == 404
        pages = text + landing.text
    finally:
        code, err = served.stop()
    assert code == 0, err
    assert "poll ok source=mlflow" in err
    assert secret not in err and secret not in pages


def test_once_and_check_succeed(tmp_path, mlflow_server, prefix, small_experiment):
    config = write_config(tmp_path, mlflow_server.url, prefix)
    proc = run_cli("once", "--config", config)
    assert proc.returncode == 0, proc.stderr
    assert value(samples(proc.stdout), "mlops_runs", experiment=small_experiment, status="FINISHED") == 1
    proc = run_cli("check", "--config", config)
    assert proc.returncode == 0, proc.stdout
    assert "source mlflow: ok" in proc.stdout and "1 experiments watched" in proc.stdout


def test_unreachable_mlflow_fails_clearly_and_fast(tmp_path, prefix):
    config = write_config(tmp_path, f"http://127.0.0.1:{free_port()}", prefix)
    started = time.monotonic()
    proc = run_cli("once", "--config", config)
    assert proc.returncode == 1
    assert "error: source mlflow failed:" in proc.stderr
    assert 'mlops_source_up{source="mlflow"} 0.0' in proc.stdout
    assert "mlops_experiment_cost{" not in proc.stdout
    proc = run_cli("check", "--config", config)
    assert proc.returncode == 1 and "source mlflow: FAILED" in proc.stdout
    assert time.monotonic() - started < 60  # no minutes of hidden client retries


def test_missing_sqlite_store_is_an_error_not_an_empty_store(tmp_path, prefix):
    config = write_config(tmp_path, f"sqlite:///{tmp_path}/typo.db", prefix)
    proc = run_cli("check", "--config", config)
    assert proc.returncode == 1 and "no MLflow database at" in proc.stdout
    assert not (tmp_path / "typo.db").exists()


def test_listen_address_in_use(tmp_path, mlflow_server, prefix):
    config = write_config(tmp_path, mlflow_server.url, prefix)
    port = mlflow_server.port  # already taken
    proc = run_cli("serve", "--config", config, "--listen", f"127.0.0.1:{port}")
    assert proc.returncode == 3 and "cannot listen" in proc.stderr


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo")
    from mlops_kpi_exporter import demo

    demo.prepare(path)
    return path


def test_demo_serves_embedded_data_without_a_server(demo_dir):
    port = free_port()
    served = Served(["demo", "--listen", f"127.0.0.1:{port}", "--data-dir", str(demo_dir)], port)
    try:
        m = samples(served.wait_metric("mlops_running_hourly_cost"))
    finally:
        code, err = served.stop()
    assert code == 0, err
    assert value(m, "mlops_running_hourly_cost", experiment="recsys-embeddings") == pytest.approx(2 * 3.06)
    assert value(m, "mlops_runs", experiment="recsys-embeddings", status="RUNNING") == 1
    experiments = {dict(k[1])["experiment"] for k in m if k[0] == "mlops_runs"}
    assert len(experiments) == 5 and "Default" not in experiments
    statuses = {dict(k[1])["status"] for k in m if k[0] == "mlops_runs"}
    assert {"FINISHED", "FAILED", "KILLED", "RUNNING"} <= statuses
    estimators = {dict(k[1])["estimator"] for k in m if k[0] == "mlops_runs_by_estimator"}
    assert len(estimators) >= 8
    sources = {dict(k[1])["source"] for k in m if k[0] == "mlops_runs_by_price_source"}
    assert sources == {"catalog", "config", "tag"}
    busy_hours = [k for k, v in m.items() if k[0] == "mlops_runs_by_start_hour" and v > 0]
    assert len({dict(k[1])["hour"] for k in busy_hours}) >= 8  # a month of start times


def test_the_demo_serves_its_model_and_shows_every_serving_figure(demo_dir):
    """`make demo` with no extra command: MLflow's scoring server on loopback, steady predictions, and
    every serving figure within a minute of the demo coming up."""
    from pathlib import Path

    port = free_port()
    served = Served(["demo", "--listen", f"127.0.0.1:{port}", "--data-dir", str(demo_dir)], port)
    try:
        served.wait_metric("mlops_endpoint_requests_total", timeout=60)
        deadline = time.monotonic() + 60
        seen: list[float] = []
        while True:  # predictions grow, and two scrapes give the capacity in use
            m = samples(requests.get(f"{served.url}/metrics", timeout=5).text)
            seen.append(value(m, "mlops_endpoint_requests_total", endpoint="demo-doubler"))
            if len({v for v in seen if v > 0}) >= 2 and ("mlops_endpoint_utilization_ratio",
                                           (("endpoint", "demo-doubler"), ("resource", "capacity"))) in m:
                break
            assert time.monotonic() < deadline, f"the demo's serving figures did not grow: {seen}"
            time.sleep(1)
        landing = requests.get(served.url, timeout=5).text
    finally:
        code, err = served.stop()
    assert code == 0, err
    assert value(m, "mlops_endpoint_up", endpoint="demo-doubler") == 1
    assert value(m, "mlops_endpoint_request_duration_seconds_count", endpoint="demo-doubler") == seen[-1]
    assert value(m, "mlops_endpoint_hourly_cost", endpoint="demo-doubler") == pytest.approx(2 * 0.096)  # 2 x m5.large
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    documented = {line.split("`")[1].removesuffix("_total") for line in readme.splitlines()
                  if line.startswith("| `mlops_endpoint_")}
    exported = {name.removesuffix("_total").removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
                for name, _ in m}
    assert documented - exported == set(), "a serving figure the demo does not show"
    assert "<h2>Serving</h2>" in landing and "demo-doubler" in landing


def test_local_sqlite_store_read_with_once(demo_dir):
    config = demo_dir / "config.yaml"
    proc = run_cli("demo", "--data-dir", str(demo_dir), "--print-config")
    config.write_text(proc.stdout)
    proc = run_cli("once", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    m = samples(proc.stdout)
    total_runs = sum(v for k, v in m.items() if k[0] == "mlops_runs")
    assert total_runs == 210  # 201 of the month's history, a sweep of 1 + 4, a crashed run, three on a shared cluster
    assert value(m, "mlops_runs_skipped", reason="end_before_start") == 0


CONDITIONAL = {  # documented metrics that only appear when something is wrong or legacy
    "mlops_kpi_missing", "mlops_model_version_stage_info", "mlops_model_deploy_lead_time_unknown",
    "mlops_exporter_config_last_reload_successful",  # only after a SIGHUP reload
    "mlops_billing_api_calls",  # AWS Cost Explorer only (tests/integration/test_cost_explorer.py)
    "mlops_genai_traces_skipped",  # only for traces with odd data (tests/unit/test_genai.py)
    "mlops_genai_cost_by_session",  # the demo breaks spend down by user (traces.breakdown)
}
# `once` on the printed config finds no model server (the demo starts one with `serve`): the test above
# checks these against the running demo
ENDPOINT_METRICS = "mlops_endpoint_"
# The demo's local store has no AI Gateway (it lives in `mlflow server`): tests/integration/test_gateway.py
# covers these against a real one.
GATEWAY_METRICS = "mlops_gateway_budget_"


def test_readme_metric_reference_matches_the_demo(demo_dir):
    """Every documented metric has a value out of the box, and every exported metric is documented."""
    from pathlib import Path

    from prometheus_client.parser import text_string_to_metric_families

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    documented = {line.split("`")[1] for line in readme.splitlines() if line.startswith("| `mlops_")}
    documented = {name.removesuffix("_total") for name in documented}
    config = demo_dir / "config.yaml"
    config.write_text(run_cli("demo", "--data-dir", str(demo_dir), "--print-config").stdout)
    proc = run_cli("once", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    exported = {f.name for f in text_string_to_metric_families(proc.stdout) if f.samples}
    assert exported - documented == set(), "exported but not in the README's metric reference"
    missing = {n for n in documented - CONDITIONAL - exported if not n.startswith((ENDPOINT_METRICS, GATEWAY_METRICS))}
    assert missing == set(), "documented but the demo does not export it"


def test_sighup_reloads_a_good_config_and_keeps_the_old_one_on_a_bad_one(tmp_path, mlflow_server, prefix, small_experiment):
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(open(write_config(tmp_path, mlflow_server.url, prefix)).read())
    served = Served(["serve", "--config", str(config), "--listen", f"127.0.0.1:{port}", "--log-format", "json"], port)
    try:
        served.wait_metric('currency="USD"')
        config.write_text(config.read_text().replace("poll_interval: 2s", "poll_interval: soon"))
        served.proc.send_signal(signal.SIGHUP)
        text = served.wait_metric("mlops_exporter_config_last_reload_successful 0.0")
        assert 'currency="USD"' in text and "mlops_experiment_cost{" in text  # still the old config, still serving
        data = yaml.safe_load(config.read_text().replace("poll_interval: soon", "poll_interval: 2s"))
        data["pricing"] = {"currency": "EUR", "use_catalog": False, "default_hourly_cost": 1.0}
        config.write_text(yaml.safe_dump(data))
        served.proc.send_signal(signal.SIGHUP)
        text = served.wait_metric("mlops_exporter_config_last_reload_successful 1.0")
        text = served.wait_metric('mlops_experiment_cost{experiment="%s",status="FINISHED"}' % small_experiment)
        assert 'currency="EUR"' in text
        m = samples(text)  # two hours at the new default rate of 1.0 per hour
        assert value(m, "mlops_experiment_cost", experiment=small_experiment, status="FINISHED") == pytest.approx(2.0)
    finally:
        code, err = served.stop()
    assert code == 0
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    reloads = [e for e in events if e.get("event") == "reload"]
    assert [e["ok"] for e in reloads] == [False, True]
    assert "mlflow.poll_interval: invalid duration 'soon'" in reloads[0]["msg"]
    polls = [e for e in events if e.get("event") == "poll" and e["source"] == "mlflow"]
    assert polls and {"duration_seconds", "fetched", "changed", "ok"} <= set(polls[0])


def test_tls_and_basic_auth_from_a_web_config(tmp_path, mlflow_server, prefix, small_experiment, promtool):
    import base64

    import bcrypt

    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    hashed = bcrypt.hashpw(b"s3cret-pass", bcrypt.gensalt(10)).decode()
    web = tmp_path / "web-config.yml"
    web.write_text(yaml.safe_dump({"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"},
                                   "basic_auth_users": {"prometheus": hashed}}))
    check = subprocess.run([promtool, "check", "web-config", str(web)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr  # the Prometheus convention, checked by its tool
    port = free_port()
    config = write_config(tmp_path, mlflow_server.url, prefix)
    served = Served(["serve", "--config", config, "--listen", f"127.0.0.1:{port}", "--web-config", str(web)], port)
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/healthz", verify=str(cert), timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline and served.proc.poll() is None
            time.sleep(0.3)
        assert requests.get(f"{url}/metrics", verify=str(cert), timeout=5).status_code == 401
        wrong = requests.get(f"{url}/metrics", verify=str(cert), auth=("prometheus", "nope"), timeout=5)
        assert wrong.status_code == 401 and "Basic" in wrong.headers["WWW-Authenticate"]
        assert requests.get(f"{url}/metrics", verify=str(cert), auth=("nobody", "s3cret-pass"), timeout=5).status_code == 401
        assert requests.get(f"{url}/", verify=str(cert), timeout=5).status_code == 401
        token = base64.b64encode(b"prometheus:s3cret-pass").decode()
        ok = requests.get(f"{url}/metrics", verify=str(cert), headers={"Authorization": f"Basic {token}"}, timeout=5)
        assert ok.status_code == 200 and "mlops_source_up" in ok.text
        with pytest.raises(requests.RequestException):  # plain HTTP is not served
            requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    finally:
        code, err = served.stop()
    assert code == 0 and "s3cret-pass" not in err


def test_bad_web_config_is_refused(tmp_path, prefix):
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  admin: plaintext\n")
    config = write_config(tmp_path, "sqlite:///x.db", prefix)
    proc = run_cli("serve", "--config", config, "--listen", f"127.0.0.1:{free_port()}", "--web-config", str(web))
    assert proc.returncode == 2 and "basic_auth_users: the password of 'admin' is not a bcrypt hash" in proc.stderr
    assert "plaintext" not in proc.stderr
    web.write_text("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n")
    proc = run_cli("serve", "--config", config, "--listen", f"127.0.0.1:{free_port()}", "--web-config", str(web))
    assert proc.returncode == 2 and "tls_server_config.cert_file: no such file" in proc.stderr


def test_cli_refuses_bad_config_and_starts_nothing(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("mlflow:\n  tracking_uri: http://127.0.0.1:5000\n  poll_interval: soon\n")
    for command in ("serve", "once", "check"):
        proc = run_cli(command, "--config", str(path), timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert f"{path}: mlflow.poll_interval: invalid duration 'soon'" in proc.stderr
        assert proc.stdout == ""
