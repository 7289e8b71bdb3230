"""Benchmark the MLflow source against a real `mlflow server` with 10,000, 100,000 (and 1,000,000) runs.

For each size: build the store (bench/build_store.py), start `mlflow server` on it (loopback, free
port, one worker), then measure in this process
  - the first full sync (every run read, the default page size and concurrency), its wall time and
    the CPU the MLflow server spent on it, and the exporter's memory growth after it;
  - the floor, in the same run: a bare MlflowClient paging every run of the same experiments with the
    largest page MLflow accepts (50,000), nothing else done with them; measured after the sync, so
    that it meets MLflow's caches warm (the ratio sync / floor errs against the exporter);
  - steady-state polls with nothing changed, and one after 10 runs changed;
  - rendering /metrics: first render after a poll, and a cached one;
  - the hourly resync (in place) after that;
  - up to --compare-max runs: the naive exporter that pages every run on every poll (the baseline of
    the steady poll), and the first sync as it was before (1,000-run pages, one search at a time).

    .venv/bin/python bench/bench_mlflow.py                          # 10k and 100k (about 15 minutes)
    .venv/bin/python bench/bench_mlflow.py --sizes 1000000 --no-write  # the million (about 40 minutes)
    .venv/bin/python bench/bench_mlflow.py --sizes 1000             # a quick smoke run
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

from mlflow.entities import ViewType  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from mlops_kpi_exporter.cli import build_registry, build_store  # noqa: E402
from mlops_kpi_exporter.config import config_from_dict  # noqa: E402
from mlops_kpi_exporter.mlflow_client import MlflowConnection  # noqa: E402
from mlops_kpi_exporter.sources.mlflow_runs import MlflowSource  # noqa: E402
from mlops_kpi_exporter.pricing import Pricer  # noqa: E402
from mlops_kpi_exporter.runs import RunRules, facts_of  # noqa: E402
from mlops_kpi_exporter.server import ExporterApp  # noqa: E402
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


def start_server(db: Path, workers: int = 1) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", PATH=f"{BIN}:{os.environ['PATH']}")
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1",
         "--port", str(port), "--workers", str(workers), "--default-artifact-root", str(WORK / "artifacts")],
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


def server_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) of every live process of the MLflow server's process group."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of stat: the process group
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def floor_read(url: str, experiment_ids: list[str]) -> int:
    """The least any exporter must do for a full read: page every run with MLflow's largest page."""
    client, token, seen = MlflowClient(tracking_uri=url), None, 0
    while True:
        page = client.search_runs(experiment_ids, run_view_type=ViewType.ACTIVE_ONLY, max_results=50_000, page_token=token)
        seen += len(page)
        token = page.token
        if not token:
            return seen


def first_sync(url: str, mlflow: dict | None = None) -> tuple[float, float, MlflowSource]:
    """A new exporter's first poll: (wall s, MLflow server CPU s, the source)."""
    config = config_from_dict({"mlflow": {"tracking_uri": url, "timeout": "600s", **(mlflow or {})}})
    connection = MlflowConnection.from_config(config)
    connection.apply()
    source = MlflowSource(config, connection)
    return (*measured(source.poll), source)


def measured(fn, *args) -> tuple[float, float]:
    pgid = SERVER_PGID[0]
    cpu = server_cpu_s(pgid)
    wall, _ = timed(fn, *args)
    return wall, server_cpu_s(pgid) - cpu


SERVER_PGID = [0]


