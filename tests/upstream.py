"""A controllable HTTP server on 127.0.0.1 that plays a model server (replies, delays, errors), or an
authenticating proxy in front of a real MLflow server (forward_to, require_authorization)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"ok"
    content_type: str = "text/plain; version=0.0.4"
    delay: float = 0.0
    location: str | None = None  # for redirects


def fixture(preset: str, **values: float) -> bytes:
    """A fixture page with its {PLACEHOLDERS} filled in."""
    text = (FIXTURES / f"{preset}.prom").read_text()
    for key, value in values.items():
        text = text.replace("{" + key + "}", repr(float(value)))
    return text.encode()


class Upstream:
    def __init__(self, tls: tuple[str, str] | None = None):
        self.replies: dict[str, Reply] = {}
        self.requests: list[tuple[str, str, bytes]] = []
        self.headers: list[dict[str, str]] = []
        self.forward_to: str | None = None  # paths without a canned reply go to this server
        self.require_authorization: str | None = None  # else 401, as an MLflow behind auth answers
        self.delays: dict[str, float] = {}  # path prefix -> seconds to wait before answering
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                upstream.requests.append((self.command, self.path, body))
                upstream.headers.append(dict(self.headers))
                reply = upstream.replies.get(self.path)
                required = upstream.require_authorization
                if required is not None and self.headers.get("Authorization") != required:
                    reply = Reply(401, b'{"error_code": "UNAUTHENTICATED"}', "application/json")
                elif reply is None and upstream.forward_to:
                    import requests

                    got = requests.request(self.command, upstream.forward_to + self.path, data=body, timeout=60,
                                           headers={"Content-Type": self.headers.get("Content-Type", "")})
                    reply = Reply(got.status_code, got.content, got.headers.get("Content-Type", "application/json"))
                reply = reply or Reply(404, b"no such path")
                delay = reply.delay + sum(s for p, s in list(upstream.delays.items()) if self.path.startswith(p))
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(len(reply.body)))
                    if reply.location:
                        self.send_header("Location", reply.location)
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            do_GET = do_POST = do_HEAD = _serve

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        scheme = "http"
        if tls is not None:  # (cert file, key file): serve https
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True, do_handshake_on_connect=False)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
