"""The demo against a tracking server and a model server: the history and a tiny servable model
seeded once (`seed_server`), then steady prediction traffic so the serving panels move (`traffic`)."""

from __future__ import annotations

import logging
import random
import threading
import time
import warnings
from pathlib import Path

from mlops_kpi_exporter import extras
from mlops_kpi_exporter.demo_history import seed

log = logging.getLogger(__name__)

DEMO_MODEL = "demo-doubler"


def seed_server(tracking_uri: str) -> str:
    """Demo history and a tiny servable model (DEMO_MODEL@champion) in a tracking server; once. Raises
    extras.MissingExtra without the `local` extra: logging a pyfunc model needs MLflow's model stack."""
    extras.require("local", "seeding a tracking server with a servable model", extras.MODEL_LOGGING)
    import mlflow
    from mlflow.tracking import MlflowClient

    from mlops_kpi_exporter.demo_model import Doubler

    client = MlflowClient(tracking_uri=tracking_uri)
    if client.get_experiment_by_name("churn-training") is not None:
        return "demo data already there: nothing to do"
    runs = seed(tracking_uri, None, now_ms=int(time.time() * 1000))
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("serving-demo")
    with mlflow.start_run(run_name="demo-doubler"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the same type-hint advice, again at logging time
        info = mlflow.pyfunc.log_model(name="model", python_model=Doubler(), registered_model_name=DEMO_MODEL)
    client.set_registered_model_alias(DEMO_MODEL, "champion", str(info.registered_model_version))
    return f"{runs} demo runs and model {DEMO_MODEL}@champion written to {tracking_uri}"


def traffic(url: str, rps: float, duration: float | None = None, metrics_port: int | None = None) -> int:
    """Steady prediction requests to a model server, so serving panels move; returns requests sent.

    MLflow's scoring server has no /metrics, so with `metrics_port` the generator serves its own
    client-side view (requests, errors, latency) for the exporter to read with a custom preset.
    """
    import requests
    from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

    registry = CollectorRegistry()
    requests_total = Counter("demo_client_requests", "Prediction requests sent.", registry=registry)
    errors_total = Counter("demo_client_errors", "Prediction requests that failed.", registry=registry)
    latency = Histogram("demo_client_request_duration_seconds", "Prediction latency seen by the client.",
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=registry)
    if metrics_port is not None:
        start_http_server(metrics_port, registry=registry)
    rng = random.Random()
    sent = failed = 0
    started = time.monotonic()
    while duration is None or time.monotonic() - started < duration:
        payload = {"dataframe_split": {"columns": ["x"], "data": [[round(rng.uniform(0, 10), 3)]]}}
        sent += 1
        requests_total.inc()
        with latency.time():
            try:
                requests.post(url, json=payload, timeout=2).raise_for_status()
            except requests.RequestException as exc:
                failed += 1
                errors_total.inc()
                log.warning("request to %s failed: %s", url, exc)
        time.sleep(1 / rps)
    log.info("sent %d requests (%d failed)", sent, failed)
    return sent


# --- `make demo` serves: the demo's model behind MLflow's own scoring server, in-process on loopback --
DEMO_TIMEOUT_S = 1  # the scoring server's request timeout in the demo: a slow prediction is a 504
ROUTE_LABEL = "path"


class DemoModelServer:
    """MLflow's scoring server (its own FastAPI app, `mlflow models serve`'s) for the demo model, run in
    a thread on 127.0.0.1, with steady predictions sent to it: a few malformed (400) and a few too slow
    (504). MLflow's scoring server has no metrics page, so the demo adds one to the app: requests by
    path and status, and their latency, measured around MLflow's own handlers (the exporter reads it
    with a custom mapping, the demo config's). Needs the `local` extra."""

    def __init__(self, data_dir: Path, rps: float = 2.0):
        extras.require("local", "the demo's model server (mlflow.pyfunc)", extras.MODEL_LOGGING)
        self.model_dir = Path(data_dir) / "model"
        self.rps = rps
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stop = threading.Event()
        self.sent = {"ok": 0, "client_error": 0, "server_error": 0}

    def start(self, timeout: float = 60.0, traffic: bool = True) -> DemoModelServer:
        """Serve, and with `traffic` send the steady predictions (without: only what `predict` sends)."""
        import uvicorn

        server = uvicorn.Server(uvicorn.Config(self._app(), host="127.0.0.1", port=self.port, log_level="warning",
                                               access_log=False))
        threading.Thread(target=server.run, name="demo-model-server", daemon=True).start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the demo's model server did not start on {self.url} in {timeout:.0f}s")
            self.stop.wait(0.05)
        self._server = server
        if traffic:
            threading.Thread(target=self._traffic, name="demo-traffic", daemon=True).start()
        log.info("demo model %s served by MLflow's scoring server at %s/invocations, %.0f predictions a second",
                 DEMO_MODEL, self.url, self.rps)
        return self

    def close(self) -> None:
        self.stop.set()
        if getattr(self, "_server", None) is not None:
            self._server.should_exit = True

    def _app(self):
        import os

        import mlflow.pyfunc
        from mlflow.pyfunc import scoring_server
        from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
        from starlette.requests import Request
        from starlette.responses import Response

        from mlops_kpi_exporter.demo_model import Doubler

        if not (self.model_dir / "MLmodel").exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mlflow.pyfunc.save_model(path=str(self.model_dir), python_model=Doubler())
        os.environ["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"] = str(DEMO_TIMEOUT_S)
        app = scoring_server.init(mlflow.pyfunc.load_model(str(self.model_dir)))
        registry = CollectorRegistry()
        served = Counter("demo_model_http_requests", "HTTP requests the demo model server answered.",
                         (ROUTE_LABEL, "status_code"), registry=registry)
        latency = Histogram("demo_model_http_request_duration_seconds", "Time to answer, in the server.",
                            (ROUTE_LABEL,), registry=registry,
                            buckets=(0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))

        @app.middleware("http")  # added last: the outermost, so it sees the timeout's 504 too
        async def measure(request: Request, call_next):
            started = time.perf_counter()
            response = await call_next(request)
            path = request.url.path[:64]
            served.labels(path, str(response.status_code)).inc()
            latency.labels(path).observe(time.perf_counter() - started)
            return response

        @app.get("/metrics")
        async def metrics():
            return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

        return app

    def predict(self, x: float) -> int:
        """One prediction; its HTTP status (0: no reply)."""
        import requests

        if not hasattr(self, "_session"):
            self._session = requests.Session()
            self._session.trust_env = False  # loopback, never through a proxy
        try:
            reply = self._session.post(f"{self.url}/invocations", timeout=5,
                                       json={"dataframe_split": {"columns": ["x"], "data": [[x]]}})
        except requests.RequestException as exc:
            log.debug("demo prediction failed: %s", exc)
            return 0
        kind = "ok" if reply.status_code < 400 else "client_error" if reply.status_code < 500 else "server_error"
        self.sent[kind] += 1
        return reply.status_code

    def _traffic(self) -> None:
        """Steady predictions: one in 40 malformed (the model refuses negatives), one in 97 too slow."""
        rng = random.Random(7)
        n = 0
        while not self.stop.wait(1 / self.rps):
            n += 1
            self.predict(-1.0 if n % 40 == 0 else 1500.0 if n % 97 == 0 else round(rng.uniform(0, 10), 3))


def demo_endpoint(url: str) -> dict:
    """The demo config's endpoint: the demo model's server, probed and read (see DemoModelServer)."""
    return {
        "name": "demo-doubler", "url": url, "probe": {"path": "/ping", "interval": "5s", "timeout": "2s"},
        "metrics_url": f"{url}/metrics", "instance_type": "m5.large", "replicas": 2, "capacity_rps": 20,
        "preset": "custom",
        "custom": {
            "route_label": ROUTE_LABEL,  # /ping (the exporter's probe) and /metrics are not predictions
            "requests": [{"name": "demo_model_http_requests_total"}],
            "errors": [{"name": "demo_model_http_requests_total", "labels": {"status_code": "~5.."}}],
            "client_errors": [{"name": "demo_model_http_requests_total", "labels": {"status_code": "~4.."}}],
            "latency_histogram": {"name": "demo_model_http_request_duration_seconds"},
        },
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
