"""Serving endpoints: probes and the servers' own metrics, against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from conftest import free_port, render, samples, value
from mlops_kpi_exporter.config import ConfigError, config_from_dict
from mlops_kpi_exporter.metrics import serving
from mlops_kpi_exporter.sources import endpoints
from mlops_kpi_exporter.sources.endpoints import EndpointSource
from mlops_kpi_exporter.pricing import Pricer
from upstream import Reply, Upstream, fixture


@pytest.fixture
def upstream():
    server = Upstream()
    yield server
    server.close()


def source_for(url: str, metrics_url: str | None = None, **endpoint) -> EndpointSource:
    config = config_from_dict({"mlflow": {"tracking_uri": "sqlite:///unused.db"},
                               "endpoints": [{"name": "churn", "url": url, "metrics_url": metrics_url, **endpoint}]})
    return EndpointSource(config.endpoints[0], config, Pricer(config.pricing))


def poll(source: EndpointSource) -> dict:
    return samples(render(source.poll()[0]))


def outcomes(m: dict, family: str = "mlops_endpoint_probes_total") -> dict[str, float]:
    return {dict(k[1])["outcome"]: v for k, v in m.items() if k[0] == family}


def test_probe_outcomes(upstream):
    upstream.replies["/invocations"] = Reply(200, b'{"predictions": [1]}', "application/json")
    source = source_for(upstream.url, probe={"path": "/invocations", "method": "POST", "body": {"inputs": [[1, 2]]},
                                             "timeout": "500ms", "expect_body_contains": "predictions"},
                        hourly_cost=1.2, replicas=2)
    m = poll(source)
    assert value(m, "mlops_endpoint_up", endpoint="churn") == 1
    assert upstream.requests[-1] == ("POST", "/invocations", b'{"inputs": [[1, 2]]}')
    assert value(m, "mlops_endpoint_hourly_cost", endpoint="churn") == pytest.approx(2.4)
    assert value(m, "mlops_endpoint_probe_duration_seconds_count", endpoint="churn") == 1

    upstream.replies["/invocations"] = Reply(500, b"boom")
    assert value(poll(source), "mlops_endpoint_up", endpoint="churn") == 0
    upstream.replies["/invocations"] = Reply(200, b"<html>login</html>", "text/html")
    poll(source)  # 200 but not a prediction
    upstream.replies["/invocations"] = Reply(200, b"{}", delay=1.5)
    poll(source)  # slower than the 500 ms timeout
    m = poll(source_for(f"http://127.0.0.1:{free_port()}"))  # nothing listens there
    assert outcomes(m) == {"success": 0, "http_error": 0, "timeout": 0, "connection_error": 1, "bad_response": 0}
    m = samples(render(serving.families(source.readings())))
    assert outcomes(m) == {"success": 1, "http_error": 1, "timeout": 1, "connection_error": 0, "bad_response": 1}
    assert value(m, "mlops_endpoint_probe_duration_seconds_count", endpoint="churn") == 4
    assert value(m, "mlops_endpoint_probe_duration_seconds_bucket", endpoint="churn", le="0.25") == 3  # not the timeout


PRESET_CASES = {
    # preset: (first scrape values, second scrape values, expected after two scrapes); "capacity" is the
    # requests between the scrapes, over the SCRAPE_GAP seconds between them, over 10 requests a second
    "triton": ({"OK": 100, "ERR": 2, "LAT_US": 5_000_000}, {"OK": 160, "ERR": 5, "LAT_US": 8_000_000},
               {"requests": 165, "errors": 5, "latency_sum": 8.0, "latency_count": 160, "capacity": (165 - 102) / 100,
                "utilization": {"gpu": 0.4, "cpu": 0.25, "memory": 0.25}}),
    "torchserve": ({"OK": 50, "ERR": 1, "LAT_US": 2_000_000}, {"OK": 80, "ERR": 1, "LAT_US": 3_500_000},
                   {"requests": 80, "errors": 1, "latency_sum": 3.5, "latency_count": 80, "capacity": (80 - 50) / 100,
                    "utilization": {"cpu": 0.4, "memory": 0.6, "gpu": 0.8}}),
    "bentoml": ({"OK": 10, "ERR": 1, "B1": 6, "B2": 9, "LAT_S": 2.0}, {"OK": 30, "ERR": 4, "B1": 20, "B2": 28, "LAT_S": 5.0},
                {"requests": 34, "errors": 4, "latency_sum": 5.0, "latency_count": 30, "capacity": (34 - 11) / 100,
                 "buckets": {"0.1": 20, "0.5": 28}}),
    "kserve": ({"OK": 10, "B1": 6, "B2": 9, "LAT_S": 2.0}, {"OK": 30, "B1": 20, "B2": 28, "LAT_S": 5.0},
               {"requests": 30, "latency_sum": 5.0, "latency_count": 30, "capacity": (30 - 10) / 100,
                "buckets": {"0.1": 20, "0.5": 28}}),
    "vllm": ({"OK": 10, "ERR": 1, "B1": 6, "B2": 9, "LAT_S": 2.0}, {"OK": 30, "ERR": 2, "B1": 20, "B2": 28, "LAT_S": 5.0},
             {"requests": 32, "errors": 2, "latency_sum": 5.0, "latency_count": 30, "capacity": (32 - 11) / 100,
              "utilization": {"kv_cache": 0.42}}),
}
SCRAPE_GAP = 10.0


@pytest.mark.parametrize("preset", sorted(PRESET_CASES))
def test_presets_normalize_documented_payloads(upstream, preset, monkeypatch):
    first, second, want = PRESET_CASES[preset]
    labels = {"model": "churn"} if preset == "triton" else {}
    source = source_for(upstream.url, f"{upstream.url}/metrics", preset=preset, probe=None, metrics_labels=labels,
                        capacity_rps=10)
    # The source times its scrapes with time.monotonic: a clock of the test's own instead, for an exact rate.
    clock = {"now": 1000.0}
    monkeypatch.setattr(endpoints, "time", SimpleNamespace(monotonic=lambda: clock["now"]))
    upstream.replies["/metrics"] = Reply(200, fixture(preset, **first))
    poll(source)
    clock["now"] += SCRAPE_GAP
    upstream.replies["/metrics"] = Reply(200, fixture(preset, **second))
    m = poll(source)
    assert value(m, "mlops_endpoint_metrics_up", endpoint="churn") == 1
    assert value(m, "mlops_endpoint_requests_total", endpoint="churn") == pytest.approx(want["requests"])
    if "errors" in want:
        assert value(m, "mlops_endpoint_errors_total", endpoint="churn") == pytest.approx(want["errors"])
    else:
        assert ("mlops_endpoint_errors_total", (("endpoint", "churn"),)) not in m  # unknown, not zero
    assert value(m, "mlops_endpoint_request_duration_seconds_sum", endpoint="churn") == pytest.approx(want["latency_sum"])
    assert value(m, "mlops_endpoint_request_duration_seconds_count", endpoint="churn") == pytest.approx(want["latency_count"])
    for le, count in want.get("buckets", {}).items():
        assert value(m, "mlops_endpoint_request_duration_seconds_bucket", endpoint="churn", le=le) == count
    for resource, ratio in want.get("utilization", {}).items():
        assert value(m, "mlops_endpoint_utilization_ratio", endpoint="churn", resource=resource) == pytest.approx(ratio)
    assert value(m, "mlops_endpoint_utilization_ratio", endpoint="churn", resource="capacity") == pytest.approx(
        want["capacity"])


def test_upstream_restart_never_gives_negative_or_huge_rates(upstream):
    source = source_for(upstream.url, f"{upstream.url}/metrics", preset="kserve", probe=None)
    totals = []
    for ok in (100, 150, 20, 70):  # the server restarts between the 2nd and 3rd scrape
        upstream.replies["/metrics"] = Reply(200, fixture("kserve", OK=ok, B1=ok, B2=ok, LAT_S=ok / 10))
        totals.append(value(poll(source), "mlops_endpoint_requests_total", endpoint="churn"))
    assert totals == [100, 150, 170, 220]  # +50, then +20 (the new process's count), then +50


@pytest.mark.parametrize(
    "reply, outcome",
    [
        (Reply(500, b"internal error"), "http_error"),
        (Reply(200, b"<!doctype html><html>Sign in</html>", "text/html"), "bad_response"),
        (Reply(200, b'request_predict_seconds_count{model_name="churn"} 12\nrequest_predict_sec{{{'), "bad_response"),
        (Reply(200, b"ok", delay=1.5), "timeout"),
    ],
)
def test_upstream_garbage_is_counted_and_never_presented_as_fresh(upstream, reply, outcome):
    source = source_for(upstream.url, f"{upstream.url}/metrics", preset="kserve", probe=None, metrics_timeout="500ms")
    upstream.replies["/metrics"] = Reply(200, fixture("kserve", OK=10, B1=5, B2=8, LAT_S=1.0))
    assert value(poll(source), "mlops_endpoint_requests_total", endpoint="churn") == 10
    upstream.replies["/metrics"] = reply
    m = poll(source)
    assert value(m, "mlops_endpoint_metrics_up", endpoint="churn") == 0
    assert outcomes(m, "mlops_endpoint_metrics_scrapes_total")[outcome] == 1
    assert not any(k[0].startswith("mlops_endpoint_requests") for k in m)  # dropped, not stale
    upstream.replies["/metrics"] = Reply(200, fixture("kserve", OK=25, B1=5, B2=8, LAT_S=1.0))
    assert value(poll(source), "mlops_endpoint_requests_total", endpoint="churn") == 25  # recovers, counts on


def test_cost_from_the_catalog_and_bad_instance():
    source = source_for("http://127.0.0.1:1", instance_type="g4dn.xlarge", replicas=3)
    assert source.hourly_cost == pytest.approx(3 * 0.526)
    with pytest.raises(ConfigError, match="instance_type"):
        source_for("http://127.0.0.1:1", instance_type="nonexistent.box")


def test_endpoint_config_errors_name_the_field():
    base = {"mlflow": {"tracking_uri": "sqlite:///x.db"}}
    cases = [
        ({"name": "a", "url": "not a url"}, "endpoints[0].url"),
        ({"name": "a", "url": "http://h", "preset": "sagemaker"}, "endpoints[0].preset"),
        ({"name": "a", "url": "http://h", "probe": {"timeout": "5s", "interval": "1s"}}, "endpoints[0].probe"),
        ({"name": "a", "url": "http://h", "probe": {"body_file": "missing.json"}}, "endpoints[0].probe.body_file"),
        ({"name": "a", "url": "http://h", "hourly_cost": -1}, "endpoints[0].hourly_cost"),
        ({"name": "a", "url": "http://h", "preset": "custom"}, "endpoints[0]"),
    ]
    for endpoint, where in cases:
        with pytest.raises(ConfigError) as exc:
            config_from_dict(base | {"endpoints": [endpoint]})
        assert f"<config>: {where}:" in str(exc.value)


@pytest.fixture(scope="module")
def mlflow_model_server(tmp_path_factory):
    """A real `mlflow models serve` of a tiny pyfunc model logged here (no network, no conda)."""
    import signal
    import subprocess

    import mlflow

    from conftest import BIN, child_env, wait_http

    workdir = tmp_path_factory.mktemp("model-server")
    tracking = f"sqlite:///{workdir}/mlflow.db"
    mlflow.set_tracking_uri(tracking)
    mlflow.set_experiment("serving")

    from mlops_kpi_exporter.demo_model import Doubler

    import warnings

    with mlflow.start_run() as run, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mlflow's advice to add type hints to predict()
        mlflow.pyfunc.log_model(name="model", python_model=Doubler())
    mlflow.set_tracking_uri(None)
    port = free_port()
    env = child_env() | {"MLFLOW_TRACKING_URI": tracking}
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", f"runs:/{run.info.run_id}/model", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        stdout=open(workdir / "serve.log", "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=workdir,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/ping", timeout=120, proc=proc)
    yield url
    import os

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_real_mlflow_model_server_is_probed(mlflow_model_server):
    ping = source_for(mlflow_model_server, probe={"path": "/ping"})
    assert value(poll(ping), "mlops_endpoint_up", endpoint="churn") == 1
    predict = source_for(mlflow_model_server, probe={
        "path": "/invocations", "method": "POST", "body": {"dataframe_split": {"columns": ["x"], "data": [[1.5], [2]]}},
        "expect_body_contains": "predictions", "timeout": "5s"})
    m = poll(predict)
    assert value(m, "mlops_endpoint_up", endpoint="churn") == 1
    assert outcomes(m)["success"] == 1
    wrong = source_for(mlflow_model_server, probe={"path": "/invocations", "method": "POST", "body": {"nonsense": 1},
                                                   "timeout": "5s"})
    assert outcomes(poll(wrong))["http_error"] == 1  # the server rejects a bad payload with a 4xx


def test_many_endpoints_make_one_valid_exposition(upstream, tmp_path, promtool):
    """Every endpoint is its own source; their families merge into one valid page."""
    import subprocess

    import yaml

    from test_cli import run_cli

    upstream.replies["/ping"] = Reply(200, b"")
    upstream.replies["/metrics"] = Reply(200, fixture("kserve", OK=10, B1=5, B2=8, LAT_S=1.0))
    dead = f"http://127.0.0.1:{free_port()}"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/none.db"},
        "registry": {"enabled": False},
        "endpoints": [
            {"name": "a", "url": upstream.url, "preset": "kserve", "metrics_url": f"{upstream.url}/metrics", "hourly_cost": 1},
            {"name": "b", "url": upstream.url, "hourly_cost": 2, "capacity_rps": 5},
            {"name": "c", "url": dead, "probe": {"timeout": "1s"}},
        ]}))
    proc = run_cli("once", "--config", str(config))
    assert proc.returncode == 1  # the MLflow store does not exist: that source failed, the others did not
    m = samples(proc.stdout)
    assert {dict(k[1])["endpoint"]: v for k, v in m.items() if k[0] == "mlops_endpoint_up"} == {"a": 1, "b": 1, "c": 0}
    assert value(m, "mlops_source_up", source="endpoint:c") == 1  # a failed probe is data, not a failed poll
    assert value(m, "mlops_endpoint_requests_total", endpoint="a") == 10
    check = subprocess.run([promtool, "check", "metrics"], input=proc.stdout, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = run_cli("check", "--config", str(config))
    assert "source endpoint:a: ok" in proc.stdout and "source endpoint:c: FAILED" in proc.stdout


def test_documented_serving_queries_give_hand_worked_figures(promtool):
    import subprocess
    from pathlib import Path

    import yaml

    path = Path(__file__).parents[1] / "promql" / "serving_cost.test.yml"
    proc = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    tested = {case["expr"] for case in yaml.safe_load(path.read_text())["tests"][0]["promql_expr_test"]}
    block = readme.split("Cost of serving, as queries", 1)[1].split("```promql\n", 1)[1].split("```", 1)[0]
    documented = {line for line in block.splitlines() if line and not line.startswith("#")}
    assert documented - tested <= {"histogram_quantile(0.95, sum by (endpoint, le) (rate(mlops_endpoint_request_duration_seconds_bucket[5m])))"}
    assert len(documented) >= 5


def test_custom_mapping_with_units(upstream):
    """The README's Ray Serve example: milliseconds and percent converted to base units."""
    page = b"""# TYPE ray_serve_num_http_requests_total counter
ray_serve_num_http_requests_total{route="/churn"} 40
# TYPE ray_serve_num_http_error_requests_total counter
ray_serve_num_http_error_requests_total{route="/churn"} 4
# TYPE ray_serve_http_request_latency_ms histogram
ray_serve_http_request_latency_ms_bucket{route="/churn",le="100"} 30
ray_serve_http_request_latency_ms_bucket{route="/churn",le="500"} 38
ray_serve_http_request_latency_ms_bucket{route="/churn",le="+Inf"} 40
ray_serve_http_request_latency_ms_sum{route="/churn"} 6000
ray_serve_http_request_latency_ms_count{route="/churn"} 40
# TYPE ray_node_gpus_utilization gauge
ray_node_gpus_utilization{GpuIndex="0"} 70
"""
    upstream.replies["/metrics"] = Reply(200, page)
    source = source_for(upstream.url, f"{upstream.url}/metrics", probe=None, preset="custom", custom={
        "requests": [{"name": "ray_serve_num_http_requests_total"}],
        "errors": [{"name": "ray_serve_num_http_error_requests_total"}],
        "latency_histogram": {"name": "ray_serve_http_request_latency_ms", "scale": 0.001},
        "utilization": {"gpu": {"name": "ray_node_gpus_utilization", "scale": 0.01}}})
    m = poll(source)
    assert value(m, "mlops_endpoint_requests_total", endpoint="churn") == 40
    assert value(m, "mlops_endpoint_errors_total", endpoint="churn") == 4
    assert value(m, "mlops_endpoint_request_duration_seconds_bucket", endpoint="churn", le="0.1") == 30
    assert value(m, "mlops_endpoint_request_duration_seconds_bucket", endpoint="churn", le="0.5") == 38
    assert value(m, "mlops_endpoint_request_duration_seconds_sum", endpoint="churn") == pytest.approx(6.0)
    assert value(m, "mlops_endpoint_utilization_ratio", endpoint="churn", resource="gpu") == pytest.approx(0.7)


