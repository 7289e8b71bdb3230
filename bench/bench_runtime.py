"""The lean runtime against the full one: installed size, start-up, and idle memory after a full sync.

Two fresh virtualenvs under bench/.work/runtime/, each with `pip install <this checkout>`:
  - `lean`: the runtime only (MLflow's client package, mlflow-skinny), what `pip install .` and the image get;
  - `full`: the runtime plus the `local` extra, the full MLflow: the dependencies the runtime had before
    it moved to mlflow-skinny (`mlflow>=...` with its server, SQL store, pandas, pyarrow, scikit-learn...).
    `--baseline-ref REF` installs the tree of a git commit instead (e.g. the commit before the change).
Then, against one real `mlflow server` (this interpreter's MLflow, loopback, free port) on a SQLite store
of each --runs size (bench/build_store.py), for each venv:
  - once: `du` of site-packages, and `--help` (wall time and peak RSS: what importing the command line costs);
  - `check` and `once` against the server: exit codes and wall time;
  - `serve` (polling every 5 s): VmRSS from /proc/<pid>/status once /readyz answers 200 (every source
    polled once: the first full sync), and again after --idle seconds of steady polls;
  - the lean venv only: `demo` must refuse with a message naming the `local` extra.
The idle RSS added per run between the smallest and largest store extrapolates the figure to 100,000 runs.

    .venv/bin/python bench/bench_runtime.py                          # 1,000 and 10,000 runs; about 6 minutes
    .venv/bin/python bench/bench_runtime.py --baseline-ref b7ac93b   # against the commit before mlflow-skinny
    .venv/bin/python bench/bench_runtime.py --runs 1000 --keep       # reuse the venvs of a previous run
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).parent))
from bench_mlflow import free_port, start_server  # noqa: E402
from build_store import build  # noqa: E402
from results import write_section  # noqa: E402

ROOT = Path(__file__).parents[1]
WORK = Path(__file__).parent / ".work" / "runtime"
LEDGER_KIB_PER_RUN = 0.5  # tests/unit: a run's facts and its share of the ledger's tables


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, **kwargs)


def child_env() -> dict[str, str]:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", MLFLOW_MODEL_CATALOG_URI="")
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PYTHONPATH", None)
    return env


def make_venv(name: str, spec: str, keep: bool) -> Path:
    venv = WORK / name
    if keep and (venv / ".installed").exists():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    started = time.monotonic()
    done = run([str(venv / "bin" / "pip"), "install", "-q", "--no-cache-dir", spec])
    if done.returncode != 0:
        raise RuntimeError(f"pip install {spec} failed:\n{done.stderr[-3000:]}")
    (venv / ".installed").write_text(f"{spec}\n{time.monotonic() - started:.0f} s\n")
    return venv


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python*/site-packages"))


def du_mib(path: Path) -> float:
    return int(run(["du", "-sk", str(path)]).stdout.split()[0]) / 1024


def biggest(path: Path, n: int = 6) -> list[tuple[str, float]]:
    sizes = [(p.name, du_mib(p)) for p in path.iterdir() if p.is_dir() and not p.name.endswith((".dist-info", "__pycache__"))]
    return sorted(sizes, key=lambda s: -s[1])[:n]


def version_of(venv: Path, dist: str) -> str:
    out = run([str(venv / "bin" / "python"), "-c", f"from importlib.metadata import version; print(version('{dist}'))"])
    return out.stdout.strip() or "-"


HELP = """
import sys
sys.argv = ["mlops-kpi-exporter", "--help"]
from mlops_kpi_exporter.cli import main
try:
    main()
except SystemExit:
    pass
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(int(hwm.split()[1]) / 1024, file=sys.stderr)
"""


def help_cost(venv: Path) -> tuple[float, float]:
    """Wall time and peak RSS (MiB) of `--help`: importing the command line. The peak is read by the child
    itself (VmHWM): a child's rusage keeps the high-water mark of the process it was forked from."""
    started = time.monotonic()
    done = run([str(venv / "bin" / "python"), "-c", HELP], env=child_env())
    assert done.returncode == 0, done.stderr
    return time.monotonic() - started, float(done.stderr.split()[-1])


