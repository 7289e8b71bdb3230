"""The HTTP side: `/metrics`, `/healthz`, `/readyz`, `/runbooks` and a landing page, and nothing else.

`/metrics` renders the snapshot store only. A rendered page is kept until the store changes, so
scrapes between two polls cost a dictionary look-up, however many Prometheus servers scrape.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import html
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client.exposition import ThreadingWSGIServer, choose_encoder
from prometheus_client.registry import CollectorRegistry

from mlops_kpi_exporter import runbooks
from mlops_kpi_exporter.config import TlsServerConfig
from mlops_kpi_exporter.snapshot import SnapshotStore

log = logging.getLogger(__name__)

StartResponse = Callable[..., object]
OPEN_PATHS = ("/healthz", "/readyz", "/runbooks")  # served without basic auth (see ExporterApp.__call__)


class BasicAuth:
    """Basic auth against bcrypt hashes (exporter-toolkit `basic_auth_users`).

    An unknown user costs a bcrypt check too, so timing does not tell which users exist; a correct
    header is remembered (as a hash) so that scrapes do not pay bcrypt every time.
    """

    def __init__(self, users: dict[str, str]):
        import bcrypt

        self._bcrypt = bcrypt
        self.users = {user: hashed.encode() for user, hashed in users.items()}
        self._decoy = bcrypt.hashpw(b"decoy", bcrypt.gensalt(10))
        self._accepted: set[bytes] = set()
        self._lock = threading.Lock()

    def allows(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        key = hashlib.sha256(header.encode()).digest()
        with self._lock:
            if key in self._accepted:
                return True
        try:
            user, sep, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        ok = self._bcrypt.checkpw(password.encode(), hashed or self._decoy) and hashed is not None and bool(sep)
        if ok:
            with self._lock:
                if len(self._accepted) > 256:
                    self._accepted.clear()
                self._accepted.add(key)
        return ok


class ExporterApp:
    def __init__(self, registry: CollectorRegistry, store: SnapshotStore, title: str, links: dict[str, str],
                 auth: BasicAuth | None = None):
        self.auth = auth  # None: no authentication (the default, as for every exporter)
        self.registry = registry
        self.store = store
        self.title = title
        self.links = links  # extra lines for the landing page, e.g. {"MLflow": "http://..."} (no secrets)
        self._cache: dict[tuple[str, bool], tuple[int, bytes]] = {}
        self._cache_lock = threading.Lock()

    def swap(self, registry: CollectorRegistry, store: SnapshotStore, links: dict[str, str]) -> None:
        """After a config reload: serve the new sources' snapshots, never a page cached from the old."""
        with self._cache_lock:
            self.registry, self.store, self.links = registry, store, links
            self._cache.clear()

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/")
        if method not in ("GET", "HEAD"):
            return self._reply(start_response, "405 Method Not Allowed", b"only GET and HEAD\n", extra=[("Allow", "GET, HEAD")])
        # /healthz and /readyz stay open: container probes carry no credentials, and they say only
        # "ok" or how many sources are still waiting.
        # /runbooks too: it holds no secrets, and whoever follows an alert's link has no scrape credentials.
        if self.auth is not None and path not in OPEN_PATHS and not self.auth.allows(environ.get("HTTP_AUTHORIZATION")):
            return self._reply(start_response, "401 Unauthorized", b"unauthorized\n",
                               extra=[("WWW-Authenticate", 'Basic realm="mlops-kpi-exporter", charset="UTF-8"')])
        head = method == "HEAD"
        if path == "/metrics":
            return self._metrics(environ, start_response, head=head)
        if path == "/healthz":
            return self._reply(start_response, "200 OK", b"ok\n", head=head)
        if path == "/readyz":
            waiting = self.waiting()
            if waiting:
                return self._reply(start_response, "503 Service Unavailable",
                                   f"not ready: {waiting} source(s) not polled yet\n".encode(), head=head)
            return self._reply(start_response, "200 OK", b"ready\n", head=head)
        if path == "/runbooks":
            return self._reply(start_response, "200 OK", runbooks.page(), "text/html; charset=utf-8", head=head)
        if path == "/":
            return self._reply(start_response, "200 OK", self._landing().encode(), "text/html; charset=utf-8", head=head)
        return self._reply(start_response, "404 Not Found", b"not found; see / for the paths served\n", head=head)

    @staticmethod
    def _reply(start_response: StartResponse, status: str, body: bytes, ctype: str = "text/plain; charset=utf-8", extra=(),
               head: bool = False):
        start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body))), *extra])
        return [] if head else [body]

    def render(self, accept: str = "", gzip_ok: bool = False) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        key = (content_type, gzip_ok)
        version, _ = self.store.states()
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached and cached[0] == version:
                return cached[1], content_type
        body = encoder(self.registry)
        if gzip_ok:
            body = gzip.compress(body, compresslevel=6)
        with self._cache_lock:
            self._cache[key] = (version, body)
        return body, content_type

    def _metrics(self, environ: dict, start_response: StartResponse, head: bool) -> Iterable[bytes]:
        gzip_ok = "gzip" in environ.get("HTTP_ACCEPT_ENCODING", "")
        body, content_type = self.render(environ.get("HTTP_ACCEPT", ""), gzip_ok)
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        if gzip_ok:
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [] if head else [body]

    def waiting(self) -> int:
        """Sources not yet polled once, successfully or not: /readyz turns 200 at 0, after the first
        complete round, so that /metrics then shows every source's figures or its failure (a source
        that cannot be read is not a reason to restart or unlist the exporter). A config reload
        starts a new round. Counts only: the names stay behind auth, on the landing page."""
        _, states = self.store.states()
        return sum(1 for s in states if s.polls_total == 0)

    def _landing(self) -> str:
        snap = self.store.snapshot()
        states = snap.states
        waiting = sorted({(s.labels["figure"], s.labels["source"]) for f in snap.derived.pending for s in f.samples
                          if s.value == 1})
        pending = "".join(f"<li>{html.escape(figure)} figures: waiting for the first good poll of "
                          f"{html.escape(source)}</li>" for figure, source in waiting)
        rows = []
        for s in states:
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(s.last_success)) if s.last_success else "never"
            status = "up" if s.up else ("waiting for first poll" if s.polls_total == 0 else "DOWN")
            note = s.detail if s.up else (s.last_error or "")
            rows.append(
                f"<tr><td>{html.escape(s.name)}</td><td>{status}</td><td>{when}</td>"
                f"<td>{s.errors_total}</td><td>{html.escape(note)}</td></tr>"
            )
        links = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in self.links.items())
        serving = _serving_rows(states)
        return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em .8em;text-align:left}}</style></head>
