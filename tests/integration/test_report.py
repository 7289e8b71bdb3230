"""`report`: the period's figures from MLflow with the exporter's own cost model, as HTML, JSON, CSV."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import time

import pytest
import yaml

from conftest import HOUR_MS, add_run, render, samples, connected
from mlops_kpi_exporter.config import config_from_dict
from mlops_kpi_exporter.sources.mlflow_runs import MlflowSource
from mlops_kpi_exporter.report import Period, write_report
from test_cli import run_cli


@pytest.fixture
def store(mlflow_server, prefix):
    client = mlflow_server.client()
    now = int(time.time() * 1000)
    train = client.create_experiment(f"{prefix}-train")
    tune = client.create_experiment(f"{prefix}-tune")
    add_run(client, train, now - 50 * HOUR_MS, now - 40 * HOUR_MS, tags={"instance_type": "p3.2xlarge", "team": "a"})
    add_run(client, train, now - 5 * HOUR_MS, now - 3 * HOUR_MS, "FAILED", tags={"instance_type": "m5.large"})
    add_run(client, tune, now - 2 * HOUR_MS, None, tags={"instance_type": "g4dn.xlarge", "team": "b"})
    config = {"mlflow": {"tracking_uri": mlflow_server.url, "experiments": [f"{prefix}-*"], "ui_url": "http://mlflow.example"},
              "allocation": {"tags": ["team"]}, "budgets": [{"name": "all", "experiments": ["*"], "monthly": 100}],
              "fixed_costs": [{"category": "personnel", "monthly": 3000}]}
    return config_from_dict(config), now


def report(config, period, fmt, now):
    out = io.StringIO()
    write_report(config, connected(config)[1], period, fmt, out, now)
    return out.getvalue()


def test_report_totals_equal_the_exporters_figures(store):
    config, now = store
    everything = Period(now - 100 * 24 * HOUR_MS, now)
    data = json.loads(report(config, everything, "json", now))
    exporter = samples(render(MlflowSource(*connected(config), clock=lambda: now / 1000).poll()[0]))
    total = sum(v for (name, _), v in exporter.items() if name == "mlops_experiment_cost")
    assert data["total_compute"] == pytest.approx(total, abs=1e-6)
    assert data["total_compute"] == pytest.approx(3.06 * 10 + 0.096 * 2 + 0.526 * 2, abs=1e-6)
    assert data["by_tag"]["team"] == pytest.approx({"a": 30.6, "b": 1.052, "untagged": 0.192}, abs=1e-6)
    assert data["runs"] == 3 and data["top_runs"][0]["url"].startswith("http://mlflow.example/#/experiments/")


def test_a_run_spanning_the_period_start_counts_its_hours_inside(store):
    config, now = store
    last_45h = Period(now - 45 * HOUR_MS, now)  # the 10 h p3 run started 50 h ago: 5 of its hours are inside
    data = json.loads(report(config, last_45h, "json", now))
    assert data["total_compute"] == pytest.approx(3.06 * 5 + 0.096 * 2 + 0.526 * 2, abs=1e-6)
    assert data["previous_period_compute"] == pytest.approx(3.06 * 5, abs=1e-6)


def test_html_json_and_csv_agree(store):
    config, now = store
    period = Period(now - 30 * 24 * HOUR_MS, now)
    data = json.loads(report(config, period, "json", now))
    page = report(config, period, "html", now)
    assert f"${data['total_compute']:,.2f}" in page
    assert page.count("<svg") >= 6  # cost by experiment, status, tag, run time, start hour, estimators
    assert not re.search(r"""(src|href)=["']?https?://(?!mlflow[.]example)""", page)  # nothing fetched from a network
    assert "<script" not in page and "<link" not in page
    rows = list(csv.DictReader(io.StringIO(report(config, period, "csv", now))))
    assert len(rows) == 3 and sum(float(r["cost"]) for r in rows) == pytest.approx(data["total_compute"], abs=1e-6)


def test_an_empty_period_says_so(store):
    config, now = store
    page = report(config, Period(now - 400 * 24 * HOUR_MS, now - 399 * 24 * HOUR_MS), "html", now)
    assert "No runs in this period" in page and "<svg" not in page


