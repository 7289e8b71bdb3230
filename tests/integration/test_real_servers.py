"""The real-server harness (tests/real_servers.py) against the servers' OWN metrics pages: real BentoML,
MLServer, KServe, TorchServe, LitServe (instrumented as its docs show) and Ray Serve from
PyPI, each in a venv of its own (made once under .cache/server-venvs/), on 127.0.0.1, driven with
known traffic. What each server counts, and under which labels, is asserted as observed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import requests

import real_servers
from conftest import samples
from real_servers import BENTOML, KSERVE, LITSERVE, MLSERVER, PYTRITON, RAY, TORCHSERVE, drive, ensure_venv, start


def _running(spec, tmp_path_factory):
    """A server of `spec` for the whole session, stopped at its end."""
    server = start(spec, tmp_path_factory.mktemp(spec.name))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def bentoml_server(tmp_path_factory):
    yield from _running(BENTOML, tmp_path_factory)


@pytest.fixture(scope="session")
def mlserver_server(tmp_path_factory):
    yield from _running(MLSERVER, tmp_path_factory)


@pytest.fixture(scope="session")
def kserve_server(tmp_path_factory):
    yield from _running(KSERVE, tmp_path_factory)


@pytest.fixture(scope="session")
def litserve_server(tmp_path_factory):
    yield from _running(LITSERVE, tmp_path_factory)


@pytest.fixture(scope="session")
def torchserve_server(tmp_path_factory):
    yield from _running(TORCHSERVE, tmp_path_factory)


@pytest.fixture(scope="session")
def pytriton_server(tmp_path_factory):
    yield from _running(PYTRITON, tmp_path_factory)


@pytest.fixture(scope="session")
def ray_server(tmp_path_factory):
    yield from _running(RAY, tmp_path_factory)


def counted(page: dict, name: str, by: str, **match: str) -> Counter[str]:
    """The samples `name` whose labels include `match`, summed by the value of label `by`."""
    out: Counter[str] = Counter()
    for (sample, labels), value in page.items():
        labels = dict(labels)
        if sample == name and all(labels.get(k) == v for k, v in match.items()):
            out[labels[by]] += value
    return out


def label_sets(page: dict, name: str) -> set[tuple[str, ...]]:
    return {tuple(k for k, _ in labels) for sample, labels in page if sample == name}


def grew(after: Counter, before: Counter) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def scrape(server) -> dict:
    return samples(server.metrics())


# --- BentoML 1.4 ----------------------------------------------------------------------------------

def test_bentoml_counts_every_request_by_status(bentoml_server):
    before = scrape(bentoml_server)
    truth = drive(bentoml_server)
    after = scrape(bentoml_server)

    assert truth.by_status() == {200: 100, 400: 5, 500: 5}
    # bentoml_service_request_total{endpoint="/double" (the literal path), http_response_code, runner_name,
    # service_name, service_version}: every request to the API, 4xx and 5xx included
    name = "bentoml_service_request_total"
    assert label_sets(after, name) == {("endpoint", "http_response_code", "runner_name", "service_name", "service_version")}
    requests_by_code = grew(counted(after, name, "http_response_code", endpoint="/double"),
                            counted(before, name, "http_response_code", endpoint="/double"))
    assert requests_by_code == {"200": 100, "400": 5, "500": 5}
    assert sum(requests_by_code.values()) == truth.total == 110
    # the service and runner are named after the class; a service served from source has no version
    assert counted(after, name, "service_name", endpoint="/double").keys() == {"Doubler"}
    assert counted(after, name, "runner_name", endpoint="/double").keys() == {"Doubler"}
    assert counted(after, name, "service_version", endpoint="/double").keys() == {"not available"}
    # its histogram counts the same requests, with the same labels
    durations = "bentoml_service_request_duration_seconds_count"
    assert grew(counted(after, durations, "http_response_code", endpoint="/double"),
                counted(before, durations, "http_response_code", endpoint="/double")) == requests_by_code
    # nothing else moved: scraping /metrics is not counted, and no health probe was sent meanwhile
    assert grew(counted(after, name, "endpoint"), counted(before, name, "endpoint")) == {"/double": 110}


def test_bentoml_counts_health_probes_as_requests(bentoml_server):
    before = scrape(bentoml_server)
    for _ in range(3):
        assert bentoml_server.probe_health() == 200
    for path in ("/readyz", "/livez"):
        assert requests.get(bentoml_server.url + path, timeout=10).status_code == 200
    assert requests.get(bentoml_server.url + "/no-such-route", timeout=10).status_code == 404
    after = scrape(bentoml_server)

    # each under its literal path as `endpoint`, in the same counter as predictions; an unknown path too
    # (one series per path asked for)
    name = "bentoml_service_request_total"
    assert grew(counted(after, name, "endpoint"), counted(before, name, "endpoint")) == {
        "/healthz": 3, "/readyz": 1, "/livez": 1, "/no-such-route": 1}
    assert counted(after, name, "http_response_code", endpoint="/no-such-route") == {"404": 1}
    assert not [labels for sample, labels in after if dict(labels).get("endpoint") == "/metrics"]


def test_bentoml_restart_starts_its_counters_afresh(bentoml_server):
    ports = dict(bentoml_server.ports)
    drive(bentoml_server, good=3, client_errors=1, server_errors=1)
    bentoml_server.restart()
    assert bentoml_server.ports == ports

    fresh = scrape(bentoml_server)
    name = "bentoml_service_request_total"
    # at start the API's 200 and 500 series are there at 0 (not 400); the readiness probes are counted
    assert counted(fresh, name, "http_response_code", endpoint="/double") == {"200": 0, "500": 0}
    assert counted(fresh, name, "http_response_code", endpoint="/healthz") == {
        str(code): n for code, n in bentoml_server.health_probes.items()}
    truth = drive(bentoml_server, good=10, client_errors=2, server_errors=2)
    after = scrape(bentoml_server)
    assert counted(after, name, "http_response_code", endpoint="/double") == {"200": 10, "400": 2, "500": 2}
    assert counted(after, name, "endpoint") == {"/double": 14, "/healthz": sum(truth.health_probes.values())}


# --- MLServer 1.7 ---------------------------------------------------------------------------------

INFER = "/v2/models/{model_name}/infer"  # starlette_exporter's path label: the route's template


def test_mlserver_counts_every_request_by_status(mlserver_server):
    before = scrape(mlserver_server)
    truth = drive(mlserver_server)
    after = scrape(mlserver_server)

    assert truth.by_status() == {200: 100, 422: 5, 500: 5}
    # rest_server_requests_total{app_name="mlserver", method, path=<route template>, status_code}
    name = "rest_server_requests_total"
    assert label_sets(after, name) == {("app_name", "method", "path", "status_code")}
    by_code = grew(counted(after, name, "status_code", path=INFER, method="POST", app_name="mlserver"),
                   counted(before, name, "status_code", path=INFER, method="POST", app_name="mlserver"))
    assert by_code == {"200": 100, "422": 5, "500": 5}
    assert sum(by_code.values()) == truth.total == 110
    assert grew(counted(after, "rest_server_request_duration_seconds_count", "status_code", path=INFER),
                counted(before, "rest_server_request_duration_seconds_count", "status_code", path=INFER)) == by_code
    assert grew(counted(after, name, "path"), counted(before, name, "path")) == {INFER: 110}

    # The model's own counters, {model="doubler", version="None"} (no version set: Python's str(None)):
    # success counts the 100; failure counts the 5 the model raised on, not the 5 malformed ones (422:
    # rejected by the REST layer before the model is looked up); the summary counts both of those.
    model = {"model": "doubler", "version": "None"}
    def moved(sample):
        return counted(after, sample, "model", **model)["doubler"] - counted(before, sample, "model", **model)["doubler"]
    assert moved("model_infer_request_success_total") == 100
    assert moved("model_infer_request_failure_total") == 5
    assert moved("model_infer_request_duration_count") == 105


def test_mlserver_skips_server_health_but_counts_model_ready(mlserver_server):
    before = scrape(mlserver_server)
    for _ in range(3):
        assert mlserver_server.probe_health() == 200  # GET /v2/health/ready
    assert requests.get(mlserver_server.url + "/v2/health/live", timeout=10).status_code == 200
    for _ in range(2):
        assert requests.get(mlserver_server.url + "/v2/models/doubler/ready", timeout=10).status_code == 200
    assert requests.get(mlserver_server.url + "/v2/no-such-route", timeout=10).status_code == 404
    after = scrape(mlserver_server)

    name = "rest_server_requests_total"
    # /v2/health/* are skipped; the model's readiness is counted under its route template; an unknown
    # path is not counted at all (starlette_exporter drops paths no route matches)
    assert grew(counted(after, name, "path"), counted(before, name, "path")) == {"/v2/models/{model_name}/ready": 2}
    assert not [labels for sample, labels in after if dict(labels).get("path", "").startswith("/v2/health")]


def test_mlserver_restart_starts_its_counters_afresh(mlserver_server):
    ports = dict(mlserver_server.ports)
    drive(mlserver_server, good=3, client_errors=1, server_errors=1)
    mlserver_server.restart()
    assert mlserver_server.ports == ports

    fresh = scrape(mlserver_server)
    # a graceful stop removes the worker's and the server's multiprocess files: nothing counted yet (the
    # readiness probes, /v2/health/ready, are not counted)
    assert not counted(fresh, "rest_server_requests_total", "path")
    assert not counted(fresh, "model_infer_request_success_total", "model")
    drive(mlserver_server, good=10, client_errors=2, server_errors=2)
    after = scrape(mlserver_server)
    assert counted(after, "rest_server_requests_total", "status_code", path=INFER) == {"200": 10, "422": 2, "500": 2}
    assert counted(after, "model_infer_request_success_total", "model") == {"doubler": 10}
    assert counted(after, "model_infer_request_failure_total", "model") == {"doubler": 2}


# --- KServe 0.21 ----------------------------------------------------------------------------------

STAGES = ("request_preprocess_seconds", "request_predict_seconds", "request_postprocess_seconds")


def stage_counts(page: dict) -> dict[str, float]:
    return {stage: counted(page, f"{stage}_count", "model_name")["doubler"] for stage in STAGES}


def test_kserve_counts_predict_calls_not_requests(kserve_server):
    before = scrape(kserve_server)
    truth = drive(kserve_server)
    after = scrape(kserve_server)

    assert truth.by_status() == {200: 100, 400: 5, 500: 5}
    # one histogram per stage of the model's __call__, label model_name only
    for stage in (*STAGES, "request_explain_seconds"):
        assert label_sets(after, f"{stage}_count") <= {("model_name",)}
    moved = {stage: after_n - stage_counts(before)[stage] for stage, after_n in stage_counts(after).items()}
    # the 5 bodies that are not JSON are refused while decoding (400), before the model is called: in no
    # histogram; the 5 that predict() raises on are timed (prometheus_client's timer observes on the way
    # out of an exception too) but never reach postprocess()
    assert moved == {"request_preprocess_seconds": 105, "request_predict_seconds": 105,
                     "request_postprocess_seconds": 100}
    # no status, route or error series at all: what answered 4xx or 5xx is not on the page
    assert not [labels for _, labels in after if {k for k, _ in labels} & {"status", "code", "status_code", "path", "route"}]
    served = {sample for sample, _ in after if not sample.startswith(("python_", "process_"))}
    assert served <= {f"{stage}_{suffix}" for stage in (*STAGES, "request_explain_seconds")
                      for suffix in ("bucket", "count", "sum", "created")}


def test_kserve_counts_a_4xx_raised_inside_predict_and_no_health_check(kserve_server):
    before = stage_counts(scrape(kserve_server))
    # the model raising kserve.errors.InvalidInput: 400 too, but from inside predict(), so timed there
    reply = requests.post(kserve_server.predict_url, data=b'{"instances": ["a"]}',
                          headers={"Content-Type": "application/json", "Connection": "close"}, timeout=10)
    assert reply.status_code == 400 and "instances must be numbers" in reply.json()["error"]
    # without Content-Type: application/json the body reaches the model as bytes: it raises, 500
    reply = requests.post(kserve_server.predict_url, data=b'{"instances": [1]}',
                          headers={"Content-Type": "text/plain", "Connection": "close"}, timeout=10)
    assert reply.status_code == 500
    # health checks, a model list and an unknown model are counted nowhere
    for path in ("/", "/v1/models", "/v1/models/doubler", "/v2/health/ready", "/v2/health/live"):
        assert requests.get(kserve_server.url + path, timeout=10).status_code == 200, path
    assert requests.get(kserve_server.url + "/v1/models/nosuch", timeout=10).status_code == 404
    after = stage_counts(scrape(kserve_server))
    assert {k: after[k] - before[k] for k in after} == {
        "request_preprocess_seconds": 2, "request_predict_seconds": 2, "request_postprocess_seconds": 0}


def test_kserve_restart_starts_its_counters_afresh(kserve_server):
    ports = dict(kserve_server.ports)
    drive(kserve_server, good=3, client_errors=1, server_errors=1)
    kserve_server.restart()
    assert kserve_server.ports == ports

    fresh = scrape(kserve_server)
    # the histograms are declared (HELP and TYPE on the page) but have no sample before the first call
    assert "# TYPE request_predict_seconds histogram" in kserve_server.metrics()
    assert not [sample for sample, _ in fresh if sample.startswith("request_")]
    drive(kserve_server, good=10, client_errors=2, server_errors=2)
    assert stage_counts(scrape(kserve_server))["request_predict_seconds"] == 12


# --- LitServe 0.2.19, instrumented as LITSERVE_SERVICE --------------------------------------------

def test_litserve_counts_every_request_by_status(litserve_server):
    before = scrape(litserve_server)
    truth = drive(litserve_server)
    after = scrape(litserve_server)

    assert truth.by_status() == {200: 100, 422: 5, 500: 5}
    name = "litserve_http_requests_total"
    assert label_sets(after, name) == {("route", "status_code")}
    by_code = grew(counted(after, name, "status_code", route="/predict"), counted(before, name, "status_code", route="/predict"))
    assert by_code == {"200": 100, "422": 5, "500": 5}  # FastAPI refuses the malformed body before LitServe queues it
    durations = "litserve_http_request_duration_seconds_count"
    assert grew(counted(after, durations, "route"), counted(before, durations, "route"))["/predict"] == 110
    # the model-time histogram, written by the logger process: the 100 calls that returned
    assert after[("litserve_predict_seconds_count", ())] - before[("litserve_predict_seconds_count", ())] == 100
    # the one scrape in between (of /metrics/) is counted by the middleware too, under its own path
    assert grew(counted(after, name, "route"), counted(before, name, "route")) == {"/predict": 110, "/metrics/": 1}


def test_litserve_mount_redirects_and_other_routes_are_counted_under_their_paths(litserve_server):
    before = scrape(litserve_server)
    redirect = requests.get(f"{litserve_server.url}/metrics", allow_redirects=False, timeout=10)
    assert redirect.status_code == 307 and redirect.headers["Location"] == f"{litserve_server.url}/metrics/"
    for _ in range(3):
        assert litserve_server.probe_health() == 200  # GET /health
    assert requests.get(litserve_server.url + "/info", timeout=10).status_code == 200
    assert requests.get(litserve_server.url + "/no-such-route", timeout=10).status_code == 404
    for body in (b'{"y": 1}', b'{"x": "a"}', b"[]"):  # a missing or non-numeric x: refused like invalid JSON
        assert litserve_server.session.post(litserve_server.predict_url, data=body, timeout=10).status_code == 422
    after = scrape(litserve_server)
    assert grew(counted(after, "litserve_http_requests_total", "route"),
                counted(before, "litserve_http_requests_total", "route")) == {
        "/metrics": 1, "/metrics/": 1, "/health": 3, "/info": 1, "/no-such-route": 1, "/predict": 3}
    assert counted(after, "litserve_http_requests_total", "status_code", route="/metrics") == {"307": 1}


def test_litserve_restart_starts_its_counters_afresh(litserve_server):
    ports = dict(litserve_server.ports)
    drive(litserve_server, good=3, client_errors=1, server_errors=1)
    litserve_server.restart()
    assert litserve_server.ports == ports

    fresh = scrape(litserve_server)
    # the service clears its multiprocess directory at start: only the readiness probes so far
    assert counted(fresh, "litserve_http_requests_total", "route") == {"/health": sum(litserve_server.health_probes.values())}
    assert fresh[("litserve_predict_seconds_count", ())] == 0  # declared in every process from the start
    drive(litserve_server, good=10, client_errors=2, server_errors=2)
    after = scrape(litserve_server)
    assert counted(after, "litserve_http_requests_total", "status_code", route="/predict") == {"200": 10, "422": 2, "500": 2}


# --- Ray Serve 2.60 ---------------------------------------------------------------------------------
# About 90 s from cold (its venv 60 s, a start 10 s on both cores, three starts here); its metrics
# reach the page a report later (every second here: RAY_metrics_report_interval_ms in real_servers.py).

RAY_EXPORT_WAIT = 60.0  # generous: a start on a loaded machine delays the first reports


def eventually(read, until, timeout: float = RAY_EXPORT_WAIT):
    """read() again until until(result) holds: what Ray counted reaches its page a report interval later."""
    deadline = time.monotonic() + timeout
    while True:
        result = read()
        if until(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s; last read: {result}")
        time.sleep(0.5)  # poll interval


def ray_requests(page: dict, name: str = "ray_serve_num_http_requests_total", code: str = "status_code") -> dict:
    """{(route, status): count} of one of Ray's per-request counters."""
    out: Counter = Counter()
    for (sample, labels), v in page.items():
        if sample == name:
            labels = dict(labels)
            out[(labels["route"], labels[code])] += v
    return dict(out)


