"""Writes the Grafana dashboards (dashboards/json/*.json) from the panel lists below.

    python dashboards/build.py                    # the committed dashboards (a test checks they match)
    python dashboards/build.py --ops my.yml       # your job name, datasource, links and currency

The deployment settings (job, datasource uid, exporter, Grafana and MLflow URLs, currency) come from
deploy/monitoring.yml, the same file alerts/generate.py reads.

Plain dictionaries in Grafana's dashboard JSON model (schemaVersion 39): stable uids, no ids, every
panel on the provisioned datasource by uid, `$__rate_interval` in every rate, units on every panel.
The uids are the ones alerts/src/thresholds.yml links to.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

HERE = Path(__file__).parent
OPS_FILE = HERE.parent / "deploy" / "monitoring.yml"


def use_settings(path: Path) -> dict:
    """Read the deployment settings into the module's constants (the panels below use them)."""
    global OPS, DATASOURCE, EXPORTER_URL, MLFLOW_URL, JOB
    OPS = yaml.safe_load(path.read_text())
    DATASOURCE = {"type": "prometheus", "uid": OPS["datasource_uid"]}  # dashboards/provisioning/datasources
    EXPORTER_URL = OPS["exporter_url"]  # the exporter serves the alert runbooks at /runbooks
    MLFLOW_URL = OPS["mlflow_url"]
    JOB = OPS["job"]
    return OPS


use_settings(OPS_FILE)
EXP = 'experiment=~"$experiment"'
EP = 'endpoint=~"$endpoint"'


def target(expr: str, legend: str = "", instant: bool = False, ref: str = "A") -> dict:
    return {"refId": ref, "datasource": DATASOURCE, "expr": expr, "legendFormat": legend or "__auto",
            "instant": instant, "range": not instant}


def panel(kind: str, title: str, targets: list[dict], unit: str, description: str = "", w: int = 12, h: int = 8,
          options: dict | None = None, links: list[dict] | None = None, extra: dict | None = None) -> dict:
    p = {
        "type": kind, "title": title, "description": description, "datasource": DATASOURCE, "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit, "noValue": "no data yet", "links": links or []}, "overrides": []},
        "options": options or {}, "gridPos": {"w": w, "h": h},
    }
    p.update(extra or {})
    return p


def stat(title: str, expr: str, unit: str, description: str = "", w: int = 4, thresholds: list | None = None) -> dict:
    p = panel("stat", title, [target(expr, instant=True)], unit, description, w=w, h=4,
              options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value", "graphMode": "none"})
    if thresholds:
        p["fieldConfig"]["defaults"]["thresholds"] = {"mode": "absolute", "steps": thresholds}
    return p


def series(title: str, targets: list[dict], unit: str, description: str = "", w: int = 12) -> dict:
    return panel("timeseries", title, targets, unit, description, w=w,
                 options={"legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull"]}})


def bars(title: str, expr: str, legend: str, unit: str, description: str = "", w: int = 12) -> dict:
    return panel("barchart", title, [target(expr, legend, instant=True)], unit, description, w=w,
                 options={"xTickLabelRotation": -45, "legend": {"showLegend": False}},
                 extra={"transformations": [{"id": "reduce", "options": {"reducers": ["lastNotNull"]}}]})


def table(title: str, expr: str, unit: str, description: str = "", links: list[dict] | None = None, w: int = 24) -> dict:
    p = panel("table", title, [target(expr, instant=True)], unit, description, w=w, links=links)
    p["transformations"] = [{"id": "labelsToFields", "options": {}},
                            {"id": "organize", "options": {"excludeByName": {"Time": True, "job": True, "instance": True,
                                                                            "__name__": True}}}]
    return p


def layout(panels: list[dict]) -> list[dict]:
    """Ids and positions, left to right, top to bottom."""
    x = y = row_h = 0
    for number, p in enumerate(panels, start=1):
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        p["id"] = number
        p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        x += w
        row_h = max(row_h, h)
    return panels


def query_var(name: str, metric: str, label: str) -> dict:
    return {"name": name, "label": label.capitalize(), "type": "query", "datasource": DATASOURCE,
            "query": {"query": f"label_values({metric}, {label})", "refId": f"{name}-values"},
            "definition": f"label_values({metric}, {label})", "refresh": 2, "multi": True, "includeAll": True,
            "allValue": ".*", "current": {"text": "All", "value": "$__all"}, "sort": 1}


