"""Benchmark MlflowSource.poll() and /metrics against a real `mlflow server` holding 10k and 100k runs.

For each size: build the store (bench/make_store.py), start `mlflow server` on it (loopback, a free
port, one worker), and measure in this process:
  - the first poll (a full sync that pages every run), its wall and client CPU time, and RSS;
  - 5 steady-state polls with nothing changed, then one poll after 5 runs were created and 5 finished;
  - ExporterApp.render(): the first render after a poll (uncached) and the next one (cached);
  - the baseline in the same run: a naive exporter that pages every run on every poll;
  - memory with tracemalloc, on a second, fresh full sync (tracing slows Python down, so it is kept
    out of the timings): peak during the sync, what stays after it, and what the ledger holds.

    .venv/bin/python bench/bench_poll.py              # 10k and 100k runs (about 10 minutes)
    .venv/bin/python bench/bench_poll.py --quick      # 1,000 runs, a smoke run; RESULTS.md untouched
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import tracemalloc
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

# MLflow's client prints a "View run ... at" line on every run it ends: not wanted in a benchmark table.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
sys.path.insert(0, str(Path(__file__).parent))
import make_store
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from mlops_kpi_exporter.cli import build_registry
from mlops_kpi_exporter.config import config_from_dict
from mlops_kpi_exporter.mlflow_source import MlflowSource
from mlops_kpi_exporter.pricing import BadRunData
from mlops_kpi_exporter.runs import make_facts
from mlops_kpi_exporter.server import ExporterApp
from mlops_kpi_exporter.snapshot import SnapshotStore
from results import write_section

WORK = Path(__file__).resolve().parent / ".work"
BIN = Path(sys.executable).parent  # the venv's `mlflow` executable
STEADY_POLLS = 5
RENDERS = 5
SERVER_START_TIMEOUT = 120.0


def exporter_config(url: str):
    return config_from_dict({
        # timeout: one search_runs page deep into 100k runs takes the SQLite server a while (OFFSET paging)
        "mlflow": {"tracking_uri": url, "poll_interval": "60s", "resync_interval": "1h", "page_size": 1000,
                   "timeout": "120s"},
        "pricing": {"currency": "USD"},
    })


# -- the MLflow server --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", PATH=f"{BIN}:{os.environ['PATH']}")
    log = WORK / f"mlflow-server-{db.stem}.log"
    with log.open("wb") as out:  # the child keeps its own copy of the file descriptor
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1", "--default-artifact-root", (WORK / "artifacts").as_uri()],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=WORK,
            start_new_session=True,  # its own process group: stop_server ends the server and its workers
        )
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                if reply.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    stop_server(proc)
    raise RuntimeError(f"mlflow server not healthy after {SERVER_START_TIMEOUT:.0f} s; see {log}")


def stop_server(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


# -- measuring ------------------------------------------------------------------------------------------
def timed(fn, *args):
    """(wall seconds, CPU seconds of this process, result): wall minus CPU is mostly waiting for MLflow."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def naive_poll(client: MlflowClient, rules) -> tuple[int, dict[tuple[str, str], float]]:
    """The baseline: an exporter without a ledger pages through every run on every poll and costs each
    one again (with the exporter's own pricing rules, so both do the same work per run)."""
    now_ms = int(time.time() * 1000)
    exp_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000)]
    cost: dict[tuple[str, str], float] = {}
    seen, token = 0, None
    while True:
        page = client.search_runs(exp_ids, run_view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        for run in page:
            seen += 1
            info = run.info
            try:
                facts = make_facts(rules, run_id=info.run_id, experiment_id=info.experiment_id,
                                   run_name=info.run_name, status=info.status, start_time=info.start_time,
                                   end_time=info.end_time, tags=run.data.tags, params=run.data.params, now_ms=now_ms)
            except BadRunData:
                continue
            key = (info.experiment_id, facts.status)
            cost[key] = cost.get(key, 0.0) + facts.cost_nano(now_ms) / 1e9
        token = page.token
        if not token:
            return seen, cost


def memory_of_full_sync(config) -> dict:
    """tracemalloc over a fresh source's first poll: peak, retained afterwards, and the ledger's share."""
    source = MlflowSource(config)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    wall, _, (families, _) = timed(source.poll)
    runs = len(source.ledger)
    del families  # handed to the snapshot store in real life; not part of what the source keeps
    gc.collect()
    retained, peak = tracemalloc.get_traced_memory()
    source.ledger = None  # what this frees is exactly what the ledger held
    gc.collect()
    without_ledger = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {"traced_sync_s": wall, "peak": peak - base, "retained": retained - base,
            "ledger": retained - without_ledger, "ledger_runs": runs}


def bench_size(n: int) -> dict:
    db = WORK / f"bench_poll-{n}.db"
    build_s, _, runs = timed(make_store.build, db, n)
    print(f"  store: {n:,} runs in {build_s:.1f} s", flush=True)
    server_started = time.perf_counter()
    proc, url = start_server(db)
    print(f"  mlflow server at {url} healthy after {time.perf_counter() - server_started:.1f} s", flush=True)
    try:
        config = exporter_config(url)
        source = MlflowSource(config)

        # First poll = full sync. Check it counted every run and costs what make_store expects.
        gc.collect()
        rss_before = rss_mib()
        full_s, full_cpu, (families, _) = timed(source.poll)
        rss_after = rss_mib()
        got = make_store.exported_totals(families)
        want = make_store.expected_cost(runs, 0, completed_only=True)
        assert got["runs"] == n, got
        assert abs(got["completed_cost"] - want) < 1e-6 + 1e-9 * n, (got, want)
        print(f"  full sync {full_s:.1f} s; figures match the store", flush=True)

        # Steady state: nothing changed since the last poll.
        steady = [timed(source.poll) for _ in range(STEADY_POLLS)]
        steady_fetched = source.last_report.fetched

        # A few changes through the server: 5 new runs, 5 of the running runs finished.
        client = MlflowClient(tracking_uri=url)
        for r in [r for r in runs if r.status == "RUNNING"][:5]:
            client.set_terminated(r.run_id, "FINISHED")
        for i in range(5):
            client.create_run(runs[0].experiment_id, run_name=f"new-{i}",
                              tags={"instance_type": "g5.2xlarge", "estimator": "XGBClassifier"})
        changed_s, changed_cpu, (families, _) = timed(source.poll)
        changed_report = source.last_report
        assert changed_report.changed == 10 and changed_report.runs == n + 5, changed_report

        # /metrics: the first render after each new snapshot, then the cached one.
        store = SnapshotStore()
        store.register("mlflow")
        app = ExporterApp(build_registry(store, config), store, "bench", {})
        uncached, cached = [], []
        for _ in range(RENDERS):
            store.success("mlflow", families, changed_s)  # what the poller does after a poll
            uncached.append(timed(app.render)[0])
            cached.append(timed(app.render)[0])
        body, _ = app.render()
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))

        # Baseline: one naive poll (every run, every time); its totals must agree with the exporter's.
        naive_s, naive_cpu, (seen, naive_cost) = timed(naive_poll, client, source.rules)
        assert seen == n + 5, seen
        exported = make_store.exported_totals(families)["completed_cost"]
        naive_completed = sum(v for (_, status), v in naive_cost.items() if status != "RUNNING")
        assert abs(exported - naive_completed) < 1e-6 + 1e-9 * n, (exported, naive_completed)
        print(f"  naive poll {naive_s:.1f} s", flush=True)

        memory = memory_of_full_sync(config)
    finally:
        stop_server(proc)
    steady_s = [s[0] for s in steady]
    return {
        "runs": n, "build_s": build_s, "full_s": full_s, "full_cpu": full_cpu,
        "steady_med": statistics.median(steady_s), "steady_min": min(steady_s), "steady_max": max(steady_s),
        "steady_cpu": statistics.median(s[1] for s in steady), "steady_fetched": steady_fetched,
        "changed_s": changed_s, "changed_cpu": changed_cpu, "changed_fetched": changed_report.fetched,
        "changed_changed": changed_report.changed,
        "render_s": statistics.median(uncached), "cached_s": statistics.median(cached),
        "body_bytes": len(body), "series": series,
        "naive_s": naive_s, "naive_cpu": naive_cpu,
        "rss_before": rss_before, "rss_after": rss_after, **memory,
    }