def test_ray_counts_every_request_with_its_own_routes(ray_server):
    """The drive, 3 GETs of /-/healthz and one of an unknown path, on the session's fresh server (the
    first test to use it: Ray's page is read whole, not as a difference, since it lags)."""
    truth = drive(ray_server)
    for _ in range(3):
        assert requests.get(ray_server.url + "/-/healthz", timeout=10).status_code == 200
    assert requests.get(ray_server.url + "/no-such-route", timeout=10).status_code == 404
    assert truth.by_status() == {200: 100, 400: 5, 500: 5}
    # GET /-/routes until it listed /double: a 503 while the proxy starts is counted too
    readiness = {("/-/routes", str(code)): n for code, n in ray_server.health_probes.items()}
    expected = {("/double", "200"): 100, ("/double", "400"): 5, ("/double", "500"): 5,
                ("/-/healthz", "200"): 3, ("", "404"): 1, **readiness}
    def healthy(page: dict) -> Counter:
        return counted(page, "ray_serve_deployment_replica_healthy", "deployment", application="doubler")

    # the counters and the controller's gauges come in reports of their own: wait for both
    page = eventually(lambda: scrape(ray_server), lambda page: ray_requests(page) == expected and healthy(page))

    # ray_serve_num_http_requests_total{application, method, route (the route prefix), status_code}, plus
    # Ray's own labels (Component, NodeAddress, SessionName, Version, WorkerId, otel_scope_*): its own
    # /-/healthz and /-/routes are counted, with application "", and so is a path no application serves,
    # with route "" too
    assert {k for labels in label_sets(page, "ray_serve_num_http_requests_total") for k in labels} >= {
        "application", "method", "route", "status_code"}
    assert counted(page, "ray_serve_num_http_requests_total", "application", route="/double") == {"doubler": 110}
    assert counted(page, "ray_serve_num_http_requests_total", "application", route="/-/healthz") == {"": 3}
    # its "error" counter holds the 4xx and the 5xx alike, by error_code
    assert ray_requests(page, "ray_serve_num_http_error_requests_total", "error_code") == {
        ("/double", "400"): 5, ("/double", "500"): 5, ("", "404"): 1,
        **{route: n for route, n in readiness.items() if route[1] != "200"}}
    # the latency histogram counts the same requests; its _sum is rebuilt from its buckets' midpoints
    assert ray_requests(page, "ray_serve_http_request_latency_ms_count") == expected
    for status in ("200", "400", "500"):
        match = {"route": "/double", "status_code": status}
        buckets = sorted((float(dict(labels)["le"]), v) for (sample, labels), v in page.items()
                         if sample == "ray_serve_http_request_latency_ms_bucket"
                         and all(dict(labels).get(k) == w for k, w in match.items()))
        midpoints, low, below = 0.0, 0.0, 0.0
        for bound, cumulative in buckets[:-1]:
            midpoints += (cumulative - below) * (low + bound) / 2
            low, below = bound, cumulative
        assert buckets[-1] == (float("inf"), below)  # nothing slower than the last finite bound
        assert sum(counted(page, "ray_serve_http_request_latency_ms_sum", "route", **match).values()) == pytest.approx(midpoints)
    # a Serve page names its replicas' health
    assert healthy(page) == {"Doubler": 1}