def dashboard(uid: str, title: str, panels: list[dict], variables: list[dict], description: str) -> dict:
    return {
        "uid": uid, "title": title, "description": description, "tags": ["mlops", "mlops-kpi-exporter"],
        "timezone": "browser", "refresh": "1m", "time": {"from": "now-24h", "to": "now"}, "schemaVersion": 39,
        "version": 1, "editable": True, "graphTooltip": 1,
        "templating": {"list": variables},
        "annotations": {"list": [{
            "name": "ML alerts", "datasource": DATASOURCE, "enable": True, "iconColor": "red",
            "expr": 'ALERTS{alertstate="firing", alertname=~"ML.*"}', "titleFormat": "{{alertname}}",
            "textFormat": "{{experiment}}{{endpoint}}{{budget}}{{kpi}} ({{severity}})", "useValueForTime": False,
            "step": "1m"}]},
        "links": [
            {"title": "ML dashboards", "type": "dashboards", "tags": ["mlops"], "asDropdown": True, "includeVars": True,
             "keepTime": True},
            {"title": "Alert runbooks", "type": "link", "url": f"{EXPORTER_URL}/runbooks", "targetBlank": True, "icon": "doc"},
        ],
        "panels": layout(panels),
    }


def costs(money: str) -> dict:
    mlflow_run = {"title": "Open the run in MLflow", "targetBlank": True,
                  "url": "${mlflow_url}/#/experiments/${__data.fields.experiment_id}/runs/${__data.fields.run_id}"}
    panels = [
        stat("Spend, last 24 h", f"sum(mlops:experiment_spend:1d{{{EXP}}})", money,
             "Compute spend of the selected experiments over the last 24 hours (from the cumulative cost gauges)."),
        stat("Spend, last 7 days", f"sum(clamp_min(delta(mlops:experiment_cost:sum{{{EXP}}}[7d]), 0))", money),
        stat("Month to date", f"sum(mlops_experiment_cost_month_to_date{{{EXP}}})", money),
        stat("Month-end forecast", f"sum(mlops_experiment_cost_forecast_month{{{EXP}}})", money,
             "Straight line: month to date stretched to the whole month."),
        stat("Budgets", "sum(mlops_budget_monthly)", money, "Sum of the configured monthly budgets."),
        stat("Burning now", f"sum(mlops_running_hourly_cost{{{EXP}}})", money,
             "Summed hourly rate of the runs RUNNING now, per hour."),
        series("Spend rate by experiment (per hour)", [target(f"mlops:experiment_spend:hourly{{{EXP}}}", "{{experiment}}")],
               money, "Spend over the last hour, per hour, by experiment (recording rule mlops:experiment_spend:hourly)."),
        series("Burn rate now (per hour)", [target(f"sum by (experiment) (mlops_running_hourly_cost{{{EXP}}})", "{{experiment}}")],
               money, "Hourly rate of the machines of RUNNING runs."),
        bars("Month to date vs budget", "mlops_budget_cost_month_to_date / on (budget) mlops_budget_monthly", "{{budget}}",
             "percentunit", "Share of each monthly budget spent so far; over 1 is overspent.", w=8),
        bars("Forecast vs budget", "mlops_budget_cost_forecast_month / on (budget) mlops_budget_monthly", "{{budget}}",
             "percentunit", "Month-end forecast as a share of each budget.", w=8),
        bars("Cost by status (failed-run waste)", f"sum by (status) (mlops_experiment_cost{{{EXP}}})", "{{status}}", money,
             "Cumulative cost by run status: FAILED, KILLED and STALE (crashed) are waste.", w=8),
        table("Top costly runs", f"topk(20, mlops_run_cost{{{EXP}}} * on (experiment) group_left (experiment_id) "
              "mlops_experiment_info)", money, "Running runs and the latest ended ones; click a row to open the run "
              "in MLflow.", links=[mlflow_run]),
        table("Stale runs (to clean up)", f"mlops_run_cost{{status=\"STALE\",{EXP}}} * on (experiment) "
              "group_left (experiment_id) mlops_experiment_info", money,
              "Runs left RUNNING in MLflow with no sign of life for runs.stale_after (their process is gone), "
              "costed to their last sign of life: end them in MLflow (runbook MLStaleRuns). Click a row to open "
              "the run.", links=[mlflow_run]),
        bars("Run time per experiment (median and p90)",
             f"histogram_quantile(0.5, sum by (experiment, le) (mlops_completed_run_duration_seconds_bucket{{{EXP}}}))",
             "{{experiment}} p50", "s", "The chapter's run-time chart: how long completed runs take, per experiment.", w=12),
        bars("Runs by start hour", f"sum by (hour) (mlops_runs_by_start_hour{{{EXP}}})", "{{hour}}", "short",
             "The chapter's run start times: when the team launches runs (hour of day, runs.timezone).", w=12),
        bars("Estimator distribution", f"sum by (estimator) (mlops_runs_by_estimator{{{EXP}}})", "{{estimator}}", "short",
             "The chapter's estimator distribution: which algorithms the runs use.", w=12),
        bars("Cost by team (allocation tag)", 'sum by (value) (mlops_cost_by_tag{tag="team"})', "{{value}}", money,
             "Showback: cumulative cost by the value of the team tag; untagged spend is shown as such.", w=12),
        bars("Fixed monthly costs by category", "sum by (category) (mlops_fixed_cost_monthly)", "{{category}}", money,
             "The chapter's cost categories beyond compute, from the config.", w=12),
        panel("piechart", "Total cost of ownership this month", [
            target('label_replace(sum(mlops_experiment_cost_month_to_date), "category", "compute (MTD)", "", "")',
                   "{{category}}", instant=True, ref="A"),
            target('label_replace(sum(mlops_experiment_storage_monthly_cost), "category", "storage", "", "")',
                   "{{category}}", instant=True, ref="B"),
            target("sum by (category) (mlops_fixed_cost_monthly)", "{{category}}", instant=True, ref="C"),
        ], money, "Compute month to date, artifact storage and fixed costs.", w=12,
            options={"reduceOptions": {"calcs": ["lastNotNull"]}, "legend": {"displayMode": "table", "placement": "right",
                                                                              "values": ["value", "percent"]}}),
    ]
    variables = [query_var("experiment", "mlops_experiment_info", "experiment"),
                 {"name": "mlflow_url", "label": "MLflow UI", "type": "textbox", "query": MLFLOW_URL,
                  "current": {"text": MLFLOW_URL, "value": MLFLOW_URL}}]
    return dashboard("mlops-costs", "ML costs overview", panels, variables,
                     "What ML training costs, where the money goes and how fast it burns, from MLflow runs.")


