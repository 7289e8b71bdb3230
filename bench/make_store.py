"""Build an MLflow SQLite tracking store with N runs in seconds, for benchmarks.

MLflow creates the schema itself (so it is exactly the installed version's), then the runs, their
tags and params are bulk-inserted straight into MLflow's tables in one transaction: logging 100,000
runs through the client would take hours, this takes seconds. `--verify` reads the store back with
MlflowClient and checks MlflowSource's total cost against one computed here from the inserted rows.

    .venv/bin/python bench/make_store.py --runs 10000 --out bench/.work/store-10k.db
    .venv/bin/python bench/make_store.py --runs 100 --out bench/.work/store-100.db --verify
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

CATALOG = Path(__file__).resolve().parents[1] / "exporter/mlops_kpi_exporter/data/pricing_catalog.yaml"
# Machine names from the shipped catalog: CPU and GPU, the three clouds.
MACHINES = ["m5.xlarge", "c5.2xlarge", "r5.xlarge", "g4dn.xlarge", "g5.2xlarge", "p3.2xlarge",
            "n1-standard-8", "e2-standard-4", "Standard_D4s_v3", "Standard_NC6s_v3"]
ESTIMATORS = ["LogisticRegression", "RandomForestClassifier", "XGBClassifier", "LGBMClassifier", "MLPClassifier"]
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
QUIET_MS = 15 * 60_000  # runs end at least this long before `now`: outside the exporter's 5 min watermark overlap


@dataclass(frozen=True)
class StoreRun:
    """One inserted run, as the benchmark expects MLflow to return it."""

    run_id: str
    experiment_id: str
    name: str
    status: str
    start_ms: int
    end_ms: int | None
    machine: str
    estimator: str
    max_depth: str


def catalog_prices() -> dict[str, float]:
    """Hourly prices read from the catalog file directly, not through the exporter's Pricer."""
    raw = yaml.safe_load(CATALOG.read_text())
    return {name: float(price) for machines in raw["providers"].values() for name, price in machines.items()}


def make_runs(n: int, experiment_ids: list[str], now_ms: int, running: int, seed: int) -> list[StoreRun]:
    rng = random.Random(seed)  # same seed, same store (run ids included)
    runs = []
    for i in range(n):
        if i < running:  # RUNNING runs started within the last 6 hours and have no end time
            status, start, end = "RUNNING", now_ms - rng.randint(60_000, 6 * HOUR_MS), None
        else:
            status = rng.choices(["FINISHED", "FAILED", "KILLED"], weights=[85, 10, 5])[0]
            start = now_ms - rng.randint(HOUR_MS, 90 * DAY_MS)
            end = min(start + rng.randint(60_000, 8 * HOUR_MS), now_ms - QUIET_MS)
        runs.append(StoreRun(
            run_id=f"{rng.getrandbits(128):032x}",
            experiment_id=experiment_ids[i % len(experiment_ids)],
            name=f"run-{i:06d}",
            status=status,
            start_ms=start,
            end_ms=end,
            machine=rng.choice(MACHINES),
            estimator=rng.choice(ESTIMATORS),
            max_depth=str(rng.randint(2, 12)),
        ))
    return runs


def build(path: Path, n: int, experiments: int = 20, running: int = 20, seed: int = 1,
          now_ms: int | None = None) -> list[StoreRun]:
    """Write a fresh store at `path` and return the runs inserted."""
    from mlflow.tracking import MlflowClient  # slow import: only when a store is built

    prices = catalog_prices()
    assert all(m in prices for m in MACHINES), "MACHINES must all be catalog names"
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    artifacts = path.parent / "artifacts"  # never ./mlruns in whatever directory we run from
    # The client creates the schema (all migrations) on first use; experiments go through it too.
    client = MlflowClient(tracking_uri=f"sqlite:///{path}")
    experiment_ids = [
        client.create_experiment(f"bench-{i:02d}", artifact_location=(artifacts / f"bench-{i:02d}").as_uri())
        for i in range(experiments)
    ]
    now_ms = now_ms or int(time.time() * 1000)
    runs = make_runs(n, experiment_ids, now_ms, running, seed)

    run_rows, tag_rows, param_rows = [], [], []
    for r in runs:
        run_rows.append((r.run_id, r.name, "LOCAL", "bench", "", "bench", r.status, r.start_ms, r.end_ms, "",
                         "active", f"{(artifacts / r.experiment_id / r.run_id).as_uri()}/artifacts",
                         int(r.experiment_id)))
        tag_rows += [("mlflow.runName", r.name, r.run_id), ("mlflow.user", "bench", r.run_id),
                     ("instance_type", r.machine, r.run_id), ("estimator", r.estimator, r.run_id)]
        param_rows += [("max_depth", r.max_depth, r.run_id), ("learning_rate", "0.1", r.run_id)]
    db = sqlite3.connect(path)
    try:
        with db:  # one transaction: one fsync instead of one per row
            db.executemany(
                "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, "
                "start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", run_rows)
            db.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?,?,?)", tag_rows)
            db.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?,?,?)", param_rows)
    finally:
        db.close()
    return runs