# --- TorchServe 0.12 ------------------------------------------------------------------------------

def ts_server_wide(page: dict) -> dict[str, float]:
    out: Counter = Counter()
    for (sample, labels), v in page.items():
        if sample in ("Requests2XX_total", "Requests4XX_total", "Requests5XX_total"):
            assert {k for k, _ in labels} == {"Level", "Hostname"} and dict(labels)["Level"] == "Host"
            out[sample.removesuffix("_total")] += v
    return out


def test_torchserve_counts_every_prediction_and_its_statuses_server_wide(torchserve_server):
    before = scrape(torchserve_server)
    truth = drive(torchserve_server)
    after = scrape(torchserve_server)

    assert truth.by_status() == {200: 100, 400: 5, 503: 5}
    # per model: ts_inference_requests_total{model_name, model_version="default", hostname}, every
    # prediction whatever its outcome, and the sum of their latencies (a counter, in microseconds)
    assert label_sets(after, "ts_inference_requests_total") == {("hostname", "model_name", "model_version")}
    def model(page, name):
        return counted(page, name, "model_version", model_name="doubler")
    assert grew(model(after, "ts_inference_requests_total"), model(before, "ts_inference_requests_total")) == {"default": 110}
    assert model(after, "ts_inference_latency_microseconds_total")["default"] > model(before, "ts_inference_latency_microseconds_total")["default"]
    # by status class: Requests2XX/4XX/5XX{Level="Host", Hostname}, no model label; the scrape in
    # between is counted as a 2XX once answered
    assert grew(ts_server_wide(after), ts_server_wide(before)) == {"Requests2XX": 101, "Requests4XX": 5, "Requests5XX": 5}


