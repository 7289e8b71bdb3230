"""Shared fixtures: a real `mlflow server` on SQLite on a free loopback port, and small helpers."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, settings
from prometheus_client.parser import text_string_to_metric_families

# Property tests: `make test` runs a fixed, bounded set of examples (derandomized: the same examples
# every run, no example database), so CI is never red at random; `make fuzz` explores at random.
settings.register_profile("ci", derandomize=True, database=None, max_examples=150, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("explore", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Tests send traffic to loopback only: MLflow's usage telemetry off, and no download of its LLM price
# catalog, in this process and (child_env) in every process it starts.
for _key, _value in {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "MLFLOW_MODEL_CATALOG_URI": ""}.items():
    os.environ.setdefault(_key, _value)

BIN = Path(sys.executable).parent
EXPORTER = str(BIN / "mlops-kpi-exporter")
HOUR_MS = 3_600_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def connected(config):
    """(config, its MLflow connection, applied): what the CLI hands a source, for in-process tests."""
    from mlops_kpi_exporter.mlflow_client import MlflowConnection

    mlflow = MlflowConnection.from_config(config)
    mlflow.apply()
    return config, mlflow


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job-consumer processes: starts in seconds
    # nothing leaves 127.0.0.1: no usage telemetry, no download of MLflow's LLM price catalog
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "MLFLOW_MODEL_CATALOG_URI": ""})
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


class MlflowServer:
    """`mlflow server` on a SQLite file; can be killed and started again on the same port and data."""

    def __init__(self, workdir: Path, port: int | None = None, env: dict[str, str] | None = None):
        self.workdir = workdir
        self.port = port or free_port()
        self.db = workdir / "mlflow.db"
        self.env = env or {}  # the server's own settings, e.g. for its AI Gateway
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MlflowServer:
        log = open(self.workdir / "mlflow-server.log", "ab")
        self.proc = subprocess.Popen(
            [
                str(BIN / "mlflow"), "server",
                "--backend-store-uri", f"sqlite:///{self.db}",
                "--default-artifact-root", str(self.workdir / "artifacts"),
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            ],
            stdout=log, stderr=subprocess.STDOUT, env=child_env() | self.env, start_new_session=True,
        )
        wait_http(f"{self.url}/health", timeout=90, proc=self.proc)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.url)


@pytest.fixture(autouse=True)
def own_state_dir(tmp_path_factory, monkeypatch):
    """Each test its own default state directory (config `state_dir`), never the user's: what one
    test's Cost Explorer calls or bill files leave there must not reach another's."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-shared")).start()
    yield server
    server.kill()


@pytest.fixture
def own_mlflow_server(tmp_path):
    """A server of the test's own, for tests that kill it."""
    server = MlflowServer(tmp_path).start()
    yield server
    server.kill()


@pytest.fixture
def prefix() -> str:
    """A unique experiment-name prefix, so tests sharing one server never see each other's runs."""
    return f"t{uuid.uuid4().hex[:8]}"


def add_run(client, exp_id: str, start_ms: int, end_ms: int | None, status: str = "FINISHED",
            tags: dict | None = None, params: dict | None = None, name: str | None = None) -> str:
    """A run with exactly the given times (end_ms None leaves it RUNNING)."""
    from mlflow.entities import Param

    run = client.create_run(exp_id, start_time=start_ms, tags=tags or {}, run_name=name)
    if params:
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    if end_ms is not None:
        client.set_terminated(run.info.run_id, status, end_time=end_ms)
    return run.info.run_id


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Exposition text -> {(sample name, sorted labels): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(parsed: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    if key not in parsed:
        raise KeyError(f"no sample {name}{labels}")
    return parsed[key]


def render(families) -> str:
    """Families of one poll -> exposition text, as /metrics would serve them."""
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import Collector, CollectorRegistry

    class _Fixed(Collector):
        def collect(self):
            return iter(families)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed())
    return generate_latest(registry).decode()


class InProcess:
    """The exporter's own store, poller and registry over these sources, the derived stage included:
    `poll()` polls them (each once, in order) and returns what /metrics shows then."""

    def __init__(self, config, sources):
        from mlops_kpi_exporter.cli import build_registry, build_store
        from mlops_kpi_exporter.poller import Poller

        self.config, self.sources = config, list(sources)
        self.store = build_store(config, self.sources)
        self.poller = Poller(self.sources, self.store)
        self.registry = build_registry(self.store, config)

    def poll(self, *sources) -> dict:
        for source in sources or self.sources:
            assert self.poller.poll_once(source), source.name
        return self.samples()

    def samples(self) -> dict:
        from prometheus_client.exposition import generate_latest

        return samples(generate_latest(self.registry).decode())


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed (Debian package 'prometheus'; .ci/run installs it)")
    return path


@pytest.fixture
def processes():
    """Background processes a test starts; terminated (then killed) when it ends."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        proc.terminate()
    for proc in started:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def moto_server(monkeypatch):
    """A moto server on a free loopback port: the stand-in for AWS (S3, Cost Explorer), which cannot run
    here. Fake credentials in the environment, as the usual AWS chain reads them; yields its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    requests.post(f"http://{host}:{port}/moto-api/reset", timeout=10)  # moto's state is per process, not per server
    for key, val in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "moto-secret-key-do-not-log",
                     "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, val)
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


# The real model servers' venvs (tests/real_servers.py) take 15 to 60 s each from cold (TorchServe's with
# torch, PyTriton's with Triton, Ray's): once the session knows which servers its tests use, they are
# built one after another in the background while the tests before them run. A test that needs one
# waits for it (ensure_venv's lock) and, if the background build failed, builds it itself and says why.
_building: dict = {}


def _servers_used(item, specs) -> list[str]:
    return [name for name in specs if f"{name}_server" in getattr(item, "fixturenames", ()) or f"[{name}" in item.nodeid]


def pytest_collection_modifyitems(items):
    """The real servers' tests last (in their own order), so their venvs are built behind the rest."""
    from real_servers import SPECS

    items.sort(key=lambda item: bool(_servers_used(item, SPECS)))  # stable: every other order kept


def pytest_collection_finish(session):
    import threading

    from real_servers import SPECS, ensure_venv

    used = {name for item in session.items for name in _servers_used(item, SPECS)}
    wanted = [spec for name, spec in SPECS.items() if name in used]
    if not wanted:
        return

    def build():
        for spec in wanted:
            if _building.get("stop"):
                return
            try:
                ensure_venv(spec)
            except Exception:  # noqa: BLE001 - the test that needs it builds it again and reports the error
                pass

    _building["thread"] = threading.Thread(target=build, name="server-venvs", daemon=True)
    _building["thread"].start()


def pytest_sessionfinish(session):
    _building["stop"] = True  # no new build after the last test (one under way finishes or dies with us)


# What a test's own `mlflow server` and client need to stay offline: no model catalog fetched, no
# telemetry, traces written at once (not from a background queue).
OFFLINE = {"MLFLOW_MODEL_CATALOG_URI": "", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
           "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING": "false"}


@contextlib.contextmanager
def offline():
    """OFFLINE set in this process's environment for the block (for module-scoped fixtures), then restored."""
    import pytest

    with pytest.MonkeyPatch.context() as patched:
        for key, value in OFFLINE.items():
            patched.setenv(key, value)
        yield