def vm(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def serve_rss(exe: Path, config: Path, idle: float, log: Path) -> dict:
    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen([str(exe), "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"), env=child_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 1800
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("serve was not ready in 30 minutes")
            time.sleep(0.5)
        ready_s = time.monotonic() - started
        body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        up = [line for line in body.splitlines() if line.startswith("mlops_source_up{")]
        assert up and all(line.endswith(" 1.0") for line in up), up
        at_ready = vm(proc.pid, "VmRSS")
        time.sleep(idle)
        return {"ready_s": ready_s, "rss_ready": at_ready, "rss_idle": vm(proc.pid, "VmRSS"),
                "hwm": vm(proc.pid, "VmHWM"), "sources": len(up)}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def install_figures(venv: Path) -> dict:
    sp = site_packages(venv)
    out = {"size": du_mib(sp), "biggest": biggest(sp), "mlflow": version_of(venv, "mlflow"),
           "skinny": version_of(venv, "mlflow-skinny"), "dists": len(list(sp.glob("*.dist-info")))}
    out["help_s"], out["help_rss"] = help_cost(venv)
    return out


def measure(name: str, venv: Path, config: Path, idle: float, serve_only: bool = False) -> dict:
    """check, once and serve against the server of `config` (serve only: check and once are skipped)."""
    exe = venv / "bin" / "mlops-kpi-exporter"
    out: dict = {"name": name, "check": (0, float("nan")), "once": (0, float("nan"))}
    for command in () if serve_only else ("check", "once"):
        started = time.monotonic()
        done = run([str(exe), command, "--config", str(config)], env=child_env(), timeout=1800)
        out[command] = (done.returncode, time.monotonic() - started)
        if done.returncode != 0:
            raise RuntimeError(f"{name}: {command} exited {done.returncode}: {done.stderr[-2000:]}")
    out.update(serve_rss(exe, config, idle, WORK / f"serve-{name}.log"))
    return out


def per_run_kib(rows: list[dict]) -> float | None:
    """The idle RSS added per run between the smallest and the largest store measured."""
    if len(rows) < 2 or rows[-1]["runs"] == rows[0]["runs"]:
        return None
    return (rows[-1]["rss_idle"] - rows[0]["rss_idle"]) * 1024 / (rows[-1]["runs"] - rows[0]["runs"])


def lean_demo(venv: Path) -> tuple[int, str]:
    with tempfile.TemporaryDirectory() as data:
        done = run([str(venv / "bin" / "mlops-kpi-exporter"), "demo", "--data-dir", data], env=child_env(), timeout=120)
    message = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
    assert done.returncode == 2 and "mlops-kpi-exporter[local]" in message, (done.returncode, done.stderr)
    return done.returncode, message


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[1_000, 10_000],
                        help="runs in the MLflow store, one store per size (default 1,000 and 10,000)")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idling after the first sync")
    parser.add_argument("--baseline-ref", help="a git commit whose runtime is the baseline (default: this tree "
                        "with the `local` extra, the full MLflow)")
    parser.add_argument("--keep", action="store_true", help="reuse the venvs of a previous run")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    parser.add_argument("--installs", nargs="+", choices=["lean", "full"], default=["lean", "full"],
                        help="which installs to measure against the stores (both are always installed and sized)")
    parser.add_argument("--serve-only", action="store_true", help="skip `check` and `once` (each is a full sync)")
    parser.add_argument("--page-size", type=int, help="mlflow.page_size of the exporters (default: the exporter's)")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)

    baseline_spec, baseline_label = f"{ROOT}[local]", "this tree with `[local]` (the full MLflow)"
    if args.baseline_ref:
        tree = WORK / "baseline-tree"
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline_ref], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
        baseline_spec, baseline_label = str(tree), f"the runtime of commit {args.baseline_ref}, `mlflow` in full"
    print("installing the venvs (a few minutes the first time)", flush=True)
    venvs = {"lean": make_venv("lean", str(ROOT), args.keep),
             "full": make_venv("full" if not args.baseline_ref else "baseline", baseline_spec, args.keep)}
    installs = {name: install_figures(venv) for name, venv in venvs.items()}
    print(installs, flush=True)

    rows: dict[str, list[dict]] = {name: [] for name in venvs}
    for runs in sorted(args.runs):
        db = WORK / f"store-{runs}.db"
        build(db, runs)
        proc, url = start_server(db)
        try:
            config = WORK / "config.yml"
            # steady polls every 5 s while idling; the default hourly resync does not come in the window
            page = f"  page_size: {args.page_size}\n" if args.page_size else ""
            config.write_text(f"mlflow:\n  tracking_uri: {url}\n  timeout: 600s\n  poll_interval: 5s\n{page}")
            for name, venv in venvs.items():
                if name not in args.installs:
                    continue
                print(f"--- {runs:,} runs, {name}", flush=True)
                rows[name].append({"runs": runs, **measure(name, venv, config, args.idle, args.serve_only)})
                print(rows[name][-1], flush=True)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    demo_code, demo_message = lean_demo(venvs["lean"])

    lean, full = installs["lean"], installs["full"]
    labels = {"lean": "runtime only (`pip install .`)", "full": "full MLflow (before; `[local]` now)"}
    lines = [
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"`mlflow server` on SQLite, one worker; baseline: {baseline_label}.",
        f"Command: `.venv/bin/python bench/bench_runtime.py --runs {' '.join(map(str, sorted(args.runs)))}"
        + (f" --baseline-ref {args.baseline_ref}" if args.baseline_ref else "")
        + (f" --installs {' '.join(args.installs)}" if args.installs != ["lean", "full"] else "")
        + (" --serve-only" if args.serve_only else "") + (f" --page-size {args.page_size}" if args.page_size else "") + "`",
        "",
        "| install | MLflow | site-packages | packages | `--help`: time (peak RSS) |",
        "|---|---|---:|---:|---:|",
    ]
    for name, r in installs.items():
        mlflow = f"mlflow {r['mlflow']}" if r["mlflow"] != "-" else f"mlflow-skinny {r['skinny']}"
        lines.append(f"| {labels[name]} | {mlflow} | {r['size']:.0f} MiB | {r['dists']} "
                     f"| {r['help_s']:.1f} s ({r['help_rss']:.0f} MiB) |")
    lines += [
        "",
        "| runs | install | `check` | `once` (a full sync) | `serve` ready (first full sync done) | RSS at ready "
        f"| RSS after {args.idle:.0f} s idle | peak RSS |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i in range(len(args.runs)):
        for name in venvs:
            if i >= len(rows[name]):
                continue
            r = rows[name][i]
            lines.append(f"| {r['runs']:,} | {labels[name]} | {r['check'][1]:.1f} s | {r['once'][1]:.1f} s "
                         f"| {r['ready_s']:.1f} s | {r['rss_ready']:.0f} MiB | {r['rss_idle']:.0f} MiB | {r['hwm']:.0f} MiB |")
    largest = rows["lean"][-1]["runs"]
    slope = per_run_kib(rows["lean"])
    kib = slope if slope is not None and slope > 0 else LEDGER_KIB_PER_RUN
    source = (f"{kib:.2f} KiB a run, measured here between {rows['lean'][0]['runs']:,} and {largest:,} runs"
              if kib is slope else f"{kib} KiB a run, the ledger's cost in bench_mlflow")
    estimate = lambda name: rows[name][-1]["rss_idle"] + (100_000 - largest) * kib / 1024  # noqa: E731
    against = f" against {rows['full'][-1]['rss_idle']:.0f} MiB full" if rows["full"] else ""
    lines += [
        "",
        f"- Installed runtime: {lean['size']:.0f} MiB against {full['size']:.0f} MiB, "
        f"{lean['size'] / full['size']:.2f} of it (goal: under a third).",
        f"- Idle RSS after the first full sync of {largest:,} runs: {rows['lean'][-1]['rss_idle']:.0f} MiB{against}"
        + (" (goal at 100,000 runs: <= 150 MiB)." if largest == 100_000 else ".") + (
            f" Extrapolated to 100,000 runs at {source}: about {estimate('lean'):.0f} MiB lean"
            f" (an estimate, not a measurement; goal: <= 150 MiB)." if largest < 100_000 else ""),
        f"- Largest in site-packages, lean: {', '.join(f'{n} {s:.0f}' for n, s in lean['biggest'])} MiB; "
        f"full: {', '.join(f'{n} {s:.0f}' for n, s in full['biggest'])} MiB.",
        f"- `demo` with the runtime only: exit code {demo_code}, `{demo_message}`",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("bench_runtime", text)


if __name__ == "__main__":
    main()
