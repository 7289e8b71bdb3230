"""Record real model servers' /metrics pages as fixtures (`make record-servers`).

Each server of tests/real_servers.py is started fresh on 127.0.0.1 (its venv made first if need be),
driven with the harness's traffic (100 good requests, 5 malformed, 5 that make the model raise), and
its metrics page is written, as served, to tests/fixtures/metrics/<server>-real.prom under a header
that names the server's version and the traffic sent.

    python tests/record_servers.py [SERVER ...]     # default: every server in real_servers.SPECS
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import real_servers

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "metrics"
TRAFFIC = {"good": 100, "client_errors": 5, "server_errors": 5}


def header(spec: real_servers.ServerSpec, server: real_servers.RunningServer, truth: real_servers.Truth) -> str:
    probes = ", ".join(f"{n}x{code}" for code, n in sorted(truth.health_probes.items())) or "none"
    lines = [
        f"Recorded by tests/record_servers.py (make record-servers): a real {spec.name} {spec.version}",
        f"(pip install {' '.join(spec.pins)}), serving the harness's model (doubles x, raises on x < 0),",
        f"on 127.0.0.1; GET {spec.metrics_path} on {'its own metrics port' if spec.metrics_port != 'http' else 'the serving port'},"
        " scraped once after this traffic (once the page showed it), from a fresh start:",
        f"  {truth.health_probes.total()} health probes GET {truth.health_path} while it started (answered {probes});",
        f"  then, one at a time: {truth.good} good POST {truth.predict_path} ({_codes(truth, 'good')}),",
        f"  {truth.client_errors} malformed ({_codes(truth, 'client_error')}: {spec.client_error.decode()!r}),",
        f"  {truth.server_errors} that make the model raise ({_codes(truth, 'server_error')}: {spec.server_error.decode()!r}).",
        "Counts are exact; durations, timestamps and pids differ from one recording to the next.",
    ]
    return "".join(f"# {line}\n" for line in lines)


def _codes(truth: real_servers.Truth, kind: str) -> str:
    return ", ".join(f"{n}x{code}" for code, n in sorted(truth.statuses[kind].items()))


def record(spec: real_servers.ServerSpec) -> Path:
    with tempfile.TemporaryDirectory(prefix=f"record-{spec.name}-") as workdir:
        server = real_servers.start(spec, Path(workdir))
        try:
            truth = real_servers.drive(server, **TRAFFIC)
            page = server.settled_metrics(truth.total)
        finally:
            server.stop()
    out = FIXTURES / f"{spec.name}-real.prom"
    out.write_text(header(spec, server, truth) + page)
    print(f"{out.relative_to(real_servers.REPO)}: {spec.name} {spec.version}, {truth.describe()}")
    return out


def main(names: list[str]) -> None:
    unknown = [n for n in names if n not in real_servers.SPECS]
    if unknown:
        sys.exit(f"unknown server {', '.join(unknown)}; known: {', '.join(real_servers.SPECS)}")
    for name in names or list(real_servers.SPECS):
        record(real_servers.SPECS[name])


if __name__ == "__main__":
    main(sys.argv[1:])