# -- reporting ----------------------------------------------------------------------------------------
def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def tables(rows: list[dict]) -> str:
    time_table = [
        ("| runs | first poll (full sync), client CPU | steady poll, nothing changed: median (min-max), client CPU "
         "| poll after 5 new + 5 finished runs | naive poll (baseline) | naive / steady "
         "| render, first after poll | render, cached | /metrics body | series |"),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        time_table.append(
            f"| {r['runs']:,} | {r['full_s']:.1f} s, {r['full_cpu']:.1f} s "
            f"| {ms(r['steady_med'])} ({ms(r['steady_min'])}-{ms(r['steady_max'])}), {ms(r['steady_cpu'])}; "
            f"{r['steady_fetched']} runs fetched "
            f"| {ms(r['changed_s'])}; {r['changed_fetched']} fetched, {r['changed_changed']} changed "
            f"| {r['naive_s']:.1f} s | {r['naive_s'] / r['steady_med']:,.0f}x "
            f"| {ms(r['render_s'])} | {r['cached_s'] * 1e6:.0f} us | {r['body_bytes']:,} B | {r['series']:,} |"
        )
    memory_table = [
        ("| runs | RSS before -> after full sync | tracemalloc peak during full sync | retained after it "
         "| of which the ledger | ledger per run |"),
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        memory_table.append(
            f"| {r['runs']:,} | {r['rss_before']:.0f} -> {r['rss_after']:.0f} MiB "
            f"| {mib(r['peak'])} | {mib(r['retained'])} | {mib(r['ledger'])} "
            f"| {r['ledger'] / r['ledger_runs']:,.0f} B |"
        )
    return "\n".join(time_table) + "\n\n" + "\n".join(memory_table) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--quick", action="store_true", help="1,000 runs only, a smoke run; RESULTS.md untouched")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    sizes = [1_000] if args.quick else args.sizes
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # e.g. "Creating initial MLflow database tables"
    WORK.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    rows = []
    for size in sizes:
        print(f"--- {size:,} runs", flush=True)
        rows.append(bench_size(size))
    import mlflow

    command = ".venv/bin/python bench/bench_poll.py" + ("" if sizes == [10_000, 100_000] else
                                                         f" --sizes {' '.join(map(str, sizes))}")
    header = (
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {len(os.sched_getaffinity(0))} cores (`nproc`), "
        f"load average {load:.1f} at start, Python {platform.python_version()}, MLflow {mlflow.__version__}; "
        f"`mlflow server` on SQLite with one worker, on the same machine. Store: 20 experiments, 20 runs RUNNING, "
        f"the rest ended 15 min to 90 days ago. Steady polls: {STEADY_POLLS}; renders: median of {RENDERS}.\n"
        f"Command: `{command}`\n"
    )
    text = f"{header}\n{tables(rows)}"
    print(text)
    if not (args.quick or args.no_write):
        write_section("bench_poll", text)
        print("written to bench/RESULTS.md")


if __name__ == "__main__":
    main()
