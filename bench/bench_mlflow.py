"""Benchmark the MLflow source against a real `mlflow server` with 10,000 and 100,000 runs.

For each size: build the store (bench/build_store.py), start `mlflow server` on it (loopback, free
port), then measure in this process
  - the first full sync (pages every run), and the exporter's memory after it;
  - steady-state polls with nothing changed, and one after 10 runs changed;
  - rendering /metrics: first render after a poll, and a cached one;
  - the baseline, in the same run: a naive exporter that pages every run on every poll.

    .venv/bin/python bench/bench_mlflow.py                 # 10k and 100k (about 10 minutes)
    .venv/bin/python bench/bench_mlflow.py --sizes 1000    # a quick smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).parent))
from build_store import build  # noqa: E402

from mlops_kpi_exporter.cli import build_registry  # noqa: E402
from mlops_kpi_exporter.config import config_from_dict  # noqa: E402
from mlops_kpi_exporter.mlflow_client import MlflowConnection  # noqa: E402
from mlops_kpi_exporter.sources.mlflow_runs import MlflowSource  # noqa: E402
from mlops_kpi_exporter.pricing import Pricer  # noqa: E402
from mlops_kpi_exporter.runs import RunRules, facts_of  # noqa: E402
from mlops_kpi_exporter.server import ExporterApp  # noqa: E402
from mlops_kpi_exporter.snapshot import SnapshotStore  # noqa: E402
from results import write_section  # noqa: E402

WORK = Path(__file__).parent / ".work"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(db: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", PATH=f"{BIN}:{os.environ['PATH']}")
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--default-artifact-root", str(WORK / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return proc, url
        except requests.RequestException:
            time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("mlflow server did not start")


def timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def naive_poll(source: MlflowSource, rules: RunRules) -> int:
    """What an exporter without a ledger does every poll: page through every run and cost it."""
    ids = list(source.runs.matching_experiments())
    total, seen = 0, 0
    now = int(time.time() * 1000)
    for run in source.runs.search(ids):
        seen += 1
        total += facts_of(rules, run, now).cost_nano(now)
    return seen


def bench_size(runs: int) -> dict:
    db = WORK / f"store-{runs}.db"
    build_s, expected = timed(build, db, runs)
    proc, url = start_server(db)
    try:
        config = config_from_dict({"mlflow": {"tracking_uri": url, "timeout": "120s"}})
        mlflow = MlflowConnection.from_config(config)
        mlflow.apply()
        source = MlflowSource(config, mlflow)
        rss_before = rss_mb()
        full_s, (families, _) = timed(source.poll)
        rss_after = rss_mb()
        hours = sum(s.value for f in families if f.name == "mlops_experiment_run_seconds"
                    for s in f.samples if s.labels["status"] != "RUNNING") / 3600
        assert abs(hours - expected["finished_hours"]) < 1e-6 * max(1, hours), (hours, expected)
        steady = [timed(source.poll)[0] for _ in range(5)]

        client = source.runs.client
        exp_id = next(iter(source.experiments))
        now = int(time.time() * 1000)
        for run_id in list(source.ledger.open_runs)[:5]:
            client.set_terminated(run_id, "FINISHED", end_time=now)
        for i in range(5):
            client.create_run(exp_id, start_time=now - 60_000, tags={"instance_type": "p3.2xlarge"}, run_name=f"new-{i}")
        changed_s, (_, changed_summary) = timed(source.poll)

        store = SnapshotStore()
        store.register("mlflow")
        store.success("mlflow", source.poll()[0], 0.0)
        app = ExporterApp(build_registry(store, config), store, "bench", {})
        render_s, (body, _) = timed(app.render)
        cached_s, _ = timed(app.render)
        series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))

        rules = RunRules(Pricer(config.pricing), ("estimator",), "UTC")
        naive_s, seen = timed(naive_poll, source, rules)
        assert seen == runs + 5, seen
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return {
        "runs": runs, "build_s": build_s, "full_s": full_s, "steady_med_s": statistics.median(steady),
        "steady_max_s": max(steady), "changed_s": changed_s, "changed_summary": changed_summary,
        "render_s": render_s, "cached_s": cached_s, "body_kb": len(body) / 1024, "series": series,
        "rss_before_mb": rss_before, "rss_after_mb": rss_after, "naive_s": naive_s,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| runs | first full sync | steady poll, nothing changed (median / max of 5) | poll after 10 runs changed "
        "| naive full-scan poll (baseline) | naive / steady | /metrics first render | cached render | page | series "
        "| RSS after full sync (growth) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['runs']:,} | {r['full_s']:.1f} s | {r['steady_med_s'] * 1000:.0f} / {r['steady_max_s'] * 1000:.0f} ms "
            f"| {r['changed_s'] * 1000:.0f} ms | {r['naive_s']:.1f} s | {r['naive_s'] / r['steady_med_s']:.0f}x "
            f"| {r['render_s'] * 1000:.1f} ms | {r['cached_s'] * 1e6:.0f} us | {r['body_kb']:.0f} KiB | {r['series']:,} "
            f"| {r['rss_after_mb']:.0f} MiB (+{r['rss_after_mb'] - r['rss_before_mb']:.0f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        print(f"--- {size:,} runs", flush=True)
        rows.append(bench_size(size))
        print(rows[-1], flush=True)
    import mlflow

    header = (
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, MLflow {mlflow.__version__}, `mlflow server` on SQLite, one worker.\n"
        f"Command: `.venv/bin/python bench/bench_mlflow.py --sizes {' '.join(map(str, args.sizes))}`"
    )
    text = f"{header}\n\n{table(rows)}\n"
    print(text)
    if not args.no_write:
        write_section("bench_mlflow", text)


if __name__ == "__main__":
    main()