def expected_cost(runs: list[StoreRun], now_ms: int, completed_only: bool = False) -> float:
    """Total cost of the runs at `now_ms` (RUNNING runs accrue up to it), from catalog prices."""
    prices = catalog_prices()
    total = 0.0
    for r in runs:
        if r.end_ms is None and completed_only:
            continue
        end = now_ms if r.end_ms is None else r.end_ms
        total += prices[r.machine] * (end - r.start_ms) / HOUR_MS
    return total


def verify_search(uri: str, runs: list[StoreRun]) -> None:
    """search_runs, paged like any client, returns exactly these runs with these fields."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    want = {r.run_id: r for r in runs}
    seen: set[str] = set()
    token = None
    while True:
        page = client.search_runs(exp_ids, run_view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        for run in page:
            info, data = run.info, run.data
            r = want[info.run_id]
            got = (info.experiment_id, info.run_name, info.status, info.start_time, info.end_time,
                   info.lifecycle_stage, data.tags.get("instance_type"), data.tags.get("estimator"),
                   data.params.get("max_depth"))
            assert got == (r.experiment_id, r.name, r.status, r.start_ms, r.end_ms, "active", r.machine,
                           r.estimator, r.max_depth), (got, r)
            assert info.run_id not in seen, f"run {info.run_id} returned twice"
            seen.add(info.run_id)
        token = page.token
        if not token:
            break
    assert len(seen) == len(runs), f"search_runs returned {len(seen)} runs, expected {len(runs)}"


def exported_totals(families) -> dict[str, float]:
    """Sums over the exporter's per-(experiment, status) families: cost, run count, completed cost."""
    out = {"cost": 0.0, "completed_cost": 0.0, "runs": 0.0}
    for family in families:
        for s in family.samples:
            if family.name == "mlops_experiment_cost":
                out["cost"] += s.value
                out["completed_cost"] += s.value if s.labels["status"] != "RUNNING" else 0.0
            elif family.name == "mlops_runs":
                out["runs"] += s.value
    return out


def verify_cost(uri: str, runs: list[StoreRun]) -> tuple[float, float]:
    """MlflowSource's total cost, at a fixed clock, equals the one computed here from the rows."""
    from mlops_kpi_exporter.config import config_from_dict
    from mlops_kpi_exporter.mlflow_source import MlflowSource

    now_ms = int(time.time() * 1000)
    config = config_from_dict({"mlflow": {"tracking_uri": uri}, "pricing": {"currency": "USD"}})
    source = MlflowSource(config, clock=lambda: now_ms / 1000)
    families, _ = source.poll()
    got = exported_totals(families)
    want = expected_cost(runs, now_ms)
    assert got["runs"] == len(runs), got
    # The exporter rounds each run to 1e-9 of a currency unit; everything else must agree.
    assert abs(got["cost"] - want) < 1e-6 + 1e-9 * len(runs), (got["cost"], want)
    return got["cost"], want


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=Path("bench/.work/store.db"))
    parser.add_argument("--experiments", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--verify", action="store_true",
                        help="read every run back with MlflowClient and check MlflowSource's total cost (slow for big N)")
    args = parser.parse_args()
    started = time.perf_counter()
    runs = build(args.out, args.runs, experiments=args.experiments, seed=args.seed)
    statuses = {s: sum(r.status == s for r in runs) for s in ("FINISHED", "FAILED", "KILLED", "RUNNING")}
    print(f"{len(runs):,} runs in {args.experiments} experiments written to {args.out} "
          f"in {time.perf_counter() - started:.1f} s: {statuses}")
    if args.verify:
        uri = f"sqlite:///{args.out.resolve()}"
        started = time.perf_counter()
        verify_search(uri, runs)
        print(f"search_runs: {len(runs):,} runs, every field as inserted ({time.perf_counter() - started:.1f} s)")
        got, want = verify_cost(uri, runs)
        print(f"MlflowSource total cost {got:,.6f} USD = expected {want:,.6f} USD")


if __name__ == "__main__":
    main()