def test_https_endpoint_is_verified_and_a_private_ca_can_be_given(tmp_path):
    import subprocess

    cert, key = tmp_path / "ep.crt", tmp_path / "ep.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    secure = Upstream(tls=(str(cert), str(key)))
    secure.replies["/ping"] = Reply(200, b"")
    try:
        assert outcomes(poll(source_for(secure.url)))["connection_error"] == 1  # unknown CA: refused
        assert value(poll(source_for(secure.url, ca_bundle=str(cert))), "mlops_endpoint_up", endpoint="churn") == 1
    finally:
        secure.close()


# --- one meaning per figure: predictions, server faults, client errors --------------------------------
BENTO_PAGE = """# HELP bentoml_service_request_total Multiprocess metric
# TYPE bentoml_service_request_total counter
bentoml_service_request_total{endpoint="/predict",http_response_code="200",service_name="s",service_version="v"} 100.0
bentoml_service_request_total{endpoint="/predict",http_response_code="400",service_name="s",service_version="v"} 5.0
bentoml_service_request_total{endpoint="/predict",http_response_code="500",service_name="s",service_version="v"} 5.0
bentoml_service_request_total{endpoint="/healthz",http_response_code="200",service_name="s",service_version="v"} 7.0
bentoml_service_request_total{endpoint="/readyz",http_response_code="200",service_name="s",service_version="v"} 2.0
# HELP bentoml_service_request_duration_seconds Multiprocess metric
# TYPE bentoml_service_request_duration_seconds histogram
bentoml_service_request_duration_seconds_bucket{endpoint="/predict",http_response_code="200",service_name="s",service_version="v",le="0.1"} 100.0
bentoml_service_request_duration_seconds_bucket{endpoint="/predict",http_response_code="200",service_name="s",service_version="v",le="+Inf"} 100.0
bentoml_service_request_duration_seconds_count{endpoint="/predict",http_response_code="200",service_name="s",service_version="v"} 100.0
bentoml_service_request_duration_seconds_sum{endpoint="/predict",http_response_code="200",service_name="s",service_version="v"} 1.5
bentoml_service_request_duration_seconds_bucket{endpoint="/healthz",http_response_code="200",service_name="s",service_version="v",le="0.1"} 7.0
bentoml_service_request_duration_seconds_bucket{endpoint="/healthz",http_response_code="200",service_name="s",service_version="v",le="+Inf"} 7.0
bentoml_service_request_duration_seconds_count{endpoint="/healthz",http_response_code="200",service_name="s",service_version="v"} 7.0
bentoml_service_request_duration_seconds_sum{endpoint="/healthz",http_response_code="200",service_name="s",service_version="v"} 0.01
"""


