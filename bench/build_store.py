"""Build an MLflow SQLite tracking store with N runs in seconds, for benchmarks.

MLflow creates the schema (so it is exactly the version installed); the runs, their tags and params
are then bulk-inserted into MLflow's own tables in one transaction. The result is what a tracking
server with that much history holds, and `search_runs` returns every run.

    python bench/build_store.py --runs 10000 --out bench/.work/store-10k.db
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import time
import uuid
from pathlib import Path

MACHINES = ["m5.xlarge", "c5.2xlarge", "g4dn.xlarge", "p3.2xlarge", "n1-standard-8", "Standard_NC6s_v3"]
ESTIMATORS = ["LogisticRegression", "RandomForestClassifier", "XGBClassifier", "LGBMClassifier", "MLPClassifier"]
STATUSES = ["FINISHED"] * 16 + ["FAILED"] * 3 + ["KILLED"]
HOUR_MS = 3_600_000


def build(path: Path, runs: int, experiments: int = 20, running: int = 20, seed: int = 1) -> dict:
    """Write the store; returns the expected totals (computed here, independently of the exporter)."""
    from mlflow.tracking import MlflowClient

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    client = MlflowClient(tracking_uri=f"sqlite:///{path.resolve()}")
    exp_ids = [client.create_experiment(f"bench-{i:02d}") for i in range(experiments)]
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    run_rows, tag_rows, param_rows = [], [], []
    expected = {"runs": runs, "running": 0, "finished_hours": 0.0}
    for i in range(runs):
        run_id = uuid.uuid4().hex
        exp = exp_ids[i % experiments]
        is_running = i < running
        start = now - rng.randint(2 * HOUR_MS, 90 * 24 * HOUR_MS)
        status = "RUNNING" if is_running else rng.choice(STATUSES)
        end = None if is_running else min(start + rng.randint(60_000, 8 * HOUR_MS), now - 60_000)
        name = f"run-{i}"
        run_rows.append((run_id, name, "UNKNOWN", "", "", "bench", status, start, end, "", "active",
                         f"file:///tmp/bench-artifacts/{run_id}", int(exp)))
        machine = MACHINES[i % len(MACHINES)]
        tag_rows += [("mlflow.runName", name, run_id), ("instance_type", machine, run_id),
                     ("estimator", rng.choice(ESTIMATORS), run_id)]
        param_rows.append(("max_depth", str(rng.randint(2, 12)), run_id))
        expected["running"] += is_running
        if end is not None:
            expected["finished_hours"] += (end - start) / HOUR_MS
    db = sqlite3.connect(path)
    with db:
        db.executemany(
            "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, "
            "start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", run_rows)
        db.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?,?,?)", tag_rows)
        db.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?,?,?)", param_rows)
    db.close()
    return expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=Path("bench/.work/store.db"))
    args = parser.parse_args()
    started = time.monotonic()
    expected = build(args.out, args.runs)
    print(f"{args.runs} runs written to {args.out} in {time.monotonic() - started:.1f}s: {expected}")


if __name__ == "__main__":
    main()
