"""The alerting rules and routes: generated, linted, unit-tested, and proven end to end with real
Prometheus, Alertmanager, exporter and MLflow processes on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from conftest import EXPORTER, HOUR_MS, add_run, child_env, free_port, wait_http
from upstream import Reply, Upstream

ROOT = Path(__file__).parents[2]
ALERTS = ROOT / "alerts"
GENERATE = [sys.executable, str(ALERTS / "generate.py")]
UNIT_TESTS = [ALERTS / "rules_test.yml", ALERTS / "rules_test_weekly.yml"]
RUNBOOKS = ROOT / "exporter" / "mlops_kpi_exporter" / "data" / "runbooks.md"


def rules() -> list[dict]:
    groups = yaml.safe_load((ALERTS / "rules.yml").read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (Debian packages prometheus, prometheus-alertmanager; .ci/run installs them)")
    return path


def test_committed_rules_are_what_the_generator_writes(tmp_path):
    out = tmp_path / "rules.yml"
    subprocess.run([*GENERATE, "--out", str(out)], check=True)
    assert out.read_text() == (ALERTS / "rules.yml").read_text(), "run: python alerts/generate.py"


def test_thresholds_are_overridden_without_touching_the_rules(tmp_path):
    values = yaml.safe_load((ALERTS / "src" / "thresholds.yml").read_text())
    values |= {"cost_spike_factor": 5, "cost_spike_window": "30m", "endpoint_slo": 0.99}
    (tmp_path / "mine.yml").write_text(yaml.safe_dump(values))
    subprocess.run([*GENERATE, "--values", str(tmp_path / "mine.yml"), "--out", str(tmp_path / "r.yml")], check=True)
    text = (tmp_path / "r.yml").read_text()
    assert "mlops:experiment_spend:hourly > 5 * mlops:experiment_spend:hourly_baseline" in text
    assert "delta(mlops:experiment_cost:sum[30m]), 0) * 3600 / 1800" in text
    assert "mlops:endpoint_error_ratio:rate1h > 0.144" in text  # 14.4 x (1 - 0.99)
    del values["cost_spike_floor_per_hour"]
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(values))
    proc = subprocess.run([*GENERATE, "--values", str(tmp_path / "bad.yml"), "--out", str(tmp_path / "x.yml")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "cost_spike_floor_per_hour" in proc.stderr


def test_promtool_checks_and_unit_tests():
    promtool = tool("promtool")
    check = subprocess.run([promtool, "check", "rules", "--lint=all", "--lint-fatal", str(ALERTS / "rules.yml")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([promtool, "test", "rules", *map(str, UNIT_TESTS)], capture_output=True, text=True)
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_every_alert_fires_and_stays_silent_in_the_unit_tests():
    tests = [case for path in UNIT_TESTS for case in yaml.safe_load(path.read_text())["tests"]]
    fired, silent = set(), set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else silent).add(check["alertname"])
    names = {r["alert"] for r in rules()}
    assert names - fired == set(), "alerts never shown firing"
    assert names - silent == set(), "alerts never shown silent"
    assert names >= {"MLCostSpike", "MLBudgetForecastExceeded", "MLBudgetExceeded", "MLRunawayRun", "MLFailedRunWaste",
                     "MLEndpointDown", "MLEndpointHighErrorRate", "MLEndpointLatencyHigh", "MLEndpointUnderutilized",
                     "MLKPIBelowTarget", "MLExporterDown", "MLflowUnreachable", "MLExporterPollStale"}


def test_every_alert_is_routable_and_has_a_runbook():
    runbooks = "\n" + RUNBOOKS.read_text()
    exporter_url = yaml.safe_load((ALERTS.parent / "deploy" / "monitoring.yml").read_text())["exporter_url"]
    for rule in rules():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url", "dashboard_url"}, rule["alert"]
        page, anchor = annotations["runbook_url"].split("#")
        assert page == f"{exporter_url}/runbooks"  # served by the exporter (tests/test_links.py follows them)
        assert anchor == rule["alert"].lower()
        assert f"\n#### {rule['alert']}\n" in runbooks, f"data/runbooks.md has no runbook for {rule['alert']}"


def test_readme_runbooks_are_the_served_runbooks():
    """The exporter serves data/runbooks.md; the README shows the same text for readers on GitHub."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("\n### Runbooks\n") + len("\n### Runbooks\n")
    section = readme[start:readme.index("\n## ", start)]

    def lines(text: str) -> list[str]:
        return [line.rstrip() for line in text.strip().splitlines()]

    assert lines(section) == lines(RUNBOOKS.read_text()), \
        "README's '### Runbooks' section differs from exporter/mlops_kpi_exporter/data/runbooks.md: copy one to the other"