def test_health_routes_are_not_predictions_and_4xx_are_not_errors(upstream):
    upstream.replies["/metrics"] = Reply(200, BENTO_PAGE.encode())
    m = poll(source_for(upstream.url, f"{upstream.url}/metrics", preset="bentoml", probe={"path": "/healthz"}))
    assert value(m, "mlops_endpoint_requests_total", endpoint="churn") == 110  # /healthz, /readyz left out
    assert value(m, "mlops_endpoint_errors_total", endpoint="churn") == 5  # the 500s only
    assert value(m, "mlops_endpoint_client_errors_total", endpoint="churn") == 5  # the 400s, apart
    assert value(m, "mlops_endpoint_request_duration_seconds_count", endpoint="churn") == 100
    assert value(m, "mlops_endpoint_request_duration_seconds_sum", endpoint="churn") == pytest.approx(1.5)


def test_a_custom_mapping_names_its_route_label_and_routes(upstream):
    page = ('# TYPE ray_serve_num_http_requests_total counter\n'
            'ray_serve_num_http_requests_total{route="/churn",method="POST",status_code="200"} 40\n'
            'ray_serve_num_http_requests_total{route="/-/healthz",method="GET",status_code="200"} 9\n'
            'ray_serve_num_http_requests_total{route="/churn/debug",method="GET",status_code="200"} 3\n')
    upstream.replies["/metrics"] = Reply(200, page.encode())
    custom = {"route_label": "route", "exclude_routes": ["/-/healthz", ".*/debug"],
              "requests": [{"name": "ray_serve_num_http_requests_total"}]}
    m = poll(source_for(upstream.url, f"{upstream.url}/metrics", preset="custom", probe=None, custom=custom))
    assert value(m, "mlops_endpoint_requests_total", endpoint="churn") == 40


