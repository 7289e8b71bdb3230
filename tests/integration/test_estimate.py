"""`estimate`: the chapter's back-of-the-envelope calculation, from the shipped catalog."""

from __future__ import annotations

import json

import yaml

from test_cli import run_cli


def test_the_chapters_example_comes_out_at_32_90():
    proc = run_cli("estimate", "--instance", "p3.2xlarge", "--hours", "10", "--storage-gb", "100", "--months", "1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("compute") and lines[0].endswith("$30.60")
    assert lines[1].startswith("storage") and lines[1].endswith("$2.30")
    assert lines[2].startswith("total") and lines[2].endswith("$32.90")


def test_json_output():
    proc = run_cli("estimate", "--instance", "p3.2xlarge", "--hours", "10", "--storage-gb", "100", "--json")
    data = json.loads(proc.stdout)
    assert (data["compute"], data["storage"], data["total"], data["currency"]) == (30.6, 2.3, 32.9, "USD")
    assert data["price_source"] == "catalog"


def test_machines_count_and_config_prices(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"mlflow": {"tracking_uri": "sqlite:///x.db"},
                                    "pricing": {"currency": "EUR", "use_catalog": False, "instances": {"gpu-box": 2.5},
                                                "storage_gb_month": 0.02}}))
    proc = run_cli("estimate", "--config", str(path), "--instance", "gpu-box", "--hours", "4", "--count", "3", "--json")
    data = json.loads(proc.stdout)
    assert (data["compute"], data["storage"], data["currency"], data["price_source"]) == (30.0, 0.0, "EUR", "config")


def test_bad_input_is_a_clear_error_with_exit_code_2():
    proc = run_cli("estimate", "--instance", "p3.2xlarg", "--hours", "10")
    assert proc.returncode == 2 and "unknown instance type 'p3.2xlarg'; did you mean p3.2xlarge" in proc.stderr
    proc = run_cli("estimate", "--instance", "p3.2xlarge", "--hours", "-1")
    assert proc.returncode == 2 and "hours must be a non-negative number" in proc.stderr
    proc = run_cli("estimate", "--instance", "p3.2xlarge", "--hours", "ten")
    assert proc.returncode == 2 and "invalid float value" in proc.stderr
    proc = run_cli("estimate", "--instance", "p3.2xlarge", "--hours", "1", "--count", "0")
    assert proc.returncode == 2 and "count must be at least 1" in proc.stderr
    assert proc.stdout == ""
