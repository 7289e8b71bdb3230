"""The demo against a tracking server and a model server: the history and a tiny servable model
seeded once (`seed_server`), then steady prediction traffic so the serving panels move (`traffic`)."""

from __future__ import annotations

import logging
import random
import time
import warnings

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
