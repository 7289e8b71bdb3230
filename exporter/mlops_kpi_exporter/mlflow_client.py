"""The one place the MLflow client is set up, for every command and every MLflow-backed source.

MLflow's client takes its credentials, TLS trust, timeout and retries from environment variables,
read at each request. So they are set here, all of them at once, from a fully validated config, and
only when the caller commits to that config (`MlflowConnection.apply`): a refused reload never gets
that far and changes nothing, and a reload that drops `mlflow.auth` drops the credentials too.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlops_kpi_exporter import extras
from mlops_kpi_exporter.config import Config, ConfigError, redact_uri
from mlops_kpi_exporter.config.secrets import Credentials, resolve_credentials, take_over

# The variables this module owns. Whatever the process inherited in them is replaced at apply():
# credentials come from mlflow.auth only (which may name one of these variables).
TOKEN, USERNAME, PASSWORD = "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
CERT_PATH, INSECURE_TLS = "MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_INSECURE_TLS"
TIMEOUT, MAX_RETRIES = "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
WORKSPACE = "MLFLOW_WORKSPACE"  # never set: each request names its workspace (mlflow_workspaces.py)
# The process's tracking URI too: some plugins read it rather than their store's (SageMaker's SigV4
# signer and routing header take the ARN from it)
TRACKING_URI = "MLFLOW_TRACKING_URI"
OWNED_VARIABLES = (TOKEN, USERNAME, PASSWORD, CERT_PATH, INSECURE_TLS, TIMEOUT, MAX_RETRIES, WORKSPACE, TRACKING_URI)

MAX_MLFLOW_REPLY_BYTES = 256 << 20  # a page of 50,000 runs with tags and params stays well under this


class SourceError(Exception):
    """A source could not be read; the message is safe to log and show."""


def import_mlflow() -> None:
    """Import MLflow's client, in the calling thread. Done when a connection is made (in the main thread,
    before any source polls): mlflow's first import is not thread-safe, and two sources polling in
    parallel threads would otherwise race into a circular-import error. Not at this module's import,
    so that `--help`, `estimate`, `demo --print-config` and a refused config never load MLflow."""
    import mlflow.exceptions  # noqa: F401
    import mlflow.tracking  # noqa: F401


def _mlflow_exception() -> type[Exception]:
    from mlflow.exceptions import MlflowException

    return MlflowException


def _refuse_huge_replies(response: Any, *args: Any, **kwargs: Any) -> None:
    """A requests response hook: a reply whose declared size is past the limit is not read."""
    length = response.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > MAX_MLFLOW_REPLY_BYTES:
        response.close()
        raise SourceError(f"MLflow replied with {int(length):,} bytes, more than the {MAX_MLFLOW_REPLY_BYTES:,} allowed")


def _guard_mlflow_sessions() -> None:
    """Give MLflow's HTTP sessions the size hook. MLflow offers no setting for it, so its session
    factory is wrapped; should a future MLflow move that factory, the guard is skipped with a warning."""
    import logging

    from mlflow.utils import request_utils

    factory = getattr(request_utils, "_get_request_session", None)
    if factory is None or getattr(factory, "_mlops_guarded", False):
        if factory is None:
            logging.getLogger(__name__).warning("cannot limit the size of MLflow replies with this MLflow version")
        return

    def guarded(*args: Any, **kwargs: Any) -> Any:
        session = factory(*args, **kwargs)
        if _refuse_huge_replies not in session.hooks["response"]:
            session.hooks["response"].append(_refuse_huge_replies)
        return session

    guarded._mlops_guarded = True  # type: ignore[attr-defined]
    request_utils._get_request_session = guarded


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :].split("?", 1)[0])


def is_not_found(exc: BaseException) -> bool:
    """MLflow's way of saying a run, model, version or alias does not exist."""
    return getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or (
        getattr(exc, "error_code", "") == "INVALID_PARAMETER_VALUE" and "not found" in str(exc).lower()
    )


def is_data_error(exc: BaseException) -> bool:
    """An error in what MLflow holds (one odd item: skip it), not in reaching MLflow (fail the poll)."""
    return not isinstance(exc, (_mlflow_exception(), OSError, SourceError, ConfigError))


def dropped_connection(exc: BaseException) -> bool:
    """Whether an MLflow error was a connection that broke before any reply (requests' ConnectionError,
    which MLflow's client wraps without `from`, so it is found as the error's context)."""
    import requests

    seen = exc
    while seen is not None:
        if isinstance(seen, requests.exceptions.ConnectionError) and not isinstance(seen, requests.exceptions.Timeout):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def reads_mlflow_rest(client: Any, store: Any) -> bool:
    """Whether a source may send requests of its own beside the client (a route MLflow's client does not
    call, or a reply read without its protobuf parse): only to a plain http(s) server whose store is
    MLflow's own RestStore. A plugin's store (SageMaker's, Azure ML's, Databricks', a subclass) may sign,
    route or authenticate its requests in ways a request made beside it would miss: through a plugin,
    every read is the store's own."""
    from mlflow.store.tracking.rest_store import RestStore

    return type(store) is RestStore and extras.is_tracking_server(str(client.tracking_uri))