def bench_size(runs: int, compare_max: int, page_size: int | None = None) -> dict:
    db = WORK / f"store-{runs}.db"
    build_s, expected = timed(build, db, runs)
    proc, url = start_server(db)
    SERVER_PGID[0] = proc.pid
    out: dict = {"runs": runs, "build_s": build_s}
    try:
        rss_before = rss_mb()
        out["full_s"], out["full_cpu_s"], source = first_sync(url, {"page_size": page_size} if page_size else None)
        rss_after = rss_mb()
        families = source.poll()[0]
        hours = sum(s.value for f in families if f.name == "mlops_experiment_run_seconds"
                    for s in f.samples if s.labels["status"] != "RUNNING") / 3600
        assert abs(hours - expected["finished_hours"]) < 1e-6 * max(1, hours), (hours, expected)
        ids = sorted(source.experiments)
        out["floor_s"], out["floor_cpu_s"] = measured(lambda: floor_read(url, ids))
        steady = [timed(source.poll)[0] for _ in range(5)]

        client = source.runs.client
        exp_id = next(iter(source.experiments))
        now = int(time.time() * 1000)
        for run_id in list(source.ledger.open_runs)[:5]:
            client.set_terminated(run_id, "FINISHED", end_time=now)
        for i in range(5):
            client.create_run(exp_id, start_time=now - 60_000, tags={"instance_type": "p3.2xlarge"}, run_name=f"new-{i}")
        changed_s, (_, changed_summary) = timed(source.poll)

        store = build_store(source.config, [source])  # the derived stage included, as `serve` runs it
        store.register("mlflow")
        store.success("mlflow", source.poll()[0], 0.0, facts=source.facts())
        app = ExporterApp(build_registry(store, source.config), store, "bench", {})
        render_s, (body, _) = timed(app.render)
        cached_s, _ = timed(app.render)
        series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))

        source.runs.last_full_sync = 0.0  # the resync is due
        out["resync_s"], out["resync_cpu_s"] = measured(source.poll)
        assert "full sync" in source.last_report.summary(), source.last_report
        if runs <= compare_max:
            rules = RunRules(Pricer(source.config.pricing), ("estimator",), "UTC")
            out["naive_s"], seen = timed(naive_poll, source, rules)
            assert seen == runs + 5, seen
            out["before_s"], out["before_cpu_s"], _ = first_sync(url, {"page_size": 1000, "concurrency": 1})
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    out.update({
        "steady_med_s": statistics.median(steady), "steady_max_s": max(steady), "changed_s": changed_s,
        "changed_summary": changed_summary, "render_s": render_s, "cached_s": cached_s,
        "body_kb": len(body) / 1024, "series": series, "rss_before_mb": rss_before, "rss_after_mb": rss_after,
    })
    return out


def table(rows: list[dict]) -> str:
    lines = [
        "| runs | first full sync (MLflow CPU) | floor: bare client, 50,000-run pages (MLflow CPU) | sync / floor "
        "| before: 1,000-run pages, one at a time | hourly resync, in place | steady poll, nothing changed "
        "(median / max of 5) | poll after 10 runs changed | naive full-scan poll | naive / steady "
        "| /metrics first render | cached render | series | exporter memory growth after the sync |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        before = f"{r['before_s']:.1f} s ({r['before_cpu_s']:.0f} s)" if "before_s" in r else "not run"
        naive = f"{r['naive_s']:.1f} s" if "naive_s" in r else "not run"
        ratio = f"{r['naive_s'] / r['steady_med_s']:.0f}x" if "naive_s" in r else "-"
        lines.append(
            f"| {r['runs']:,} | {r['full_s']:.1f} s ({r['full_cpu_s']:.0f} s) | {r['floor_s']:.1f} s ({r['floor_cpu_s']:.0f} s) "
            f"| {r['full_s'] / r['floor_s']:.2f} | {before} | {r['resync_s']:.1f} s ({r['resync_cpu_s']:.0f} s) "
            f"| {r['steady_med_s'] * 1000:.0f} / {r['steady_max_s'] * 1000:.0f} ms | {r['changed_s'] * 1000:.0f} ms "
            f"| {naive} | {ratio} | {r['render_s'] * 1000:.1f} ms | {r['cached_s'] * 1e6:.0f} us | {r['series']:,} "
            f"| +{r['rss_after_mb'] - r['rss_before_mb']:.0f} MiB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--page-size", type=int, help="mlflow.page_size of the exporter (default: the exporter's)")
    parser.add_argument("--compare-max", type=int, default=100_000,
                        help="largest size at which the naive poll and the old first sync are run too")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        print(f"--- {size:,} runs", flush=True)
        rows.append(bench_size(size, args.compare_max, args.page_size))
        print(rows[-1], flush=True)
    import mlflow

    header = (
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, MLflow {mlflow.__version__}, `mlflow server` on SQLite, one worker.\n"
        f"Command: `.venv/bin/python bench/bench_mlflow.py --sizes {' '.join(map(str, args.sizes))}"
        f"{'' if args.compare_max == 100_000 else f' --compare-max {args.compare_max}'}"
        f"{f' --page-size {args.page_size}' if args.page_size else ''}`"
    )
    text = f"{header}\n\n{table(rows)}\n"
    print(text)
    if not args.no_write:
        write_section("bench_mlflow", text)


if __name__ == "__main__":
    main()
