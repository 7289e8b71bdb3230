"""Real model servers from PyPI, run on 127.0.0.1 for the test tier, and driven with known traffic.

Each server is one small `ServerSpec`: its pins (installed into a virtualenv of its own, made once and
kept under `.cache/server-venvs/<server>-<version>/`), the tiny model it serves (a function that doubles
its input and raises on a negative one), the command that starts it, and its routes and payloads.
`start(spec, workdir)` runs it on free loopback ports; `drive(server, ...)` sends an exact mix of good,
malformed (4xx) and raising (5xx) requests and returns what was sent and what came back (`Truth`), so a
test can hold the server's own /metrics page, or the exporter's figures, against it.

To add a server (TorchServe, PyTriton...): write one more spec below and add it to
SPECS. What each status really is was found by sending the requests and reading the codes back.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import requests

from conftest import free_port

REPO = Path(__file__).resolve().parents[1]
VENVS = REPO / ".cache" / "server-venvs"
INSTALL_TIMEOUT = 1800.0  # seconds for one `pip install` (cold, it takes well under a minute here)
READY_TIMEOUT = 120.0  # the first start of a fresh venv imports (and byte-compiles) a lot
STOP_TIMEOUT = 30.0
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ServerSpec:
    """One model server: how to install it, what it serves, how to start it, what to send it."""

    name: str  # short name, used in paths and fixture files: "bentoml"
    version: str  # the server package's version (the first pin pins it)
    pins: tuple[str, ...]  # pip requirements installed into the server's own venv
    files: Mapping[str, str]  # the model/service source: relative path -> text, written into the app dir
    ports: tuple[str, ...]  # names of the loopback ports it needs; "http" serves predictions and health
    command: Callable[[Path, Path, Mapping[str, int]], list[str]]  # (venv bin dir, app dir, ports) -> argv
    health_path: str  # GET, 200 once the model can serve
    predict_path: str  # POST, JSON
    good: Callable[[float], bytes]  # a request body asking to double x
    answer: Callable[[bytes], float]  # the doubled value, read from a good reply's body
    client_error: bytes  # a malformed request: the server answers 4xx without calling the model
    server_error: bytes  # a well-formed request whose input makes the model raise: the server answers 5xx
    env: Callable[[Path, Mapping[str, int]], Mapping[str, str]] = lambda app, ports: {}
    metrics_port: str = "http"  # which of `ports` serves the metrics page
    metrics_path: str = "/metrics"
    content_type: str = "application/json"
    ready_body: str | None = None  # ready once the health reply is 200 and holds this text (else 200 alone)
    keep_alive: bool = True  # False: each request on a connection of its own (`Connection: close`)
    scratch: Callable[[Mapping[str, int]], tuple[Path, ...]] = lambda ports: ()  # written outside the app dir: removed at stop
    # a page that lags behind the traffic (Ray's): whether it already shows the n predict requests sent
    shows: Callable[[str, int], bool] = lambda page, n: True


# --- BentoML -------------------------------------------------------------------------------------
# A 1.4 service (the new SDK): one API `double` at POST /double, JSON {"x": <float>} in, a JSON number out.
# 4xx: BentoML validates the body with pydantic before the API runs: invalid JSON, a missing field
# ({"y": 1}), a string for x, an array, an empty body all answer 400 (so does a text/plain body). GET on
# the route is 405, an unknown path 404.  5xx: the API raising answers 500 {"error": "An unexpected error
# has occurred..."}.  Metrics: /metrics on the same port; /healthz, /readyz, /livez are counted in
# bentoml_service_request_total like any route (endpoint label = the literal path).
BENTOML_SERVICE = '''\
import bentoml


@bentoml.service(workers=1)
class Doubler:
    @bentoml.api
    def double(self, x: float) -> float:
        if x < 0:
            raise ValueError(f"negative input {x}")
        return 2 * x
'''

BENTOML = ServerSpec(
    name="bentoml",
    version="1.4.40",
    pins=("bentoml==1.4.40",),
    files={"service.py": BENTOML_SERVICE},
    ports=("http",),
    command=lambda bin, app, ports: [str(bin / "bentoml"), "serve", "service:Doubler", "--working-dir", str(app),
                                     "--host", LOOPBACK, "--port", str(ports["http"])],
    env=lambda app, ports: {"BENTOML_HOME": str(app / "bentoml-home"), "BENTOML_DO_NOT_TRACK": "true"},
    health_path="/healthz",
    predict_path="/double",
    good=lambda x: json.dumps({"x": x}).encode(),
    answer=lambda body: float(json.loads(body)),
    client_error=b'{"x": ',  # invalid JSON: 400
    server_error=b'{"x": -1}',  # the API raises ValueError: 500
)

# --- MLServer ------------------------------------------------------------------------------------
# A custom runtime (MLModel) under the model name "doubler", served by `mlserver start <app dir>` with its
# default inference pool (parallel_workers 1: the model runs in a worker process). V2 inference
# protocol: POST /v2/models/doubler/infer {"inputs": [{"name", "shape", "datatype", "data"}]}.
# 4xx: FastAPI validates the body against InferenceRequest before the model runs: invalid JSON, a body
# without "inputs", an unknown datatype, an empty body, a non-JSON content type all answer 422; an
# unknown model name 404.  5xx: whatever the model raises answers 500 {"error": "builtins.ValueError: ..."}
# -- and so does a schema-valid request the model cannot read (shape [2] with one datum, "inputs": []).
# Metrics: on their own port (settings metrics_port, env MLSERVER_METRICS_PORT; default 8082).
# Ports, host and the multiprocess metrics dir are set through MLSERVER_* variables, settings.json
# stays fixed. uvloop is held below 0.22: 0.23 crashes MLServer's worker process.
MLSERVER_MODEL = '''\
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class Doubler(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        if (x < 0).any():
            raise ValueError(f"negative input {x.tolist()}")
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("y", x * 2)])
'''


def _v2_request(x: float) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [x]}]}).encode()


MLSERVER = ServerSpec(
    name="mlserver",
    version="1.7.1",
    pins=("mlserver==1.7.1", "uvloop<0.22"),
    files={
        "settings.json": json.dumps({"debug": False}) + "\n",
        "doubler/model-settings.json": json.dumps({"name": "doubler", "implementation": "model.Doubler"}) + "\n",
        "doubler/model.py": MLSERVER_MODEL,
    },
    ports=("http", "grpc", "metrics"),
    command=lambda bin, app, ports: [str(bin / "mlserver"), "start", str(app)],
    env=lambda app, ports: {
        "MLSERVER_HOST": LOOPBACK,
        "MLSERVER_HTTP_PORT": str(ports["http"]),
        "MLSERVER_GRPC_PORT": str(ports["grpc"]),
        "MLSERVER_METRICS_PORT": str(ports["metrics"]),
        "MLSERVER_METRICS_DIR": str(app / ".metrics"),
    },
    metrics_port="metrics",
    # Server-wide readiness: 200 once every model is loaded (400 before). MLServer's request counters
    # skip /v2/health/*; /v2/models/doubler/ready is counted.
    health_path="/v2/health/ready",
    predict_path="/v2/models/doubler/infer",
    good=_v2_request,
    answer=lambda body: float(json.loads(body)["outputs"][0]["data"][0]),
    client_error=b'{"inputs": ',  # invalid JSON: 422
    server_error=_v2_request(-1.0),  # the model raises ValueError: 500
)

# --- KServe --------------------------------------------------------------------------------------
# The KServe Python model server (kserve.Model + kserve.ModelServer, what KServe's custom predictors run),
# model name "doubler", V1 protocol: POST /v1/models/doubler:predict {"instances": [x]} -> {"predictions": [2x]}.
# KServe's REST server binds 0.0.0.0 with no option to change it: the model file makes uvicorn bind
# 127.0.0.1. gRPC is off (--enable_grpc false). One uvicorn worker (the default), so one process.
# 4xx: a body that is not JSON is refused while decoding (400 {"error": "Unrecognized request format"}),
# before the model is called; the model raising kserve.errors.InvalidInput answers 400 too, but from
# inside predict().  5xx: predict() raising anything else answers 500 {"error": "ValueError : ..."}.
# A body sent without Content-Type: application/json is handed to the model as raw bytes. Each 500 also
# closes its connection (see keep_alive).
# Metrics: /metrics on the same port: histograms request_preprocess_seconds, request_predict_seconds,
# request_postprocess_seconds, request_explain_seconds, label model_name only; no route, status or error
# series, so health checks (GET /, /v1/models/doubler, /v2/health/*) are never counted.
KSERVE_MODEL = '''\
import uvicorn

import kserve
from kserve.errors import InvalidInput


class _Loopback(uvicorn.Config):  # KServe's REST server hard-codes host="0.0.0.0"
    def __init__(self, app, **kwargs):
        kwargs["host"] = "127.0.0.1"
        super().__init__(app, **kwargs)


uvicorn.Config = _Loopback


class Doubler(kserve.Model):
    def __init__(self, name: str):
        super().__init__(name)
        self.load()

    def load(self) -> bool:
        self.ready = True
        return self.ready

    def predict(self, payload, headers=None):
        xs = payload["instances"]
        if not all(isinstance(x, (int, float)) for x in xs):
            raise InvalidInput(f"instances must be numbers, got {xs!r}")
        if any(x < 0 for x in xs):
            raise ValueError(f"negative input {xs}")
        return {"predictions": [2 * x for x in xs]}


if __name__ == "__main__":
    kserve.ModelServer().start([Doubler(kserve.model_server.args.model_name)])
'''

KSERVE = ServerSpec(
    name="kserve",
    version="0.21.0",
    pins=("kserve==0.21.0",),
    files={"model.py": KSERVE_MODEL},
    ports=("http",),
    command=lambda bin, app, ports: [str(bin / "python"), str(app / "model.py"), "--model_name", "doubler",
                                     "--http_port", str(ports["http"]), "--enable_grpc", "false"],
    health_path="/v1/models/doubler",  # the model's readiness: 200 {"name": "doubler", "ready": true}
    predict_path="/v1/models/doubler:predict",
    good=lambda x: json.dumps({"instances": [x]}).encode(),
    answer=lambda body: float(json.loads(body)["predictions"][0]),
    client_error=b'{"instances": ',  # not JSON: 400 before predict()
    server_error=b'{"instances": [-1]}',  # predict() raises ValueError: 500
    # after a 500, Starlette re-raises the exception its handler answered and uvicorn closes the
    # connection: a keep-alive client's next request on it is reset
    keep_alive=False,
)

# --- LitServe ------------------------------------------------------------------------------------
# LitServe has no metrics of its own: the service below instruments itself as LitServe's docs show
# ("Logging and monitoring": a Logger that mounts prometheus_client's ASGI app at /metrics, in
# prometheus_client's multiprocess mode, since LitServe runs its HTTP server in a forked process, its
# model in spawned inference workers and its loggers in one more process), plus a small ASGI
# middleware (LitServer(middlewares=...)) that counts every HTTP request by route and status, which no
# LitServe hook sees. Its names are this example's own: a user's instrumentation names its own.
# POST /predict {"x": <float>} -> {"y": 2x}; the request type is a pydantic model, so FastAPI validates
# the body before LitServe queues it.  4xx: invalid JSON, a missing or non-numeric x: 422.
# 5xx: predict() raising answers 500 {"detail": "Internal server error"}.  GET /health: 200 once the
# inference worker is set up (503 before).  Mount quirk: GET /metrics answers 307 to /metrics/.
LITSERVE_SERVICE = '''\
import os
import shutil
import time

if __name__ == "__main__":  # a fresh start counts from nothing: the last run's value files go
    shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"])

import litserve as ls
from prometheus_client import CollectorRegistry, Counter, Histogram, make_asgi_app, multiprocess
from pydantic import BaseModel

registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)

REQUESTS = Counter("litserve_http_requests", "HTTP requests answered, by route and status",
                   ["route", "status_code"])
LATENCY = Histogram("litserve_http_request_duration_seconds", "HTTP request latency, by route", ["route"])
PREDICT = Histogram("litserve_predict_seconds", "time inside predict(), for the calls that returned")


class PrometheusMiddleware:
    """Every HTTP request, by its path and the status it got (500 if the app raised)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        finally:
            REQUESTS.labels(scope["path"], str(status)).inc()
            LATENCY.labels(scope["path"]).observe(time.perf_counter() - started)