def pages(fetch: Callable[..., Any], **kwargs: Any) -> Iterator[Any]:
    """The pages of an MLflow search, one after another (every MLflow `search_*` call pages alike).

    A page whose request broke on its connection is asked once more at once: servers close idle
    keep-alive connections (uvicorn after 5 s), and a request sent on one as it closes fails without
    reaching MLflow. MLflow's own retries are off (see MlflowConnection.environment), so this is the
    only retry; a server that is down fails the second request as fast as the first."""
    token = None
    while True:
        try:
            page = fetch(page_token=token, **kwargs)
        except Exception as exc:
            if not dropped_connection(exc):
                raise
            page = fetch(page_token=token, **kwargs)
        yield page
        token = page.token
        if not token:
            return


def paged(fetch: Callable[..., Any], **kwargs: Any) -> Iterator[Any]:
    """Every item of an MLflow search, page after page."""
    for page in pages(fetch, **kwargs):
        yield from page


_DONE = object()


def pages_in_parallel(streams: list[Callable[[], Iterator[Any]]], workers: int) -> Iterator[tuple[int, Any]]:
    """(stream index, page) of several paged searches, read by up to `workers` threads while the caller
    works on the pages that came before: MLflow prepares the next page while this process turns the
    last one into facts, and a server with several workers answers several searches at once.

    One page waits while the caller works on another and each worker reads the next, so memory
    stays a few pages whatever the history. The first
    error of any stream is raised here; the other threads stop at their next page. workers <= 0 reads
    in the calling thread (a local store: its queries run in this process anyway)."""
    if workers <= 0 or not streams:
        for index, stream in enumerate(streams):
            for page in stream():
                yield index, page
        return
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for item in enumerate(streams):
        todo.put(item)
    ready: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def hand_over(item: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.2)  # wakes to notice `stop` when the caller left early
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            while not stop.is_set():
                try:
                    index, stream = todo.get_nowait()
                except queue.Empty:
                    return
                for page in stream():
                    if not hand_over((index, page)):
                        return
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, raised there
            hand_over(exc)
        finally:
            hand_over(_DONE)

    threads = [threading.Thread(target=work, name=f"mlflow-pages-{i}", daemon=True)
               for i in range(min(workers, len(streams)))]
    for thread in threads:
        thread.start()
    running = len(threads)
    try:
        while running:
            item = ready.get()
            if item is _DONE:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        stop.set()
        for thread in threads:
            thread.join()


@dataclass(frozen=True)
class MlflowConnection:
    """Where MLflow is and how to reach it: built from a validated config, with its secrets read."""

    tracking_uri: str
    timeout: float
    credentials: Credentials
    ca_bundle: Path | None = None

    @classmethod
    def from_config(cls, config: Config) -> MlflowConnection:
        """No side effect: raises ConfigError (a missing secret, a local store without the `local` extra,
        a managed MLflow without its plugin) and changes nothing."""
        cfg = config.mlflow
        try:
            if extras.is_database_uri(cfg.tracking_uri):
                extras.require("local", f"reading the local MLflow store {redact_uri(cfg.tracking_uri)}",
                               extras.SQL_STORE)
            else:
                extras.require_store(cfg.tracking_uri, redact_uri(cfg.tracking_uri))
        except (extras.MissingExtra, extras.NoStorePlugin) as exc:
            raise ConfigError(f"mlflow.tracking_uri: {exc}") from None
        connection = cls(cfg.tracking_uri, cfg.timeout, resolve_credentials(cfg.auth), cfg.ca_bundle)
        import_mlflow()
        return connection

    @property
    def uri_for_humans(self) -> str:
        return redact_uri(self.tracking_uri)

    def environment(self) -> dict[str, str | None]:
        """Every owned variable: its value, or None for unset. Retries are off: the scheduler retries a
        failed poll with backoff, and a poll must fail within `timeout`, not block in MLflow's retries."""
        creds = self.credentials
        return {
            TOKEN: creds.token.get_secret_value() if creds.token else None,
            USERNAME: creds.username,
            PASSWORD: creds.password.get_secret_value() if creds.password else None,
            CERT_PATH: str(self.ca_bundle) if self.ca_bundle else None,
            INSECURE_TLS: "false",  # certificates are always verified
            TIMEOUT: str(max(1, math.ceil(self.timeout))),
            MAX_RETRIES: "0",
            WORKSPACE: None,
            TRACKING_URI: self.tracking_uri,
        }

    def apply(self) -> None:
        """Make this the process's MLflow set-up: call it once the config is accepted, before a poll."""
        take_over(OWNED_VARIABLES)
        for name, value in self.environment().items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _guard_mlflow_sessions()

    def open(self) -> Any:
        """A new MlflowClient for a server or a local store."""
        path = sqlite_path(self.tracking_uri)
        if path is not None and not path.is_file():
            # MLflow would silently create an empty store there; a typo must not look like no runs.
            raise SourceError(f"no MLflow database at {path} (from mlflow.tracking_uri)")
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)


class MlflowReader:
    """What every MLflow-backed source shares: the schedule and a lazily opened client."""

    def __init__(self, config: Config, mlflow: MlflowConnection):
        self.mlflow = mlflow
        self.interval = config.mlflow.poll_interval
        self.retry_backoff = config.mlflow.retry_backoff
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self.mlflow.open()
        return self._client
