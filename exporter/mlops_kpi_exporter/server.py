"""The HTTP side: `/metrics`, `/healthz` and a landing page, and nothing else.

`/metrics` renders the snapshot store only. A rendered page is kept until the store changes, so
scrapes between two polls cost a dictionary look-up, however many Prometheus servers scrape.
"""

from __future__ import annotations

import gzip
import html
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client.exposition import ThreadingWSGIServer, choose_encoder
from prometheus_client.registry import CollectorRegistry

from mlops_kpi_exporter.snapshot import SnapshotStore

log = logging.getLogger(__name__)

StartResponse = Callable[..., object]


class ExporterApp:
    def __init__(self, registry: CollectorRegistry, store: SnapshotStore, title: str, links: dict[str, str]):
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
        if path == "/metrics":
            return self._metrics(environ, start_response, head=method == "HEAD")
        if path == "/healthz":
            return self._reply(start_response, "200 OK", b"ok\n")
        if path == "/":
            return self._reply(start_response, "200 OK", self._landing().encode(), "text/html; charset=utf-8")
        return self._reply(start_response, "404 Not Found", b"not found; see / for the paths served\n")

    @staticmethod
    def _reply(start_response: StartResponse, status: str, body: bytes, ctype: str = "text/plain; charset=utf-8", extra=()):
        start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body))), *extra])
        return [body]

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

    def _landing(self) -> str:
        _, states = self.store.states()
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
        return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em .8em;text-align:left}}</style></head>
<body><h1>{html.escape(self.title)}</h1>
<p><a href="/metrics">/metrics</a> &middot; <a href="/healthz">/healthz</a></p>
<ul>{links}</ul>
<table><tr><th>source</th><th>status</th><th>last success</th><th>errors</th><th>detail</th></tr>
{''.join(rows)}</table></body></html>
"""


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        log.debug("http %s", format % args)


class _Server(ThreadingWSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def start_http_server(app: ExporterApp, host: str, port: int) -> tuple[_Server, threading.Thread]:
    """Bind and serve in a daemon thread. Raises OSError when the address cannot be bound."""
    server_class = _Server6 if ":" in host else _Server
    server = make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    return server, thread
