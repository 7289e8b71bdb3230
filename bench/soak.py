"""Soak: the exporter under a moving MLflow, a flapping endpoint, an MLflow restart and concurrent
scrapes, for a bounded time. Loopback only; request counts and time are bounded.

    .venv/bin/python bench/soak.py --duration 120      # writes its section of bench/RESULTS.md

Checks: every scrape answered 200, polls of one source never overlapped (from the JSON poll logs),
the exporter's memory stayed flat, and every finished run was counted exactly once with its exact
cost once the load stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import EXPORTER, HOUR_MS, MlflowServer, child_env, free_port, samples, wait_http  # noqa: E402
from upstream import Reply, Upstream  # noqa: E402
from mlops_kpi_exporter.mlflow_client import paged  # noqa: E402

RATE = 0.096  # m5.large per hour, from the catalog


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def soak(workdir: Path, duration: float = 60, scrapers: int = 2, max_scrapes: int = 20_000) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "mlflow").mkdir(exist_ok=True)
    mlflow = MlflowServer(workdir / "mlflow").start()
    client = mlflow.client()
    exp = client.create_experiment("soak")
    endpoint = Upstream()
    endpoint.replies["/ping"] = Reply(200, b"")
    port = free_port()
    (workdir / "exporter.yml").write_text(yaml.safe_dump({
        "mlflow": {"tracking_uri": mlflow.url, "poll_interval": "1s", "resync_interval": "15s", "timeout": "5s",
                   "retry_backoff": "1s", "experiments": ["soak"]},
        "registry": {"enabled": False},
        "endpoints": [{"name": "flappy", "url": endpoint.url, "probe": {"interval": "1s", "timeout": "500ms"}}]}))
    log_path = workdir / "exporter.log"
    exporter = subprocess.Popen([EXPORTER, "serve", "--config", str(workdir / "exporter.yml"), "--listen",
                                 f"127.0.0.1:{port}", "--log-format", "json"], env=child_env(),
                                stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"))
    url = f"http://127.0.0.1:{port}/metrics"
    stop = threading.Event()
    scrape_ok = scrape_failed = 0
    lock = threading.Lock()
    memory: list[float] = []

    def workload() -> None:  # runs created and finished continuously, each exactly one minute long
        while not stop.is_set():
            try:
                end = int(time.time() * 1000)
                run = client.create_run(exp, start_time=end - 60_000, tags={"instance_type": "m5.large"})
                client.set_terminated(run.info.run_id, "FINISHED", end_time=end)
            except Exception:  # noqa: BLE001 - MLflow is being restarted; try again
                time.sleep(0.5)
            time.sleep(0.1)

    def scraper() -> None:
        nonlocal scrape_ok, scrape_failed
        while not stop.is_set() and scrape_ok + scrape_failed < max_scrapes:
            try:
                good = requests.get(url, timeout=5).status_code == 200
            except requests.RequestException:
                good = False
            with lock:
                scrape_ok += good
                scrape_failed += not good
            time.sleep(0.02)

    def flapper() -> None:
        up = True
        while not stop.wait(2.5):
            up = not up
            endpoint.replies["/ping"] = Reply(200 if up else 503, b"")

    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=exporter)
        threads = [threading.Thread(target=f, daemon=True) for f in [workload, flapper] + [scraper] * scrapers]
        for t in threads:
            t.start()
        started = time.monotonic()
        restarted = False
        while time.monotonic() - started < duration:
            memory.append(rss_mib(exporter.pid))
            if not restarted and time.monotonic() - started > duration / 2:
                mlflow.kill()  # MLflow dies under load, and comes back on the same database
                time.sleep(1)
                mlflow.start()
                restarted = True
            time.sleep(1)
        stop.set()
        for t in threads:
            t.join(timeout=10)
        # What MLflow holds is the truth: a request cut by the restart may still have landed there.
        finished = sum(1 for _ in paged(client.search_runs, experiment_ids=[exp], max_results=1000,
                                        filter_string="attributes.status = 'FINISHED'"))
        deadline = time.monotonic() + 60
        while True:  # the last runs reach a poll: wait for it, never for a fixed time
            text = requests.get(url, timeout=5).text
            key = ("mlops_runs", (("experiment", "soak"), ("status", "FINISHED")))
            if samples(text).get(key, 0) >= finished or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        stop.set()
        exporter.send_signal(signal.SIGTERM)
        exporter.wait(timeout=30)
        mlflow.kill()
        endpoint.close()
    m = samples(text)
    counted = m.get(("mlops_runs", (("experiment", "soak"), ("status", "FINISHED"))), 0)
    cost = m.get(("mlops_experiment_cost", (("experiment", "soak"), ("status", "FINISHED"))), 0)
    polls = [json.loads(line) for line in log_path.read_text().splitlines()
             if line.startswith("{") and '"event": "poll"' in line]
    overlaps = 0
    for source in {p["source"] for p in polls}:
        spans = sorted((_end(p) - p["duration_seconds"], _end(p)) for p in polls if p["source"] == source)
        overlaps += sum(1 for (_, a_end), (b_start, _) in zip(spans, spans[1:]) if b_start < a_end - 0.01)
    third = max(1, len(memory) // 3)
    return {
        "duration_s": duration, "runs_finished": finished, "runs_counted": counted,
        "cost_expected": round(finished * RATE * 60_000 / HOUR_MS, 9), "cost_exported": round(cost, 9),
        "scrapes_ok": scrape_ok, "scrapes_failed": scrape_failed, "polls": len(polls),
        "polls_failed": sum(1 for p in polls if not p["ok"]), "overlapping_polls": overlaps,
        "rss_mib_early": round(sum(memory[:third]) / third, 1), "rss_mib_late": round(sum(memory[-third:]) / third, 1),
        "exit_code": exporter.returncode,
    }


def _end(poll: dict) -> float:
    return datetime.strptime(poll["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=120)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    import tempfile

    result = soak(Path(tempfile.mkdtemp(prefix="soak-")), args.duration)
    print(json.dumps(result, indent=2))
    text = (
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {os.cpu_count()} cores.\n"
        f"Command: `.venv/bin/python bench/soak.py --duration {args.duration:g}`\n\n"
        "| duration | runs finished / counted | cost expected / exported | scrapes ok / failed | polls (failed while "
        "MLflow restarted) | overlapping polls | exporter RSS first third -> last third | exit |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        f"| {result['duration_s']:g} s | {result['runs_finished']} / {result['runs_counted']:g} "
        f"| {result['cost_expected']} / {result['cost_exported']} | {result['scrapes_ok']} / {result['scrapes_failed']} "
        f"| {result['polls']} ({result['polls_failed']}) | {result['overlapping_polls']} "
        f"| {result['rss_mib_early']} -> {result['rss_mib_late']} MiB | {result['exit_code']} |\n"
    )
    if not args.no_write:
        from results import write_section

        write_section("soak", text)


if __name__ == "__main__":
    main()