class PrometheusLogger(ls.Logger):
    def process(self, key, value):
        if key == "predict_seconds":
            PREDICT.observe(value)


class Input(BaseModel):
    x: float


class Doubler(ls.LitAPI):
    def setup(self, device):
        pass

    def decode_request(self, request: Input):
        return request.x

    def predict(self, x):
        started = time.perf_counter()
        if x < 0:
            raise ValueError(f"negative input {x}")
        self.log("predict_seconds", time.perf_counter() - started)
        return 2 * x

    def encode_response(self, output):
        return {"y": output}


if __name__ == "__main__":
    logger = PrometheusLogger()
    logger.mount(path="/metrics", app=make_asgi_app(registry=registry))
    server = ls.LitServer(Doubler(), loggers=logger, middlewares=[PrometheusMiddleware])
    server.run(host="127.0.0.1", port=int(os.environ["LITSERVE_PORT"]), generate_client_file=False)
'''

LITSERVE = ServerSpec(
    name="litserve",
    version="0.2.19",
    pins=("litserve==0.2.19", "prometheus-client==0.26.0"),
    files={"service.py": LITSERVE_SERVICE},
    ports=("http",),
    command=lambda bin, app, ports: [str(bin / "python"), str(app / "service.py")],
    env=lambda app, ports: {"LITSERVE_PORT": str(ports["http"]), "PROMETHEUS_MULTIPROC_DIR": str(app / ".metrics")},
    health_path="/health",
    predict_path="/predict",
    good=lambda x: json.dumps({"x": x}).encode(),
    answer=lambda body: float(json.loads(body)["y"]),
    client_error=b'{"x": ',  # invalid JSON: 422 (FastAPI's validation, before LitServe queues it)
    server_error=b'{"x": -1}',  # predict() raises ValueError: 500
    metrics_path="/metrics/",  # where the mount answers; /metrics redirects here (307)
)

# --- Ray Serve -----------------------------------------------------------------------------------
# A one-node Ray cluster (`ray start --head`, every port it opens chosen here, the dashboard off, usage
# stats off) and a Serve application "doubler" at route prefix /double, deployed by a driver that then
# waits; SIGTERM to the group stops the lot. POST /double {"x": <float>} -> {"y": 2x}.
# 4xx: the deployment answers a body it cannot read (invalid JSON, no numeric x) with 400 itself.
# 5xx: the deployment raising answers 500 (Ray Serve's own "Internal Server Error" page).
# Readiness: /-/healthz answers 200 as soon as the proxy is up, before the application is: the harness
# waits for /-/routes to list /double. Metrics: on the --metrics-export-port, served by Ray's
# dashboard agent; Ray pushes them there every metrics_report_interval_ms (10 s by default, 1 s here).
RAY_DRIVER = '''\
import os
import shutil
import signal
import subprocess
import sys
import time