def test_a_server_wide_counter_is_not_multiplied_across_models(upstream, caplog):
    """TorchServe's Requests5XX has no model label: on a page filtered to one model it is the whole
    server's, so it is not shown as this model's errors (and the log says why), never counted per model."""
    page = ("# TYPE ts_inference_requests_total counter\n"
            'ts_inference_requests_total{model_name="churn",model_version="default"} 60\n'
            'ts_inference_requests_total{model_name="fraud",model_version="default"} 40\n'
            "# TYPE ts_inference_latency_microseconds counter\n"
            'ts_inference_latency_microseconds{model_name="churn",model_version="default"} 6000000\n'
            "# TYPE Requests5XX counter\nRequests5XX 5\n")
    upstream.replies["/metrics"] = Reply(200, page.encode())
    source = source_for(upstream.url, f"{upstream.url}/metrics", preset="torchserve", probe=None,
                        metrics_labels={"model_name": "churn"})
    with caplog.at_level("WARNING"):
        m = poll(source)
        poll(source)
    assert value(m, "mlops_endpoint_requests_total", endpoint="churn") == 60
    assert ("mlops_endpoint_errors_total", (("endpoint", "churn"),)) not in m
    told = [r.getMessage() for r in caplog.records if "Requests5XX" in r.getMessage()]
    assert len(told) == 1 and "model_name" in told[0], told
    # without metrics_labels the server is the endpoint: its 5xx are the endpoint's
    m = poll(source_for(upstream.url, f"{upstream.url}/metrics", preset="torchserve", probe=None))
    assert value(m, "mlops_endpoint_errors_total", endpoint="churn") == 5