def serving(money: str) -> dict:
    quantile = "histogram_quantile({q}, sum by (endpoint, le) (rate(mlops_endpoint_request_duration_seconds_bucket{{{ep}}}[$__rate_interval])))"
    panels = [
        panel("stat", "Up (probe)", [target(f"mlops_endpoint_up{{{EP}}}", "{{endpoint}}", instant=True)], "none",
              "1 when the last synthetic probe succeeded.", w=8, h=4,
              options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"},
              extra={"fieldConfig": {"defaults": {"unit": "none", "noValue": "no data yet", "links": [],
                                                  "mappings": [{"type": "value", "options": {"0": {"text": "DOWN", "color": "red"},
                                                                                            "1": {"text": "UP", "color": "green"}}}]},
                                     "overrides": []}}),
        stat("Hourly cost of serving", f"sum(mlops_endpoint_hourly_cost{{{EP}}})", money, w=8),
        stat("Cost per 1,000 predictions", f"avg(mlops:endpoint_cost_per_1k_predictions:1h{{{EP}}})", money,
             "Hourly cost / predictions per hour x 1,000, over the last hour.", w=8),
        series("Request rate", [target(f"sum by (endpoint) (rate(mlops_endpoint_requests_total{{{EP}}}[$__rate_interval]))",
                                       "{{endpoint}}")], "reqps"),
        series("Error ratio", [target(f"sum by (endpoint) (rate(mlops_endpoint_errors_total{{{EP}}}[$__rate_interval])) / "
                                      f"sum by (endpoint) (rate(mlops_endpoint_requests_total{{{EP}}}[$__rate_interval]))",
                                      "{{endpoint}}")], "percentunit"),
        series("Latency p50 / p95 / p99", [target(quantile.format(q=q, ep=EP), f"{{{{endpoint}}}} p{int(q * 100)}", ref=r)
                                          for q, r in ((0.5, "A"), (0.95, "B"), (0.99, "C"))], "s"),
        series("Probe latency p95", [target(f"histogram_quantile(0.95, sum by (endpoint, le) (rate(mlops_endpoint_probe_duration_seconds_bucket{{{EP}}}[$__rate_interval])))",
                                            "{{endpoint}}")], "s"),
        series("Utilization", [target(f"mlops_endpoint_utilization_ratio{{{EP}}}", "{{endpoint}} {{resource}}")],
               "percentunit", "What the servers report (gpu, cpu, memory, kv_cache) and capacity = throughput / capacity_rps."),
        series("SLO burn rate (99.9 %)", [target(f"mlops:endpoint_error_ratio:rate1h{{{EP}}} / 0.001", "{{endpoint}} 1h", ref="A"),
                                          target(f"mlops:endpoint_error_ratio:rate5m{{{EP}}} / 0.001", "{{endpoint}} 5m", ref="B")],
               "short", "Error ratio over the error budget of a 99.9 % SLO: 14.4 over 1h and 5m pages."),
        series("Cost per hour", [target(f"sum by (endpoint) (mlops_endpoint_hourly_cost{{{EP}}})", "{{endpoint}}")], money),
    ]
    return dashboard("mlops-serving", "Model serving", panels, [query_var("endpoint", "mlops_endpoint_up", "endpoint")],
                     "Per endpoint: up, traffic, errors, latency, utilization and the cost of each prediction.")