def test_torchserve_counts_pings_scrapes_and_any_4xx_in_its_server_wide_counters(torchserve_server):
    before = scrape(torchserve_server)
    for _ in range(3):
        assert torchserve_server.probe_health() == 200  # GET /ping
    assert requests.get(torchserve_server.url + "/no-such-route", timeout=10).status_code == 404
    assert requests.get(torchserve_server.url + "/predictions/nosuch", timeout=10).status_code == 404
    management = f"http://127.0.0.1:{torchserve_server.ports['management']}"
    assert requests.get(management + "/models", timeout=10).status_code == 200
    assert requests.get(management + "/models/nosuch", timeout=10).status_code == 404
    after = scrape(torchserve_server)
    # not predictions: ts_inference_requests_total did not move; every API's statuses (the management
    # API's too) and every unknown path are in the server-wide classes
    assert grew(counted(after, "ts_inference_requests_total", "model_name"), counted(before, "ts_inference_requests_total", "model_name")) == {}
    assert grew(ts_server_wide(after), ts_server_wide(before)) == {"Requests2XX": 5, "Requests4XX": 3}


def test_torchserve_restart_starts_its_counters_afresh(torchserve_server):
    ports = dict(torchserve_server.ports)
    drive(torchserve_server, good=3, client_errors=1, server_errors=1)
    torchserve_server.restart()
    assert torchserve_server.ports == ports

    fresh = scrape(torchserve_server)
    # every family is declared from the start (TYPE lines); the readiness pings alone have samples
    assert ts_server_wide(fresh) == {"Requests2XX": torchserve_server.health_probes[200]}
    assert not counted(fresh, "ts_inference_requests_total", "model_name")
    assert "# TYPE ts_inference_requests_total counter" in torchserve_server.metrics()
    drive(torchserve_server, good=10, client_errors=2, server_errors=2)
    after = scrape(torchserve_server)
    assert counted(after, "ts_inference_requests_total", "model_name") == {"doubler": 14}
    assert {k: v for k, v in ts_server_wide(after).items() if k != "Requests2XX"} == {"Requests4XX": 2, "Requests5XX": 2}