def test_metrics_url_is_read_as_written_and_one_same_origin_redirect_is_followed(upstream):
    upstream.replies["/metrics/"] = Reply(200, BENTO_PAGE.encode())  # a mount: /metrics answers 307
    upstream.replies["/metrics"] = Reply(307, b"", location="/metrics/")
    m = poll(source_for(upstream.url, f"{upstream.url}/metrics/", preset="bentoml", probe=None))
    assert value(m, "mlops_endpoint_metrics_up", endpoint="churn") == 1 and upstream.requests[-1][1] == "/metrics/"
    m = poll(source_for(upstream.url, f"{upstream.url}/metrics", preset="bentoml", probe=None))
    assert value(m, "mlops_endpoint_requests_total", endpoint="churn") == 110  # through the redirect


def test_a_redirect_elsewhere_is_not_followed_and_the_log_names_status_and_url(upstream, caplog):
    other = Upstream()
    try:
        other.replies["/metrics"] = Reply(200, BENTO_PAGE.encode())
        upstream.replies["/metrics"] = Reply(302, b"", location=f"{other.url}/metrics")
        source = source_for(upstream.url, f"{upstream.url}/metrics", preset="bentoml", probe=None)
        with caplog.at_level("WARNING"):
            m = poll(source)
            poll(source)  # the same state: not logged again
        assert outcomes(m, "mlops_endpoint_metrics_scrapes_total")["http_error"] == 1
        assert other.requests == []
        told = [r.getMessage() for r in caplog.records if r.name.endswith("endpoints")]
        assert len(told) == 1 and "HTTP 302" in told[0] and f"{upstream.url}/metrics" in told[0], told
    finally:
        other.close()