def test_cli_and_a_headless_browser_open_the_page(store, tmp_path, mlflow_server, prefix):
    config, _ = store
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump({"mlflow": {"tracking_uri": mlflow_server.url, "experiments": [f"{prefix}-*"]},
                                    "allocation": {"tags": ["team"]}}))
    proc = run_cli("report", "--config", str(path), "--since", "30d", "--out", str(tmp_path / "report.html"))
    assert proc.returncode == 0, proc.stderr
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed (Debian package 'chromium'; .ci/run installs it)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, "--window-size=1200,1600", f"--screenshot={shot}", f"file://{tmp_path / 'report.html'}"],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 20_000
    dom = subprocess.run([chromium, *flags, "--dump-dom", f"file://{tmp_path / 'report.html'}"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert dom.count("<svg") >= 6 and "What to look at" in dom


def test_cli_errors(tmp_path, store):
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump({"mlflow": {"tracking_uri": "http://127.0.0.1:9", "timeout": "1s"}}))
    proc = run_cli("report", "--config", str(path), "--from", "2026-01-01", "--out", str(tmp_path / "r.html"))
    assert proc.returncode == 2 and "--from and --to go together" in proc.stderr
    proc = run_cli("report", "--config", str(path), "--out", str(tmp_path / "r.html"))
    assert proc.returncode == 1 and "cannot make the report" in proc.stderr


def test_the_bill_stands_beside_the_estimate_for_the_months_of_the_period(mlflow_server, prefix, tmp_path):
    from datetime import datetime, timezone

    from focus_rows import row, write_csv

    now = int(datetime(2026, 11, 20, 12, tzinfo=timezone.utc).timestamp() * 1000)
    nov10, nov15 = now - 10 * 24 * HOUR_MS, now - 5 * 24 * HOUR_MS
    client = mlflow_server.client()
    exp = client.create_experiment(f"{prefix}-train")
    add_run(client, exp, nov10, nov10 + 10 * HOUR_MS, tags={"instance_type": "p3.2xlarge", "team": "a"})  # 30.60
    add_run(client, exp, nov15, nov15 + 2 * HOUR_MS, tags={"instance_type": "g4dn.xlarge", "team": "b"})  # 1.052
    add_run(client, exp, now - 40 * 24 * HOUR_MS, now - 40 * 24 * HOUR_MS + HOUR_MS,
            tags={"instance_type": "m5.large", "team": "a"})  # October: outside the period and the month
    nov = ("2026-11-10T00:00:00Z", "2026-11-11T00:00:00Z")
    write_csv(tmp_path / "bill" / "nov.csv", [
        row("20", "18", "31", *nov, tags={"user:team": "a"}),
        row("1.5", "1.5", "1.6", *nov, tags={"team": "b"}),
        row("3", "3", "3", *nov, service="Amazon S3", category="Storage"),
        row("0.5", "0.5", "0.5", "2026-10-09T00:00:00Z", "2026-10-10T00:00:00Z", tags={"team": "a"}),
    ])
    config = config_from_dict({
        "mlflow": {"tracking_uri": mlflow_server.url, "experiments": [f"{prefix}-*"]},
        "allocation": {"tags": ["team"], "tag_aliases": {"team": ["team", "user:team"]}},
        "billing": {"sources": [{"name": "aws", "focus": str(tmp_path / "bill")},
                                {"name": "broken", "focus": str(tmp_path / "nothing-here.csv")}]}})
    (tmp_path / "nothing-here.csv").write_text("not,a,bill\n1,2,3\n")
    period = Period(int(datetime(2026, 11, 1, tzinfo=timezone.utc).timestamp() * 1000), now)
    data = json.loads(report(config, period, "json", now))
    bill = data["cloud_bill"]
    assert bill["months"] == ["2026-11"]
    assert bill["totals"] == [{"bill": "aws", "month": "2026-11", "provider": "AWS", "billed": 24.5, "effective": 22.5,
                               "list": 35.6, "compute_billed": 21.5, "compute_effective": 19.5, "compute_list": 32.6}]
    assert bill["estimate"] == {"2026-11": pytest.approx(30.6 + 1.052)}
    by_value = {r["value"]: r for r in bill["by_tag"]}
    assert by_value["a"]["estimate"] == pytest.approx(30.6) and by_value["a"]["bill_compute"] == 20.0
    assert by_value["a"]["bill_over_estimate"] == pytest.approx(20 / 30.6, abs=1e-4)
    assert by_value["b"]["bill_compute"] == 1.5 and "untagged" not in by_value  # the untagged 3 is storage
    assert "no ServiceName column" in bill["errors"]["broken"] or "not a FOCUS export" in bill["errors"]["broken"]
    assert any(s.startswith("The cloud bill for 2026-11 is $24.50 ($21.50 of it compute") for s in data["what_to_look_at"])
    page = report(config, period, "html", now)
    assert "The cloud bill beside the estimate" in page and "team=a" in page and "0.65x" in page
    assert "The bill broken could not be read" in page
