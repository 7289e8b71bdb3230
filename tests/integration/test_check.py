"""`check` against a real MLflow server: besides reaching every source, it warns about the config's
entries that match nothing (they would show nothing, silently): a budget whose globs match no watched
experiment, a KPI on an experiment MLflow does not hold, a run join whose tag no bill row carries."""

from __future__ import annotations

import time

import yaml

from conftest import HOUR_MS, add_run
from focus_rows import row, write_csv
from test_cli import run_cli


def test_check_warns_about_entries_that_match_nothing(tmp_path, mlflow_server, prefix):
    client = mlflow_server.client()
    exp = client.create_experiment(f"{prefix}-train")
    now = int(time.time() * 1000)
    add_run(client, exp, now - 2 * HOUR_MS, now - HOUR_MS, tags={"instance_type": "p3.2xlarge"})
    write_csv(tmp_path / "bill" / "nov.csv", [
        row("5", "4", "6", "2026-11-10T10:00:00Z", "2026-11-10T11:00:00Z", tags={"mlflow_run_id": "0" * 32})])
    config = tmp_path / "config.yaml"
    data = {
        "mlflow": {"tracking_uri": mlflow_server.url, "experiments": [f"{prefix}-*"]},
        "budgets": [{"name": "mine", "experiments": f"{prefix}-train", "monthly": 10},
                    {"name": "typo", "experiments": f"{prefix}-trian*", "monthly": 10}],
        "kpis": [{"name": "auc", "metric": "auc", "experiment": f"{prefix}-gone"}],
        "billing": {"sources": [{"name": "aws", "focus": str(tmp_path / "bill")}],
                    "run_join": [{"bill_tag": "mlflow_run_id", "run": "run_id"},
                                 {"bill_tag": "ClusterId", "run_tag": "mlflow.databricks.cluster.id"}]},
    }
    config.write_text(yaml.safe_dump(data))
    proc = run_cli("check", "--config", str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr  # warnings, not failures
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        f"warning: budgets[typo]: no watched experiment matches {prefix}-trian*: its compute is 0 "
        "(mlflow.experiments decides what is watched)",
        "warning: kpis[auc]: MLflow has no experiment of that name: the KPI stays missing",
        "warning: billing.run_join[1]: no row of the bills (aws) carries the tag ClusterId: nothing is joined by it",
    ]
    # a config whose every entry matches something: no warning
    data["budgets"], data["kpis"] = data["budgets"][:1], []
    data["billing"]["run_join"] = data["billing"]["run_join"][:1]
    config.write_text(yaml.safe_dump(data))
    proc = run_cli("check", "--config", str(config))
    assert proc.returncode == 0 and "warning:" not in proc.stdout, proc.stdout