def test_a_page_that_matches_nothing_is_unmatched_not_idle(upstream, caplog):
    """triton's names on BentoML's page: not a quiet service but a wrong preset, in the outcome, the
    up gauge, the log (once) and check."""
    upstream.replies["/metrics"] = Reply(200, BENTO_PAGE.encode())
    source = source_for(upstream.url, f"{upstream.url}/metrics", preset="triton", probe=None)
    with caplog.at_level("WARNING"):
        m = poll(source)
        poll(source)
    assert outcomes(m, "mlops_endpoint_metrics_scrapes_total")["unmatched"] == 1
    assert value(m, "mlops_endpoint_metrics_up", endpoint="churn") == 0
    assert ("mlops_endpoint_requests_total", (("endpoint", "churn"),)) not in m
    told = [r.getMessage() for r in caplog.records if "unmatched" in r.getMessage()]
    assert len(told) == 1 and "nv_inference_request_success" in told[0] and "triton" in told[0], told
    with pytest.raises(RuntimeError, match="unmatched"):
        source.check()
    # an idle server whose counters have no sample yet still fits its preset
    upstream.replies["/metrics"] = Reply(200, b"# HELP bentoml_service_request_total x\n"
                                              b"# TYPE bentoml_service_request_total counter\n")
    m = poll(source_for(upstream.url, f"{upstream.url}/metrics", preset="bentoml", probe=None))
    assert value(m, "mlops_endpoint_metrics_up", endpoint="churn") == 1
    assert value(m, "mlops_endpoint_requests_total", endpoint="churn") == 0