import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Doubler:
    async def __call__(self, request: Request):
        try:
            x = float((await request.json())["x"])
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "expected a JSON body {\\"x\\": <number>}"}, status_code=400)
        if x < 0:
            raise ValueError(f"negative input {x}")
        return {"y": 2 * x}


def main():
    port = {name: os.environ[f"RAY_TEST_{name.upper()}_PORT"] for name in (
        "http", "metrics", "gcs", "node_manager", "object_manager", "agent_http", "agent_grpc", "runtime_env",
        "client")}
    temp = os.environ["RAY_TEST_TEMP_DIR"]  # short: Ray's unix socket paths must fit in 107 bytes
    shutil.rmtree(temp, ignore_errors=True)
    subprocess.run([
        os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
        f"--port={port['gcs']}", f"--node-manager-port={port['node_manager']}",
        f"--object-manager-port={port['object_manager']}", f"--metrics-export-port={port['metrics']}",
        f"--dashboard-agent-listen-port={port['agent_http']}", f"--dashboard-agent-grpc-port={port['agent_grpc']}",
        f"--runtime-env-agent-port={port['runtime_env']}", f"--ray-client-server-port={port['client']}",
        "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}", "--num-cpus=2",
        "--object-store-memory=100000000"], check=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ray.init(address=f"127.0.0.1:{port['gcs']}")
    serve.start(http_options={"host": "127.0.0.1", "port": int(port["http"])})
    serve.run(Doubler.bind(), name="doubler", route_prefix="/double")
    print("serving", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
'''

def _ray_counted(page: str, route: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(sample.value for family in text_string_to_metric_families(page) for sample in family.samples
               if sample.name == "ray_serve_num_http_requests_total" and sample.labels.get("route") == route)


def _ray_temp(ports: Mapping[str, int]) -> Path:
    return Path(f"/tmp/ray-{ports['gcs']}")  # short: Ray's unix socket paths in it must fit in 107 bytes


RAY = ServerSpec(
    name="ray",
    version="2.60.0",
    pins=("ray[serve]==2.60.0",),
    files={"driver.py": RAY_DRIVER},
    ports=("http", "metrics", "gcs", "node_manager", "object_manager", "agent_http", "agent_grpc", "runtime_env",
           "client"),
    command=lambda bin, app, ports: [str(bin / "python"), str(app / "driver.py")],
    env=lambda app, ports: {**{f"RAY_TEST_{name.upper()}_PORT": str(port) for name, port in ports.items()},
                            "RAY_TEST_TEMP_DIR": str(_ray_temp(ports)), "RAY_USAGE_STATS_ENABLED": "0",
                            # its metrics reach the page every second, not every 10 s (a RayConfig entry)
                            "RAY_metrics_report_interval_ms": "1000",
                            # Ray turns --node-ip-address=127.0.0.1 into the host's own address (its
                            # processes then talk over it) unless clusters are off, as on macOS: loopback
                            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
    metrics_port="metrics",
    health_path="/-/routes",  # 200 {} from the proxy's start; lists /double once the app is running
    ready_body='"/double"',
    predict_path="/double",
    good=lambda x: json.dumps({"x": x}).encode(),
    answer=lambda body: float(json.loads(body)["y"]),
    client_error=b'{"x": ',  # invalid JSON: the deployment answers 400
    server_error=b'{"x": -1}',  # the deployment raises ValueError: 500
    scratch=lambda ports: (_ray_temp(ports),),  # its sessions' logs and sockets
    shows=lambda page, n: _ray_counted(page, "/double") == n,
)

# --- TorchServe ----------------------------------------------------------------------------------
# TorchServe 0.12 (a Java frontend, the jar inside the wheel, needs Java 17: Debian's
# openjdk-17-jre-headless; a Python worker that imports torch: the CPU wheel) serving the model
# "doubler" from a model store in TorchServe's no-archive form (a directory with MAR-INF/MANIFEST.json)
# and a function handler. POST /predictions/doubler {"x": <float>} -> {"y": 2x}. Every address on
# 127.0.0.1 (inference, management, metrics, both gRPC ports); token authorization off; Prometheus mode.
# 4xx: TorchServe hands the body to the handler as it is (JSON it cannot parse as bytes): the handler
# refuses what it cannot read with PredictionException(..., 400).  5xx: the handler raising anything
# else answers 503 {"code": 503, "type": "InternalServerException", "message": "Prediction failed"}.
# torch==2.13.0 installs the CPU wheel this machine keeps in pip's find-links (/opt/wheels, 2.13.0+cpu
# sorts above PyPI's 2.13.0); elsewhere pip would fetch PyPI's, with its CUDA libraries.
TORCHSERVE_HANDLER = '''\
from ts.utils.util import PredictionException


def handle(data, context):
    if data is None:  # the call at load time
        return None
    out = []
    for row in data:
        body = row.get("body", row.get("data"))
        if not isinstance(body, dict) or not isinstance(body.get("x"), (int, float)):
            raise PredictionException("expected a JSON body {\\"x\\": <number>}", 400)
        if body["x"] < 0:
            raise ValueError(f"negative input {body['x']}")
        out.append({"y": 2 * body["x"]})
    return out
'''


def _torchserve_config(app: Path, ports: Mapping[str, int]) -> list[str]:
    config = app / "config.properties"
    config.write_text("".join(f"{k}={v}\n" for k, v in {
        "inference_address": f"http://{LOOPBACK}:{ports['http']}",
        "management_address": f"http://{LOOPBACK}:{ports['management']}",
        "metrics_address": f"http://{LOOPBACK}:{ports['metrics']}",
        "grpc_inference_address": LOOPBACK, "grpc_inference_port": ports["grpc"],
        "grpc_management_address": LOOPBACK, "grpc_management_port": ports["grpc_management"],
        "initial_worker_port": ports["worker"],  # names its worker's unix socket (/tmp/.ts.sock.<port>)
        "metrics_mode": "prometheus", "disable_token_authorization": "true",
        "model_store": app / "model-store", "load_models": "doubler=doubler",
        "default_workers_per_model": 1, "install_py_dep_per_model": "false",
    }.items()))
    return ["--ts-config", str(config)]


TORCHSERVE = ServerSpec(
    name="torchserve",
    version="0.12.0",
    pins=("torchserve==0.12.0", "torch==2.13.0", "pyyaml==6.0.3", "numpy==2.4.6"),
    files={
        "model-store/doubler/MAR-INF/MANIFEST.json": json.dumps({
            "runtime": "python", "archiverVersion": "0.12.0",
            "model": {"modelName": "doubler", "handler": "handler.py", "modelVersion": "1.0"}}) + "\n",
        "model-store/doubler/handler.py": TORCHSERVE_HANDLER,
    },
    ports=("http", "management", "metrics", "grpc", "grpc_management", "worker"),
    command=lambda bin, app, ports: [str(bin / "torchserve"), "--start", "--foreground", "--ncs",
                                     *_torchserve_config(app, ports)],
    env=lambda app, ports: {"LOG_LOCATION": str(app / "logs"), "METRICS_LOCATION": str(app / "logs")},
    metrics_port="metrics",
    health_path="/ping",  # {"status": "Healthy"} once its worker is up (the frontend answers before)
    ready_body="Healthy",
    predict_path="/predictions/doubler",
    good=lambda x: json.dumps({"x": x}).encode(),
    answer=lambda body: float(json.loads(body)["y"]),
    client_error=b'{"x": ',  # not JSON: the handler refuses it, 400
    server_error=b'{"x": -1}',  # the handler raises ValueError: 503
    scratch=lambda ports: (Path(f"/tmp/.ts.sock.{ports['worker']}"),),  # its worker's unix socket
)

# --- PyTriton (Triton Inference Server) ----------------------------------------------------------
# nvidia-pytriton 0.7 runs the Triton Inference Server binary shipped in its wheel, with a Python
# function bound as model "doubler" (one FP64 input x, one output y, batching up to 8); Triton's own
# HTTP (KServe V2 protocol), gRPC and metrics servers, each on 127.0.0.1, GPU metrics off. Triton's
# Python backend stub links against libpython: LD_LIBRARY_PATH holds the interpreter's lib dir.
# POST /v2/models/doubler/infer {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [x]}]}.
# 4xx: a request Triton can read but that does not fit the model (another datatype, input name or
# shape, a batch over 8): 400, before the model.  5xx: the function raising answers 500; but so does a
# body Triton cannot parse (not JSON, no "inputs", data not matching its shape): 500 "failed to parse
# the request JSON buffer", before the model too. Health: /v2/health/ready, /v2/models/doubler/ready.
# Metrics: on their own port (default 8002): nv_inference_request_success, _failure{reason}, durations
# (of the successful requests only), nv_cpu_*; what Triton refuses before scheduling is in none of them.
PYTRITON_SERVICE = '''\
import os
import pathlib
import shutil

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


@batch
def infer(x):
    if (x < 0).any():
        raise ValueError(f"negative input {x.tolist()}")
    return {"y": x * 2}


workspace = pathlib.Path(os.environ["PT_WORKSPACE"])
shutil.rmtree(workspace, ignore_errors=True)  # a stopped PyTriton leaves its own; it wants a new one
config = TritonConfig(
    http_address="127.0.0.1", http_port=int(os.environ["PT_HTTP_PORT"]),
    grpc_address="127.0.0.1", grpc_port=int(os.environ["PT_GRPC_PORT"]),
    metrics_address="127.0.0.1", metrics_port=int(os.environ["PT_METRICS_PORT"]),
    allow_gpu_metrics=False, allow_sagemaker=False, allow_vertex_ai=False)
with Triton(config=config, workspace=workspace) as triton:
    triton.bind(model_name="doubler", infer_func=infer,
                inputs=[Tensor(name="x", dtype=np.float64, shape=(1,))],
                outputs=[Tensor(name="y", dtype=np.float64, shape=(1,))],
                config=ModelConfig(max_batch_size=8))
    triton.serve()
'''


def _pytriton_env(app: Path, ports: Mapping[str, int]) -> dict[str, str]:
    libdir = Path(sys.base_prefix) / "lib"  # the venv's interpreter's own: libpython3.X.so
    return {"PT_HTTP_PORT": str(ports["http"]), "PT_GRPC_PORT": str(ports["grpc"]),
            "PT_METRICS_PORT": str(ports["metrics"]), "PT_WORKSPACE": str(app / "workspace"),
            "LD_LIBRARY_PATH": os.pathsep.join(filter(None, (str(libdir), os.environ.get("LD_LIBRARY_PATH"))))}


def _v2_fp64(x: float) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [x]}]}).encode()


PYTRITON = ServerSpec(
    name="pytriton",
    version="0.7.0",
    pins=("nvidia-pytriton==0.7.0", "numpy==1.26.4"),
    files={"service.py": PYTRITON_SERVICE},
    ports=("http", "grpc", "metrics"),
    command=lambda bin, app, ports: [str(bin / "python"), str(app / "service.py")],
    env=_pytriton_env,
    metrics_port="metrics",
    health_path="/v2/models/doubler/ready",
    predict_path="/v2/models/doubler/infer",
    good=_v2_fp64,
    answer=lambda body: float(json.loads(body)["outputs"][0]["data"][0]),
    # FP32 where the model takes FP64: 400 (not JSON would be a 500, see above)
    client_error=json.dumps({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}).encode(),
    server_error=_v2_fp64(-1.0),  # the function raises ValueError: 500
)

SPECS: dict[str, ServerSpec] = {spec.name: spec for spec in (BENTOML, MLSERVER, KSERVE, LITSERVE, RAY, TORCHSERVE,
                                                                   PYTRITON)}


# --- virtualenvs ---------------------------------------------------------------------------------

def venv_dir(spec: ServerSpec) -> Path:
    return VENVS / f"{spec.name}-{spec.version}"


def _marker_text(spec: ServerSpec) -> str:
    return "".join(f"{pin}\n" for pin in spec.pins)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def ensure_venv(spec: ServerSpec) -> Path:
    """The server's own virtualenv: made once (`python -m venv`, `pip install` of the pins) and reused
    while its marker file, written only after a successful install, names the same pins."""
    target = venv_dir(spec)
    marker = target / ".installed"
    VENVS.mkdir(parents=True, exist_ok=True)
    with open(VENVS / f".{target.name}.lock", "w") as lock:  # two processes never build one venv at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and marker.read_text() == _marker_text(spec):
            return target
        shutil.rmtree(target, ignore_errors=True)  # a half-made one from a failed or interrupted install
        log = VENVS / f"{target.name}.install.log"
        started = time.monotonic()
        steps = [[sys.executable, "-m", "venv", str(target)],
                 [str(target / "bin" / "python"), "-m", "pip", "install", "--no-input", "--progress-bar", "off",
                  "--disable-pip-version-check", *spec.pins]]
        with open(log, "w") as out:
            for step in steps:
                out.write(f"$ {' '.join(step)}\n")
                out.flush()
                try:
                    rc = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        timeout=INSTALL_TIMEOUT).returncode
                except subprocess.TimeoutExpired:
                    rc = f"timed out after {INSTALL_TIMEOUT:.0f}s"
                if rc != 0:
                    out.close()
                    raise RuntimeError(
                        f"could not install {spec.name} {spec.version} ({' '.join(spec.pins)}) into {target}: "
                        f"`{' '.join(step[:4])} ...` exited {rc}. Full log: {log}. Its tail:\n{_tail(log)}")
        seconds = time.monotonic() - started
        marker.write_text(_marker_text(spec))
        (target / ".install-seconds").write_text(f"{seconds:.1f}\n")
        return target


# --- running ---------------------------------------------------------------------------------------

def _child_env(spec: ServerSpec, venv: Path, app: Path, ports: Mapping[str, int]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PROMETHEUS_MULTIPROC_DIR")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env.update({"DO_NOT_TRACK": "true", "PYTHONUNBUFFERED": "1"})  # no usage telemetry; logs as they come
    env.update(spec.env(app, ports))
    return env


def _free_ports(names: tuple[str, ...]) -> dict[str, int]:
    ports: dict[str, int] = {}
    while len(ports) < len(names):
        port = free_port()
        if port not in ports.values():
            ports[names[len(ports)]] = port
    return ports


def session_members(sid: int) -> list[int]:
    """The live processes of session `sid` (a server is started in a session of its own, so this is the
    server and everything it started, whatever process groups they made)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        state, _ppid, _pgrp, session = stat[stat.rindex(")") + 2:].split()[:4]
        if int(session) == sid and state not in ("Z", "X"):
            members.append(int(entry))
    return members


def shared_memory_of(pids: list[int]) -> set[Path]:
    """The files under /dev/shm that these processes have mapped or open."""
    found: set[Path] = set()
    for pid in pids:
        try:
            for line in Path("/proc", str(pid), "maps").read_text().splitlines():
                name = line.split(maxsplit=5)[5:]
                if name and name[0].startswith("/dev/shm/") and not name[0].endswith(" (deleted)"):
                    found.add(Path(name[0]))
            for fd in Path("/proc", str(pid), "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("/dev/shm/") and not target.endswith(" (deleted)"):
                    found.add(Path(target))
        except OSError:
            continue  # gone meanwhile
    return found


class RunningServer:
    """A started server. `health_probes` counts, by status, the health requests it answered since its
    last (re)start: the readiness polls and `probe_health` calls (a server may count them: BentoML does)."""

    def __init__(self, spec: ServerSpec, workdir: Path, venv: Path):
        self.spec = spec
        self.workdir = workdir
        self.venv = venv
        self.app = workdir / "app"
        self.log_path = workdir / f"{spec.name}.log"
        self.ports = _free_ports(spec.ports)
        self.proc: subprocess.Popen | None = None
        self.health_probes: Counter[int] = Counter()
        self.ready_seconds: float | None = None
        self.session = requests.Session()

    @property
    def url(self) -> str:
        """The base URL predictions and health are served under."""
        return f"http://{LOOPBACK}:{self.ports['http']}"

    @property
    def predict_url(self) -> str:
        return self.url + self.spec.predict_path

    @property
    def health_path(self) -> str:
        return self.spec.health_path

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports[self.spec.metrics_port]}{self.spec.metrics_path}"

    def _launch(self) -> None:
        self.health_probes = Counter()
        log = open(self.log_path, "ab")
        log.write(f"\n=== {time.strftime('%H:%M:%S')} starting {self.spec.name} {self.spec.version} on {self.ports}\n".encode())
        log.flush()
        try:
            self.proc = subprocess.Popen(
                self.spec.command(self.venv / "bin", self.app, self.ports), cwd=self.app,
                env=_child_env(self.spec, self.venv, self.app, self.ports),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        started = time.monotonic()
        try:
            self._wait_ready(started + READY_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        self.ready_seconds = time.monotonic() - started

    def _failure(self, what: str) -> str:
        return (f"{self.spec.name} {self.spec.version} {what}; health probes answered: {dict(self.health_probes)}; "
                f"log {self.log_path}, its tail:\n{_tail(self.log_path)}")

    def _wait_ready(self, deadline: float) -> None:
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(self._failure(f"exited with {self.proc.returncode} before {self.health_path} answered 200"))
            try:
                # wait as long as the deadline allows: a probe given up on while it sat in the listening
                # socket's backlog would still be answered (and counted, by BentoML) once a worker is up
                reply = self._get_health(timeout=max(1.0, deadline - time.monotonic()))
                if reply.status_code == 200 and (self.spec.ready_body is None or self.spec.ready_body in reply.text):
                    return
            except requests.RequestException:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise TimeoutError(self._failure(f"did not answer 200 on {self.url}{self.health_path} within {READY_TIMEOUT:.0f}s"))
            time.sleep(0.25)  # poll interval

    def _get_health(self, timeout: float) -> requests.Response:
        reply = requests.get(self.url + self.health_path, timeout=timeout)
        self.health_probes[reply.status_code] += 1
        return reply

    def probe_health(self, timeout: float = 10) -> int:
        """One GET of the health route; its status (also counted in `health_probes`)."""
        return self._get_health(timeout).status_code

    def settled_metrics(self, sent: int, timeout: float = 60.0) -> str:
        """The page once it shows the `sent` predict requests (at once, but for a page that lags: Ray's)."""
        deadline = time.monotonic() + timeout
        while not self.spec.shows(page := self.metrics(), sent):
            if time.monotonic() > deadline:
                raise TimeoutError(self._failure(f"its page did not show the {sent} requests sent within {timeout:.0f}s"))
            time.sleep(0.5)  # poll interval
        return page

    def metrics(self) -> str:
        """The server's own metrics page, as text."""
        reply = requests.get(self.metrics_url, timeout=30)
        reply.raise_for_status()
        return reply.text

    def stop(self) -> None:
        """SIGTERM to the server's process group (its workers too), SIGKILL if still there after 30 s; then
        SIGKILL to whatever is left of the session it was started in (workers that made process groups
        of their own: Ray's), waiting until they are gone; then its scratch paths go, and the files in
        /dev/shm its processes had open or mapped (PyTriton's and Triton's, left behind when killed)."""
        self.session.close()
        proc, self.proc = self.proc, None
        if proc is None:
            return
        shared = shared_memory_of(session_members(proc.pid))  # what a killed server cannot unlink itself
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        try:  # whatever of its group is left (a worker that outlived its parent)
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait(timeout=STOP_TIMEOUT)
        deadline = time.monotonic() + STOP_TIMEOUT
        while left := session_members(proc.pid):
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(self._failure(f"left processes {left} running after it stopped"))
            time.sleep(0.1)  # poll interval: SIGKILL takes effect at once, the exit a moment later
        for path in (*self.spec.scratch(self.ports), *shared):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def restart(self) -> RunningServer:
        """Stop, then start again on the same ports (its counters start again from nothing)."""
        self.stop()
        self.session = requests.Session()
        self._launch()
        return self

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start(spec: ServerSpec, workdir: Path, venv: Path | None = None) -> RunningServer:
    """Write the spec's model into `workdir/app`, start the server on free loopback ports, and wait until its
    health route answers 200 (120 s at most). stdout and stderr go to `workdir/<name>.log`."""
    venv = venv or ensure_venv(spec)
    workdir = Path(workdir)
    server = RunningServer(spec, workdir, venv)
    for rel, text in spec.files.items():
        path = server.app / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    server._launch()
    return server


# --- traffic ---------------------------------------------------------------------------------------

KINDS = ("good", "client_error", "server_error")


@dataclass
class Truth:
    """What `drive` sent, and the statuses that came back, by kind of request."""

    server: str
    version: str
    predict_path: str
    good: int
    client_errors: int
    server_errors: int
    statuses: dict[str, Counter[int]] = field(default_factory=dict)  # kind -> status -> count
    health_path: str = ""
    health_probes: Counter[int] = field(default_factory=Counter)  # answered since the last start, by status

    @property
    def total(self) -> int:
        return self.good + self.client_errors + self.server_errors

    def by_status(self) -> Counter[int]:
        """Every predict request sent, by the status it got."""
        out: Counter[int] = Counter()
        for counts in self.statuses.values():
            out.update(counts)
        return out

    def describe(self) -> str:
        def codes(kind: str) -> str:
            return ", ".join(f"{n}x{code}" for code, n in sorted(self.statuses.get(kind, {}).items()))

        return (f"{self.good} good POST {self.predict_path} ({codes('good')}), {self.client_errors} malformed "
                f"({codes('client_error')}), {self.server_errors} that make the model raise ({codes('server_error')}); "
                f"health probes GET {self.health_path} answered since the start: "
                f"{', '.join(f'{n}x{code}' for code, n in sorted(self.health_probes.items())) or 'none'}")


def drive(server: RunningServer, good: int = 100, client_errors: int = 5, server_errors: int = 5) -> Truth:
    """Send exactly `good` requests the model answers (inputs 1..good, each reply checked to be doubled),
    `client_errors` malformed ones and `server_errors` whose input makes the model raise, interleaved,
    one at a time. Asserts every good one got a 2xx, every malformed one a 4xx, every raising one a 5xx."""
    spec = server.spec
    goods = [("good", spec.good(float(i + 1)), 2.0 * (i + 1)) for i in range(good)]
    errors = [item for k in range(max(client_errors, server_errors))
              for item, wanted in ((("client_error", spec.client_error, None), client_errors),
                                   (("server_error", spec.server_error, None), server_errors)) if k < wanted]
    # the errors spread evenly through the good requests, the same order every run
    placed = [(i / max(1, good), item) for i, item in enumerate(goods)]
    placed += [((j + 0.5) / max(1, len(errors)), item) for j, item in enumerate(errors)]
    plan = [item for _, item in sorted(placed, key=lambda p: p[0])]
    statuses: dict[str, Counter[int]] = {kind: Counter() for kind in KINDS}
    wrong: list[str] = []
    headers = {"Content-Type": spec.content_type, **({} if spec.keep_alive else {"Connection": "close"})}
    for kind, body, expected in plan:
        reply = server.session.post(server.predict_url, data=body, headers=headers, timeout=60)
        statuses[kind][reply.status_code] += 1
        family = reply.status_code // 100
        if kind == "good":
            if family != 2:
                wrong.append(f"good {body!r} -> {reply.status_code} {reply.text[:200]!r}")
            elif spec.answer(reply.content) != expected:
                wrong.append(f"good {body!r} -> {reply.text[:200]!r}, expected {expected}")
        elif family != {"client_error": 4, "server_error": 5}[kind]:
            wrong.append(f"{kind} {body!r} -> {reply.status_code} {reply.text[:200]!r}")
    truth = Truth(spec.name, spec.version, spec.predict_path, good, client_errors, server_errors, statuses,
                  spec.health_path, Counter(server.health_probes))
    assert not wrong, f"{spec.name}: {len(wrong)} replies not as expected:\n" + "\n".join(wrong[:10])
    return truth
