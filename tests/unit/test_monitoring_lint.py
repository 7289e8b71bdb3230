"""The shipped dashboards and rules pass the checks of Grafana's dashboard-linter and `mixtool lint`
(tests/monitoring_lint.py), and each check fails on a copy broken the way it guards against."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from monitoring_lint import lint_dashboard, lint_rules

ROOT = Path(__file__).parents[2]
BOARDS = {p.stem: json.loads(p.read_text()) for p in sorted((ROOT / "dashboards" / "json").glob("*.json"))}
RULES = yaml.safe_load((ROOT / "alerts" / "rules.yml").read_text())

# Nothing lost on the way to the SDK and the new severities: every panel and alert of before is there.
PANELS = {
    "mlops-costs": ["Spend, last 24 h", "Spend, last 7 days", "Month to date", "Month-end forecast", "Budgets",
                    "Burning now", "Spend rate by experiment (per hour)", "Burn rate now (per hour)",
                    "Month to date vs budget", "Forecast vs budget", "Cost by status (failed-run waste)",
                    "Idle cost by experiment", "Utilization by experiment",
                    "Top costly runs", "Stale runs (to clean up)", "Run time per experiment (median and p90)",
                    "Runs by start hour", "Estimator distribution", "Cost by team (allocation tag)",
                    "Fixed monthly costs by category", "Total cost of ownership this month"],
    "mlops-serving": ["Up (probe)", "Hourly cost of serving", "Cost per 1,000 predictions", "Request rate",
                      "Error ratio", "Latency p50 / p95 / p99 and mean", "Probe latency p95", "Utilization",
                      "SLO burn rate (99.9 %)", "Cost per hour"],
    "mlops-kpis": ["KPIs against targets", "Target met", "KPI value vs target", "Model deployment lead time",
                   "Registered versions", "Aliases"],
    "mlops-bill": ["Bill, latest month", "Budget used", "Billed / list price", "Newest charge, age",
                   "Bill by provider and service", "Bill by team", "Compute: MLflow estimate vs bill, by team",
                   "Compute: bill over estimate, by team", "Catalog price calibration, by provider",
                   "Untagged share of the latest month", "Latest month so far",
                   "Estimate vs bill, by experiment", "Bill joined to runs (coverage)", "Costliest runs on the bill",
                   "Idle cost of shared clusters", "Billed over estimate, by machine type"],
    "mlops-genai": ["GenAI spend, last 24 h", "GenAI month to date", "Traces, last 24 h", "Cost per 1,000 traces",
                    "Unpriced tokens", "Cached share of input", "Spend by model", "Spend by experiment",
                    "Spend rate (per hour)", "Tokens per trace", "Error ratio", "Latency p50 / p95", "Spend by user",
                    "Tokens by price source", "Gateway budgets used"],
    "mlops-exporter": ["Sources up", "Poll duration", "Poll errors", "Time since last successful poll",
                       "Skipped runs by reason", "Scrape size", "Runs tracked"],
}
ALERTS = {"MLCostSpike", "MLBudgetForecastExceeded", "MLBudgetExceeded", "MLRunawayRun", "MLStaleRuns",
          "MLFailedRunWaste", "MLIdleSpend", "MLGenAISpendSpike", "MLGenAITraceErrors", "MLGenAITracesSlow",
          "MLGatewayBudgetNearLimit", "MLGatewayBudgetExhausted", "MLEndpointDown", "MLEndpointMetricsUnmatched", "MLEndpointHighErrorRate",
          "MLEndpointLatencyHigh",
          "MLEndpointUnderutilized", "MLKPIBelowTarget", "MLCloudBillOverBudget", "MLCloudUntaggedSpend", "MLCloudBillStale",
          "MLBillAttributionFell", "MLPriceCalibrationOff", "MLJoinIdleCostHigh", "MLExporterDown", "MLflowUnreachable", "MLExporterPollStale",
          "MLDerivedFigureBlocked"}


@pytest.mark.parametrize("uid", sorted(BOARDS))
def test_shipped_dashboards_pass_the_lint(uid):
    assert lint_dashboard(BOARDS[uid]) == []


def test_shipped_rules_pass_the_lint():
    assert lint_rules(RULES) == []


def test_nothing_was_lost():
    assert {uid: [p["title"] for p in board["panels"]] for uid, board in BOARDS.items()} == PANELS
    assert {r["alert"] for g in RULES["groups"] for r in g["rules"] if "alert" in r} == ALERTS


def _first_panel(board):
    return next(p for p in board["panels"] if p.get("targets"))


BROKEN_BOARDS = {
    "no datasource variable": (lambda b: b["templating"]["list"].pop(0), "no datasource variable"),
    "a panel on a fixed datasource": (lambda b: _first_panel(b).update(datasource={"uid": "mlops-prometheus"}),
                                      "does not use the datasource variable"),
    "no job variable": (lambda b: b["templating"]["list"].pop(1), "no job variable"),
    "a selector without job": (lambda b: _first_panel(b)["targets"][0].update(expr="sum(mlops_runs)"),
                               "does not filter on job"),
    "invalid PromQL": (lambda b: _first_panel(b)["targets"][0].update(expr="sum(mlops_runs{job=~\"$job\"}"),
                       "not valid PromQL"),
    "a fixed rate window": (lambda b: _first_panel(b)["targets"][0].update(
        expr='rate(mlops_endpoint_requests_total{job=~"$job"}[5m])'), "without $__rate_interval"),
    "a bare counter": (lambda b: _first_panel(b)["targets"][0].update(expr='mlops_endpoint_requests_total{job=~"$job"}'),
                       "outside rate/irate/increase"),
    "no description": (lambda b: _first_panel(b).update(description=""), "no description"),
    "no unit": (lambda b: _first_panel(b)["fieldConfig"]["defaults"].pop("unit"), "no unit"),
    "no target": (lambda b: _first_panel(b).update(targets=[]), "no target"),
    "no title": (lambda b: _first_panel(b).update(title=""), "without a title"),
    "editable": (lambda b: b.update(editable=True), "editable"),
    "no uid": (lambda b: b.pop("uid"), "no stable uid"),
    "a variable that is not label_values": (lambda b: b["templating"]["list"][1].update(query="up"),
                                            "is not label_values"),
    "a variable that never refreshes": (lambda b: b["templating"]["list"][1].update(refresh=1),
                                        "does not refresh on time-range change"),
}


@pytest.mark.parametrize("broken", sorted(BROKEN_BOARDS))
def test_each_dashboard_check_fails_on_a_broken_copy(broken):
    board = copy.deepcopy(BOARDS["mlops-costs"])
    breaks, words = BROKEN_BOARDS[broken]
    breaks(board)
    problems = lint_dashboard(board)
    assert any(words in p for p in problems), problems


def _first_alert(rules):
    return next(r for g in rules["groups"] for r in g["rules"] if "alert" in r)


BROKEN_RULES = {
    "a snake_case name": (lambda r: _first_alert(r).update(alert="ml_cost_spike"), "CamelCase"),
    "a long name": (lambda r: _first_alert(r).update(alert="ML" + "Very" * 10 + "LongAlert"), "at most 40"),
    "severity page": (lambda r: _first_alert(r)["labels"].update(severity="page"), "is not one of"),
    "a templated summary": (lambda r: _first_alert(r)["annotations"].update(summary="{{ $labels.x }} spends."),
                            "plain sentence"),
    "a plain description": (lambda r: _first_alert(r)["annotations"].update(description="Spends."), "templated"),
    "no runbook": (lambda r: _first_alert(r)["annotations"].pop("runbook_url"), "no runbook_url"),
    "a group of 21 rules": (lambda r: r["groups"][0]["rules"].extend([{"record": f"r:{i}", "expr": "1"} for i in range(21)]),
                            "more than 20"),
}


@pytest.mark.parametrize("broken", sorted(BROKEN_RULES))
def test_each_rule_check_fails_on_a_broken_copy(broken):
    rules = copy.deepcopy(RULES)
    breaks, words = BROKEN_RULES[broken]
    breaks(rules)
    assert any(words in p for p in lint_rules(rules)), lint_rules(rules)