# --- PyTriton 0.7 (Triton Inference Server) --------------------------------------------------------

NV = ("nv_inference_request_success_total", "nv_inference_count_total", "nv_inference_exec_count_total",
      "nv_inference_request_duration_us_total")


def nv_counts(page: dict) -> dict[str, float]:
    """Triton's per-model counters for doubler version 1, failures by reason."""
    out = {name: counted(page, name, "model", version="1")["doubler"] for name in NV}
    for reason, n in counted(page, "nv_inference_request_failure_total", "reason", model="doubler", version="1").items():
        out[f"failure {reason}"] = n
    return out


def test_pytriton_counts_what_reaches_the_model(pytriton_server):
    before = nv_counts(scrape(pytriton_server))
    truth = drive(pytriton_server)
    after = nv_counts(scrape(pytriton_server))

    assert truth.by_status() == {200: 100, 400: 5, 500: 5}
    moved = {k: after[k] - before.get(k, 0) for k in after}
    # the 5 with the wrong datatype are refused (400) before scheduling: in no counter; the 5 the
    # function raised on are failures with reason BACKEND; durations are the successful requests' only
    assert moved["nv_inference_request_success_total"] == 100
    assert moved["nv_inference_count_total"] == 100  # inferences (batch items), one per request here
    assert {k: v for k, v in moved.items() if k.startswith("failure")} == {
        "failure BACKEND": 5, "failure CANCELED": 0, "failure OTHER": 0, "failure REJECTED": 0}
    assert moved["nv_inference_exec_count_total"] == 105  # the raising ones were executed too
    assert moved["nv_inference_request_duration_us_total"] > 0


