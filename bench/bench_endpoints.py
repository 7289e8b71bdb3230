"""Benchmark: 50 endpoints, 5 of them slower than their timeout, polled by the real scheduler.

A poll cycle (every endpoint polled once) should take about the slowest timeout, not the sum of
all probes: each endpoint is its own source on its own worker thread. The baseline, in the same
run, polls the same endpoints one after another. Loopback only; bounded.

    .venv/bin/python bench/bench_endpoints.py
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from upstream import Reply, Upstream, fixture  # noqa: E402  (the test suite's fake model server)

from mlops_kpi_exporter.config import config_from_dict  # noqa: E402
from mlops_kpi_exporter.sources.endpoints import EndpointSource  # noqa: E402
from mlops_kpi_exporter.poller import Poller  # noqa: E402
from mlops_kpi_exporter.pricing import Pricer  # noqa: E402
from mlops_kpi_exporter.snapshot import SnapshotStore  # noqa: E402
from results import write_section  # noqa: E402



def sources(upstream: Upstream, count: int, slow: int, timeout: float) -> list[EndpointSource]:
    upstream.replies["/ping"] = Reply(200, b"")
    upstream.replies["/slow"] = Reply(200, b"", delay=timeout + 1)
    upstream.replies["/metrics"] = Reply(200, fixture("kserve", OK=100, B1=50, B2=90, LAT_S=12.5))
    endpoints = [
        {"name": f"ep-{i:02d}", "url": upstream.url, "preset": "kserve", "metrics_url": f"{upstream.url}/metrics",
         "metrics_timeout": f"{timeout}s", "probe": {"path": "/slow" if i < slow else "/ping", "timeout": f"{timeout}s",
                                                      "interval": "60s"}}
        for i in range(count)
    ]
    config = config_from_dict({"mlflow": {"tracking_uri": "sqlite:///unused.db"}, "endpoints": endpoints})
    pricer = Pricer(config.pricing)
    return [EndpointSource(e, config, pricer) for e in config.endpoints]


def scheduled_cycle(items: list[EndpointSource]) -> float:
    """Time until every endpoint has been polled once by the Poller's scheduler."""
    store = SnapshotStore()
    poller = Poller(items, store)
    started = time.perf_counter()
    poller.start()
    try:
        while True:
            _, states = store.states()
            if all(s.polls_total >= 1 for s in states):
                return time.perf_counter() - started
            if time.perf_counter() - started > 120:
                raise TimeoutError("poll cycle did not finish in 120 s")
            time.sleep(0.01)
    finally:
        poller.stop()


def serial_cycle(items: list[EndpointSource]) -> float:
    started = time.perf_counter()
    for item in items:
        item.poll()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=50)
    parser.add_argument("--slow", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    upstream = Upstream()
    try:
        concurrent = scheduled_cycle(sources(upstream, args.endpoints, args.slow, args.timeout))
        serial = serial_cycle(sources(upstream, args.endpoints, args.slow, args.timeout))
    finally:
        upstream.close()
    text = (
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"threads alive after: {threading.active_count()}.\n"
        f"Command: `.venv/bin/python bench/bench_endpoints.py --endpoints {args.endpoints} --slow {args.slow} "
        f"--timeout {args.timeout}`\n\n"
        "| endpoints (slow) | probe + metrics timeout | scheduled poll cycle (each endpoint its own source) "
        "| serial baseline (one after another) | serial / scheduled |\n|---|---:|---:|---:|---:|\n"
        f"| {args.endpoints} ({args.slow}) | {args.timeout:g} s | {concurrent:.2f} s | {serial:.2f} s "
        f"| {serial / concurrent:.1f}x |\n"
    )
    print(text)
    if not args.no_write:
        write_section("bench_endpoints", text)


if __name__ == "__main__":
    main()