def test_alertmanager_config_and_routes():
    amtool = tool("amtool")
    config = str(ALERTS / "alertmanager.yml")
    check = subprocess.run([amtool, "check-config", config], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    for labels, receiver in ((["severity=critical", "alertname=MLCostSpike"], "pager"),
                             (["severity=warning", "alertname=MLBudgetExceeded"], "tickets"),
                             (["severity=info", "alertname=MLBudgetExceeded"], "tickets"),
                             (["alertname=SomethingElse"], "tickets")):
        route = subprocess.run([amtool, "config", "routes", "test", "--config.file", config,
                                f"--verify.receivers={receiver}", *labels], capture_output=True, text=True)
        assert route.returncode == 0, route.stdout + route.stderr
    text = Path(config).read_text()
    assert "_file:" in text and "routing_key:" not in text and "api_url:" not in text  # secrets only from files


def test_cost_spike_reaches_alertmanager_and_a_webhook(tmp_path, mlflow_server, prefix, processes):
    """Real MLflow -> exporter -> Prometheus (shipped rules, short windows set here) -> Alertmanager
    (shipped routes and inhibitions, receivers pointed at this test) -> webhook."""
    client = mlflow_server.client()
    experiment = f"{prefix}-spiky"
    exp_id = client.create_experiment(experiment)
    now = int(time.time() * 1000)
    add_run(client, exp_id, now - 2 * HOUR_MS, now - HOUR_MS, tags={"instance_type": "m5.large"})

    # exporter
    exporter_port = free_port()
    (tmp_path / "exporter.yml").write_text(yaml.safe_dump({
        "mlflow": {"tracking_uri": mlflow_server.url, "experiments": [f"{prefix}-*"], "poll_interval": "1s",
                   "timeout": "5s"},
        "registry": {"enabled": False}}))
    processes.append(subprocess.Popen([EXPORTER, "serve", "--config", str(tmp_path / "exporter.yml"), "--listen",
                                       f"127.0.0.1:{exporter_port}"], env=child_env(),
                                      stdout=subprocess.DEVNULL, stderr=open(tmp_path / "exporter.log", "wb")))

    # the shipped rules, with windows a test can wait for
    values = yaml.safe_load((ALERTS / "src" / "thresholds.yml").read_text())
    values |= {"cost_spike_window": "15s", "cost_spike_baseline_window": "20s", "cost_spike_for": "0s",
               "cost_spike_floor_per_hour": 1}
    (tmp_path / "values.yml").write_text(yaml.safe_dump(values))
    subprocess.run([*GENERATE, "--values", str(tmp_path / "values.yml"), "--out", str(tmp_path / "rules.yml")], check=True)

    # a webhook standing in for the pager and the chat
    webhook = Upstream()
    webhook.replies["/pager"] = Reply(200, b"ok")
    webhook.replies["/tickets"] = Reply(200, b"ok")
    am = yaml.safe_load((ALERTS / "alertmanager.yml").read_text())
    am["route"] |= {"group_wait": "1s", "group_interval": "1s"}
    am["receivers"] = [{"name": "pager", "webhook_configs": [{"url": f"{webhook.url}/pager"}]},
                       {"name": "tickets", "webhook_configs": [{"url": f"{webhook.url}/tickets"}]}]
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(am))
    am_port = free_port()
    processes.append(subprocess.Popen(
        [tool("prometheus-alertmanager"), f"--config.file={tmp_path / 'alertmanager.yml'}",
         f"--storage.path={tmp_path / 'am-data'}", f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "alertmanager.log", "wb")))

    prom_port = free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [{"job_name": "mlops-kpi-exporter",
                            "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}]}))
    processes.append(subprocess.Popen(
        [tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'prom-data'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb")))
    prom = f"http://127.0.0.1:{prom_port}"
    try:
        wait_http(f"{prom}/-/ready", timeout=60)
        wait_http(f"http://127.0.0.1:{am_port}/-/ready", timeout=60)

        def query(q: str) -> list:
            return requests.get(f"{prom}/api/v1/query", params={"query": q}, timeout=5).json()["data"]["result"]

        # a quiet baseline: the cost series exists, and no alert for it
        deadline = time.monotonic() + 60
        while not query(f'mlops:experiment_cost:sum{{experiment="{experiment}"}} offset 20s'):
            assert time.monotonic() < deadline, "Prometheus never recorded the experiment's cost"
            time.sleep(1)
        assert not query(f'ALERTS{{alertname="MLCostSpike",experiment="{experiment}"}}')

        # the spike: a 10-hour run on a p4d.24xlarge lands ($327.73)
        now = int(time.time() * 1000)
        add_run(client, exp_id, now - 10 * HOUR_MS, now, tags={"instance_type": "p4d.24xlarge"})
        deadline = time.monotonic() + 90
        delivered = []
        while not delivered:
            assert time.monotonic() < deadline, "no MLCostSpike reached the webhook"
            for method, path, body in list(webhook.requests):
                payload = json.loads(body)
                for alert in payload["alerts"]:
                    if alert["labels"].get("alertname") == "MLCostSpike" and alert["status"] == "firing":
                        delivered.append((path, payload, alert))
            time.sleep(1)
    finally:
        webhook.close()
    path, payload, alert = delivered[0]
    assert path == "/pager" and payload["receiver"] == "pager"  # severity critical routes to the pager
    assert alert["labels"] == {"alertname": "MLCostSpike", "experiment": experiment, "job": "mlops-kpi-exporter",
                               "severity": "critical"}
    assert alert["annotations"]["summary"] == "An experiment is spending far above its usual rate."
    assert alert["annotations"]["description"].startswith(f"Experiment {experiment} spent USD ")
    assert alert["annotations"]["runbook_url"].endswith("/runbooks#mlcostspike")
    assert alert["annotations"]["dashboard_url"].endswith(f"/d/mlops-costs?var-experiment={experiment}")


def test_extra_selectors_reach_every_rule_and_keep_promtool_clean(tmp_path):
    """deploy/monitoring.yml `selectors` (a mixin's _config): every selector of the exporter's series gets
    them, every aggregation keeps their labels, and the rules stay valid."""
    import promql_parser

    from monitoring_lint import selectors

    ops = yaml.safe_load((ROOT / "deploy" / "monitoring.yml").read_text()) | {"selectors": {"cluster": "prod"}}
    (tmp_path / "ops.yml").write_text(yaml.safe_dump(ops))
    subprocess.run([*GENERATE, "--ops", str(tmp_path / "ops.yml"), "--out", str(tmp_path / "rules.yml")], check=True)
    check = subprocess.run([tool("promtool"), "check", "rules", "--lint=all", "--lint-fatal", str(tmp_path / "rules.yml")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    for group in yaml.safe_load((tmp_path / "rules.yml").read_text())["groups"]:
        for rule in group["rules"]:
            for selector, _ in selectors(promql_parser.parse(rule["expr"])):
                if selector.name.startswith("mlops") or selector.name == "up":
                    assert ("cluster", "prod") in {(m.name, m.value) for m in selector.matchers.matchers}, rule["expr"]
            if " by (" in rule["expr"]:
                assert "by (job, cluster" in rule["expr"], rule["expr"]