def test_pytriton_answers_unparsable_bodies_500_and_counts_them_nowhere(pytriton_server):
    before = nv_counts(scrape(pytriton_server))
    headers = {"Content-Type": "application/json"}
    for body in (b'{"inputs": ', b"{}", json.dumps({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [1, 2]}]}).encode()):
        reply = pytriton_server.session.post(pytriton_server.predict_url, data=body, headers=headers, timeout=10)
        assert reply.status_code == 500, reply.text  # a client's mistake, answered as a server error
    for body in (json.dumps({"inputs": [{"name": "z", "shape": [1, 1], "datatype": "FP64", "data": [1]}]}).encode(),
                 json.dumps({"inputs": [{"name": "x", "shape": [9, 1], "datatype": "FP64", "data": [1] * 9}]}).encode()):
        assert pytriton_server.session.post(pytriton_server.predict_url, data=body, headers=headers, timeout=10).status_code == 400
    for path in ("/v2/health/ready", "/v2/health/live", "/v2/models/doubler/ready", "/v2/models/doubler"):
        assert requests.get(pytriton_server.url + path, timeout=10).status_code == 200
    assert requests.get(pytriton_server.url + "/v2", timeout=10).json()["version"] == "2.51.0"  # the Triton inside
    assert nv_counts(scrape(pytriton_server)) == before
    # CPU utilization as a ratio (0-1) and memory in bytes, without any GPU
    page = scrape(pytriton_server)
    assert 0 <= page[("nv_cpu_utilization", ())] <= 1 and page[("nv_cpu_memory_total_bytes", ())] > 0


def test_pytriton_restart_starts_its_counters_afresh(pytriton_server):
    ports = dict(pytriton_server.ports)
    drive(pytriton_server, good=3, client_errors=1, server_errors=1)
    pytriton_server.restart()
    assert pytriton_server.ports == ports
    fresh = nv_counts(scrape(pytriton_server))
    # every series is there at 0 from the start, failures by each reason
    assert fresh == {**{name: 0 for name in NV}, "failure BACKEND": 0, "failure CANCELED": 0, "failure OTHER": 0,
                     "failure REJECTED": 0}
    drive(pytriton_server, good=10, client_errors=2, server_errors=2)
    after = nv_counts(scrape(pytriton_server))
    assert after["nv_inference_request_success_total"] == 10 and after["failure BACKEND"] == 2


# --- the harness itself ---------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [BENTOML, MLSERVER, KSERVE, LITSERVE, TORCHSERVE, PYTRITON, RAY],
                         ids=lambda s: s.name)
def test_venv_has_the_pins_and_is_reused(spec):
    venv = ensure_venv(spec)
    assert venv == real_servers.VENVS / f"{spec.name}-{spec.version}"
    assert (venv / ".installed").read_text().split() == list(spec.pins)
    assert ensure_venv(spec) == venv  # the marker is there: nothing is installed again
    versions = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import importlib.metadata as m, sys; print(*(m.version(p) for p in sys.argv[1:]))",
         spec.pins[0].split("==")[0].split("[")[0], *(["uvloop"] if spec is MLSERVER else [])],
        capture_output=True, text=True, check=True).stdout.split()
    assert versions[0] == spec.version
    if spec is MLSERVER:
        assert tuple(int(n) for n in versions[1].split(".")[:2]) < (0, 22)  # 0.23 crashes its worker


def test_a_failed_install_says_what_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(real_servers, "VENVS", tmp_path)
    spec = replace(BENTOML, name="broken", version="0", pins=("not a requirement ===",))  # pip rejects it offline
    with pytest.raises(RuntimeError, match="could not install broken 0") as failure:
        ensure_venv(spec)
    assert "Invalid requirement" in str(failure.value)  # pip's own words, from the log's tail
    assert not (tmp_path / "broken-0" / ".installed").exists()


