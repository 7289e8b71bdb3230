"""Managed MLflow, as the tests have it: the test tracking plugin (tests/plugins/signed_mlflow_store.py)
made findable, and a loopback proxy in front of a real `mlflow server` that refuses every request the
plugin did not sign.

The plugin is not pip-installed: `install_plugin` writes a dist-info that declares its entry points
into a folder of the test's own and puts that folder and tests/plugins on sys.path, where
importlib.metadata finds them as it finds any installed package's; `pythonpath()` is the same for a
child process's PYTHONPATH. Nothing is written into the virtualenv, so a fresh clone needs no step
of its own, and tests that do not ask for the plugin never see it.
"""

from __future__ import annotations

import hmac
import http.client
import importlib
import json
import os
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

PLUGIN_DIR = Path(__file__).parent / "plugins"
DIST_INFO = "signed_mlflow_store-0.0.0.dist-info"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "proxy-connection", "te",
              "trailer", "upgrade"}


def install_plugin(site: Path) -> list[str]:
    """Make the plugin an installed one for this process (and, with pythonpath(), for its children);
    returns the folders to put on sys.path."""
    if str(PLUGIN_DIR) not in sys.path:
        sys.path.insert(0, str(PLUGIN_DIR))
    import signed_mlflow_store as plugin

    dist = site / DIST_INFO
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: signed-mlflow-store\nVersion: 0.0.0\n")
    (dist / "entry_points.txt").write_text(plugin.ENTRY_POINTS)
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    _register_with_mlflow(plugin.AUTH_NAME)
    return [str(site), str(PLUGIN_DIR)]


def _register_with_mlflow(auth_name: str) -> None:
    """MLflow reads its plugins' entry points when it first builds each registry; in this process it may
    have built them before the plugin was on sys.path, so they read them again (a child process reads
    them at its start, as with any installed plugin)."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry
    from mlflow.tracking.request_auth.registry import _request_auth_provider_registry

    _tracking_store_registry.register_entrypoints()
    registry_utils._get_store_registry().register_entrypoints()
    if not any(provider.get_name() == auth_name for provider in _request_auth_provider_registry):
        _request_auth_provider_registry.register_entrypoints()


def pythonpath(paths: list[str]) -> str:
    return os.pathsep.join([*paths, *filter(None, [os.environ.get("PYTHONPATH")])])


class SigningProxy:
    """A reverse proxy on 127.0.0.1 in front of an MLflow server: a request whose X-Test-Signature is the
    plugin's signature of its method and target is forwarded; any other gets 401. Both are counted."""

    def __init__(self, upstream: str):
        from signed_mlflow_store import HEADER, signature

        self.upstream = urlsplit(upstream)
        self.signed: Counter[str] = Counter()  # "METHOD /path" -> requests forwarded
        self.refused: Counter[str] = Counter()
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as MLflow's client uses it

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                what = f"{self.command} {self.path.split('?', 1)[0]}"
                valid = hmac.compare_digest(self.headers.get(HEADER, ""), signature(self.command, self.path))
                with lock:
                    (proxy.signed if valid else proxy.refused)[what] += 1
                if not valid:
                    self._reply(401, {"Content-Type": "application/json"}, json.dumps(
                        {"error_code": "UNAUTHENTICATED", "message": "no valid request signature"}).encode())
                    return
                status, headers, data = proxy.forward(self.command, self.path, self.headers, body)
                self._reply(status, headers, data)

            def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                for name, val in headers.items():
                    self.send_header(name, val)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

            def log_message(self, *args) -> None:  # quiet: the counters say what came
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="signing-proxy", daemon=True)

    def forward(self, method: str, target: str, headers, body: bytes) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            connection.request(method, target, body or None,
                               {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP})
            reply = connection.getresponse()
            data = reply.read()
            return reply.status, {k: v for k, v in reply.getheaders() if k.lower() not in HOP_BY_HOP}, data
        finally:
            connection.close()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        """The proxy as a plain tracking server: nothing MLflow's own client sends is signed."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def plugin_uri(self) -> str:
        return f"signed+http://127.0.0.1:{self.port}"

    def start(self) -> SigningProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=30)