def kpis() -> dict:
    met_colors = [{"type": "value", "options": {"0": {"text": "MISSED", "color": "red"}, "1": {"text": "MET", "color": "green"}}}]
    panels = [
        table("KPIs against targets", "mlops_kpi * on (kpi) group_left (metric, source, direction, run_id, version) "
              "mlops_kpi_source_info", "short", "Each KPI's current value, where it comes from, and its target below."),
        panel("stat", "Target met", [target("mlops_kpi_target_met", "{{kpi}}", instant=True)], "none",
              "Green when the KPI meets its target in its direction.", w=12, h=6,
              options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"},
              extra={"fieldConfig": {"defaults": {"unit": "none", "noValue": "no data yet", "links": [], "mappings": met_colors},
                                     "overrides": []}}),
        bars("KPI value vs target", "mlops_kpi / on (kpi) group_left mlops_kpi_target", "{{kpi}}", "percentunit",
             "Value as a share of the target (for lower-is-better KPIs, under 1 is good).", w=12),
        bars("Model deployment lead time", "mlops_model_deploy_lead_time_seconds", "{{model}}", "dtdurations",
             "From the end of the source run to the creation of the version holding the deploy alias.", w=12),
        bars("Registered versions", "mlops_model_versions", "{{model}}", "short", w=12),
        table("Aliases", "mlops_model_version_info", "short", "Which version holds which alias, and its source run."),
    ]
    return dashboard("mlops-kpis", "KPI scorecard", panels, [],
                     "Business and quality KPIs against their targets, and the model registry.")


def exporter() -> dict:
    panels = [
        panel("stat", "Sources up", [target("mlops_source_up", "{{source}}", instant=True)], "none", w=24, h=4,
              options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"}),
        series("Poll duration", [target("mlops_source_poll_duration_seconds", "{{source}}")], "s"),
        series("Poll errors", [target("sum by (source) (increase(mlops_source_errors_total[$__rate_interval]))", "{{source}}")],
               "short"),
        series("Time since last successful poll", [target("time() - mlops_source_last_success_timestamp_seconds", "{{source}}")], "s"),
        bars("Skipped runs by reason", "mlops_runs_skipped", "{{reason}}", "short",
             "Runs left out because their data cannot be costed.", w=12),
        series("Scrape size", [target(f'scrape_samples_scraped{{job="{JOB}"}}', "samples")], "short",
               "Series per scrape: bounded whatever the number of runs."),
        series("Runs tracked", [target("mlops_mlflow_runs_tracked", "runs")], "short"),
    ]
    return dashboard("mlops-exporter", "mlops-kpi-exporter health", panels, [],
                     "Is the exporter itself healthy: sources, polls, errors, skipped runs, scrape size.")


def build(currency: str | None = None) -> dict[str, dict]:
    money = f"currency{currency or OPS['currency']}"
    return {d["uid"]: d for d in (costs(money), serving(money), kpis(), exporter())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=Path, default=OPS_FILE, help="deployment settings (deploy/monitoring.yml)")
    parser.add_argument("--currency", help="overrides the settings' currency")
    parser.add_argument("--out", type=Path, default=HERE / "json")
    args = parser.parse_args()
    use_settings(args.ops)
    args.out.mkdir(parents=True, exist_ok=True)
    for uid, board in build(args.currency).items():
        (args.out / f"{uid}.json").write_text(json.dumps(board, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