def test_a_failed_start_shows_the_log(tmp_path):
    spec = replace(BENTOML, name="crashing", command=lambda bin, app, ports: [
        sys.executable, "-c", "print('no model to serve'); raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match="exited with 3") as failure:
        start(spec, tmp_path, venv=Path(sys.prefix))
    assert "no model to serve" in str(failure.value)


# --- the recorded pages (make record-servers) -----------------------------------------------------

RECORDED = {  # server -> (its request counter, route label, route, status label): the drive's 110 on it
    "bentoml": ("bentoml_service_request_total", "endpoint", "/double", "http_response_code", {"200": 100, "400": 5, "500": 5}),
    "mlserver": ("rest_server_requests_total", "path", INFER, "status_code", {"200": 100, "422": 5, "500": 5}),
    # KServe has no status label: predict() calls by model, the 5 refused before it left out
    "kserve": ("request_predict_seconds_count", "model_name", "doubler", "model_name", {"doubler": 105}),
    "litserve": ("litserve_http_requests_total", "route", "/predict", "status_code", {"200": 100, "422": 5, "500": 5}),
    "ray": ("ray_serve_num_http_requests_total", "route", "/double", "status_code", {"200": 100, "400": 5, "500": 5}),
    # TorchServe's per-model counter has no status label: the 110 predictions by model
    "torchserve": ("ts_inference_requests_total", "model_name", "doubler", "model_name", {"doubler": 110}),
    # Triton: what reached the model; the 5 refused with 400 are in no counter
    "pytriton": ("nv_inference_request_failure_total", "model", "doubler", "reason",
                 {"BACKEND": 5, "CANCELED": 0, "OTHER": 0, "REJECTED": 0}),
}


@pytest.mark.parametrize("spec", [BENTOML, MLSERVER, KSERVE, LITSERVE, RAY, TORCHSERVE, PYTRITON], ids=lambda s: s.name)
def test_recorded_page_is_the_real_servers_after_the_drive(spec):
    from record_servers import FIXTURES

    text = (FIXTURES / f"{spec.name}-real.prom").read_text()
    assert f"a real {spec.name} {spec.version}" in text.splitlines()[0]  # re-record when a pin moves
    name, route_label, route, status_label, expected = RECORDED[spec.name]
    assert counted(samples(text), name, status_label, **{route_label: route}) == expected
    if spec is PYTRITON:
        assert counted(samples(text), "nv_inference_request_success_total", "model") == {"doubler": 100}


# --- the exporter's figures against the truth, with the shipped presets and no metrics_labels ----------
def exporter_source(server, preset: str, custom: dict | None = None, metrics_url: str | None = None,
                    probe_path: str | None = None):
    from mlops_kpi_exporter.config import config_from_dict
    from mlops_kpi_exporter.pricing import Pricer
    from mlops_kpi_exporter.sources.endpoints import EndpointSource

    config = config_from_dict({"mlflow": {"tracking_uri": "sqlite:///unused.db"}, "endpoints": [{
        "name": "real", "url": server.url, "metrics_url": metrics_url or server.metrics_url, "preset": preset,
        **({"custom": custom} if custom is not None else {}),
        "probe": {"path": probe_path or server.health_path, "interval": "5s", "timeout": "5s"}}]})
    return EndpointSource(config.endpoints[0], config, Pricer(config.pricing))


def readme_example(after: str) -> dict:
    """The README's YAML example that follows the text `after`, parsed."""
    import yaml

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    return yaml.safe_load(readme.split(after, 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0])


def figures(source) -> dict:
    from conftest import render

    return samples(render(source.poll()[0]))


def shown(m: dict, name: str) -> float:
    return m[(name, (("endpoint", "real"),))]


@pytest.mark.parametrize("fixture, preset", [("bentoml_server", "bentoml"), ("mlserver_server", "mlserver"),
                                             ("torchserve_server", "torchserve")])
def test_the_exporter_counts_what_the_server_did(request, fixture, preset):
    """100 good, 5 malformed, 5 raising, the exporter probing the health route between its reads:
    requests 110, errors 5 (server faults), client errors 5, latency observations 110; and after an
    upstream restart (its counters from zero) the same again on top, never a fall."""
    server = request.getfixturevalue(fixture).restart()  # counters from zero
    source = exporter_source(server, preset)
    m = figures(source)  # probes and reads before any prediction
    # an idle server is not a wrong preset (MLServer writes no request series before its first request)
    assert shown(m, "mlops_endpoint_metrics_up") == 1
    drive(server)
    for _ in range(3):
        m = figures(source)  # the health probes in between are not predictions
    assert shown(m, "mlops_endpoint_up") == 1 and shown(m, "mlops_endpoint_metrics_up") == 1
    assert shown(m, "mlops_endpoint_requests_total") == 110
    assert shown(m, "mlops_endpoint_errors_total") == 5
    assert shown(m, "mlops_endpoint_client_errors_total") == 5
    assert shown(m, "mlops_endpoint_request_duration_seconds_count") == 110
    assert m[("mlops_endpoint_request_duration_seconds_bucket", (("endpoint", "real"), ("le", "+Inf")))] == 110
    server.restart()
    figures(source)  # a read between the restart and new traffic sees the counters fall (as Prometheus would)
    drive(server)
    m = figures(source)
    assert shown(m, "mlops_endpoint_requests_total") == 220
    assert shown(m, "mlops_endpoint_errors_total") == 10
    assert shown(m, "mlops_endpoint_client_errors_total") == 10


def test_the_wrong_preset_on_a_live_page_is_unmatched_and_check_fails(mlserver_server, mlflow_server, tmp_path):
    """triton's names on MLServer's page: unmatched, metrics_up 0, and `check` exits 1 saying why."""
    import yaml

    from conftest import EXPORTER, child_env

    source = exporter_source(mlserver_server, "triton")
    m = figures(source)
    assert shown(m, "mlops_endpoint_metrics_up") == 0
    assert m[("mlops_endpoint_metrics_scrapes_total", (("endpoint", "real"), ("outcome", "unmatched")))] == 1
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "mlflow": {"tracking_uri": mlflow_server.url, "experiments": ["no-such-experiment"]},
        "endpoints": [{"name": "real", "url": mlserver_server.url, "metrics_url": mlserver_server.metrics_url,
                       "preset": "triton", "probe": {"path": mlserver_server.health_path}}]}))
    proc = subprocess.run([EXPORTER, "check", "--config", str(config)], capture_output=True, text=True,
                          env=child_env(), timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "unmatched" in proc.stdout and "nv_inference_request_success" in proc.stdout, proc.stdout


def test_the_exporter_counts_kserve_predict_calls(kserve_server):
    """KServe's preset by design: requests are predict() calls (105: the 5 refused before predict() are
    not in it, the 5 it raised on are), no errors or client errors at all (KServe has no status series),
    latency is time inside predict(); after an upstream restart, the same again on top."""
    server = kserve_server.restart()
    source = exporter_source(server, "kserve")
    m = figures(source)
    assert shown(m, "mlops_endpoint_metrics_up") == 1  # idle: its histograms are declared, not yet sampled
    drive(server)
    for _ in range(3):
        m = figures(source)
    assert shown(m, "mlops_endpoint_up") == 1 and shown(m, "mlops_endpoint_metrics_up") == 1
    assert shown(m, "mlops_endpoint_requests_total") == 105
    assert not [name for name, _ in m if name.startswith(("mlops_endpoint_errors", "mlops_endpoint_client_errors"))]
    assert shown(m, "mlops_endpoint_request_duration_seconds_count") == 105
    assert m[("mlops_endpoint_request_duration_seconds_bucket", (("endpoint", "real"), ("le", "+Inf")))] == 105
    server.restart()
    figures(source)
    drive(server)
    assert shown(figures(source), "mlops_endpoint_requests_total") == 210


@pytest.mark.parametrize("metrics_path", ["/metrics", "/metrics/"], ids=["redirected", "direct"])
def test_the_exporter_counts_litserve_with_the_readmes_custom_mapping(litserve_server, metrics_path):
    """The README's LitServe mapping, on the service instrumented as it says, read at /metrics (307 to
    /metrics/, followed once) or at /metrics/: 110 requests, 5 errors, 5 client errors, 110 latency
    observations, the exporter's /health probes, the scrapes and the redirect left out; the same again
    on top after a restart."""
    example = readme_example("LitServe has no metrics of its own")
    assert example["preset"] == "custom" and example["metrics_url"].endswith("/metrics")
    server = litserve_server.restart()
    source = exporter_source(server, "custom", custom=example["custom"], metrics_url=server.url + metrics_path)
    m = figures(source)
    assert shown(m, "mlops_endpoint_metrics_up") == 1  # before any prediction
    assert shown(m, "mlops_endpoint_requests_total") == 0
    drive(server)
    for _ in range(3):
        m = figures(source)
    assert shown(m, "mlops_endpoint_up") == 1 and shown(m, "mlops_endpoint_metrics_up") == 1
    assert shown(m, "mlops_endpoint_requests_total") == 110
    assert shown(m, "mlops_endpoint_errors_total") == 5
    assert shown(m, "mlops_endpoint_client_errors_total") == 5
    assert shown(m, "mlops_endpoint_request_duration_seconds_count") == 110
    server.restart()
    figures(source)
    drive(server)
    m = figures(source)
    assert shown(m, "mlops_endpoint_requests_total") == 220
    assert shown(m, "mlops_endpoint_errors_total") == 10
    assert shown(m, "mlops_endpoint_client_errors_total") == 10


def test_the_exporter_counts_ray_serve_with_the_readmes_custom_mapping(ray_server):
    """The README's Ray Serve mapping, the exporter probing /-/healthz (which Ray counts): 110 requests,
    5 errors, 5 client errors, 110 latency observations once Ray has pushed them to its page; after a
    restart of the whole cluster, the same again on top."""
    example = readme_example("For example Ray Serve:")
    assert example["preset"] == "custom"
    server = ray_server.restart()
    source = exporter_source(server, "custom", custom=example["custom"], probe_path="/-/healthz")
    figures(source)  # a just-started Ray may have no Serve series on its page yet: unmatched, for a moment

    cpu = ("mlops_endpoint_utilization_ratio", (("endpoint", "real"), ("resource", "cpu")))

    def settled(want: tuple[int, int, int, int]):
        # Ray's node figures (CPU) come in a report of their own, apart from Serve's counters
        return eventually(lambda: figures(source), lambda m: shown(m, "mlops_endpoint_metrics_up") == 1 and (
            shown(m, "mlops_endpoint_requests_total"), shown(m, "mlops_endpoint_errors_total"),
            shown(m, "mlops_endpoint_client_errors_total"), shown(m, "mlops_endpoint_request_duration_seconds_count"),
        ) == want and cpu in m)

    drive(server)
    m = settled((110, 5, 5, 110))
    assert shown(m, "mlops_endpoint_up") == 1
    assert m[("mlops_endpoint_request_duration_seconds_bucket", (("endpoint", "real"), ("le", "+Inf")))] == 110
    assert 0 < m[cpu] <= 1
    # the probes were counted by Ray, under /-/healthz: left out
    assert ray_requests(scrape(server)).get(("/-/healthz", "200"), 0) >= 1
    server.restart()
    figures(source)
    drive(server)
    settled((220, 10, 10, 220))
    # the restarted cluster counts from nothing: its page holds the second drive alone
    assert {k: v for k, v in ray_requests(scrape(server)).items() if k[0] == "/double"} == {
        ("/double", "200"): 100, ("/double", "400"): 5, ("/double", "500"): 5}


def test_the_exporter_counts_what_reaches_triton(pytriton_server):
    """The triton preset on PyTriton by design: requests are what Triton scheduled (105: the 5 it refused
    with 400 before the model are not on its page), errors its failures (the 5 the function raised on),
    no client errors (Triton has no status series), latency the successful requests' (100); after a
    restart, the same again on top."""
    server = pytriton_server.restart()
    source = exporter_source(server, "triton")
    m = figures(source)
    assert shown(m, "mlops_endpoint_metrics_up") == 1
    drive(server)
    for _ in range(3):
        m = figures(source)
    assert shown(m, "mlops_endpoint_up") == 1 and shown(m, "mlops_endpoint_metrics_up") == 1
    assert shown(m, "mlops_endpoint_requests_total") == 105
    assert shown(m, "mlops_endpoint_errors_total") == 5
    assert not [name for name, _ in m if name.startswith("mlops_endpoint_client_errors")]
    assert shown(m, "mlops_endpoint_request_duration_seconds_count") == 100
    assert 0 < shown(m, "mlops_endpoint_request_duration_seconds_sum") < 100  # microseconds read as seconds
    assert 0 <= m[("mlops_endpoint_utilization_ratio", (("endpoint", "real"), ("resource", "cpu")))] <= 1
    server.restart()
    figures(source)
    drive(server)
    m = figures(source)
    assert shown(m, "mlops_endpoint_requests_total") == 210
    assert shown(m, "mlops_endpoint_errors_total") == 10