<body><h1>{html.escape(self.title)}</h1>
<p><a href="/metrics">/metrics</a> &middot; <a href="/healthz">/healthz</a> &middot; <a href="/readyz">/readyz</a>
&middot; <a href="/runbooks">/runbooks</a></p>
<ul>{links}</ul>
{f"<p>Not shown yet (absent until every input is in, never partial):</p><ul>{pending}</ul>" if pending else ""}
<table><tr><th>source</th><th>status</th><th>last success</th><th>errors</th><th>detail</th></tr>
{''.join(rows)}</table>
{f"<h2>Serving</h2><p>As the model servers report it (<code>mlops_endpoint_*</code> on /metrics; rates in "
 f"Grafana's Model serving dashboard):</p><table><tr><th>endpoint</th><th>probe</th><th>predictions</th>"
 f"<th>server errors (5xx)</th><th>client errors (4xx)</th><th>mean latency</th><th>cost per hour</th></tr>"
 f"{serving}</table>" if serving else ""}
</body></html>
"""


def _serving_rows(states) -> str:
    """A row per endpoint of its serving figures so far, from its source's last families."""
    rows = []
    for state in states:
        if not state.name.startswith("endpoint:"):
            continue
        got = {sample.name: sample.value for fam in state.families for sample in fam.samples
               if not sample.labels.get("le") and "outcome" not in sample.labels}

        def shown(name: str, fmt: str = "{:,.0f}") -> str:
            return fmt.format(got[name]) if name in got else "-"

        count = got.get("mlops_endpoint_request_duration_seconds_count")
        mean = (f"{got['mlops_endpoint_request_duration_seconds_sum'] / count * 1000:,.1f} ms" if count else "-")
        probe = {1.0: "up", 0.0: "DOWN"}.get(got.get("mlops_endpoint_up", -1), "-")
        rows.append(f"<tr><td>{html.escape(state.name.removeprefix('endpoint:'))}</td><td>{probe}</td>"
                    f"<td>{shown('mlops_endpoint_requests_total')}</td><td>{shown('mlops_endpoint_errors_total')}</td>"
                    f"<td>{shown('mlops_endpoint_client_errors_total')}</td><td>{mean}</td>"
                    f"<td>{shown('mlops_endpoint_hourly_cost', '{:,.3f}')}</td></tr>")
    return "".join(rows)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        log.debug("http %s", format % args)


class _Server(ThreadingWSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def tls_context(tls: TlsServerConfig) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "TLS13" else ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return context


def start_http_server(app: ExporterApp, host: str, port: int,
                      tls: TlsServerConfig | None = None) -> tuple[_Server, threading.Thread]:
    """Bind and serve in a daemon thread. Raises OSError (or ssl.SSLError) when it cannot."""
    server_class = _Server6 if ":" in host else _Server
    server = make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
    if tls is not None:
        # The handshake happens in each connection's own thread, on its first read: a slow client
        # never holds up accept().
        server.socket = tls_context(tls).wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    return server, thread
