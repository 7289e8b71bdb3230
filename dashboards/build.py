"""Writes the Grafana dashboards (dashboards/json/*.json) with Grafana's own as-code library,
grafana-foundation-sdk (typed builders for dashboards, panels, Prometheus queries and variables).

    python dashboards/build.py                    # the committed dashboards (a test checks they match)
    python dashboards/build.py --ops my.yml       # your job name, datasource, links, selectors, currency

The deployment settings come from deploy/monitoring.yml, the same file alerts/generate.py reads.
Portable: every panel and query uses the `datasource` variable (Grafana picks its default Prometheus,
in the compose stack the provisioned one); every selector filters on the `job` variable and the
settings' extra `selectors`; the classic JSON model that file provisioning reads on Grafana 11, 12 and
later. The SDK is a build-time dependency only (`pip install -e '.[dashboards]'`), pinned exactly.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import yaml

warnings.filterwarnings("ignore", category=DeprecationWarning)  # the SDK prefers its v2 schema; we ship classic JSON
from grafana_foundation_sdk.builders import (  # noqa: E402
    barchart,
    dashboard,
    piechart,
    prometheus,
    stat,
    table,
    timeseries,
)
from grafana_foundation_sdk.builders.common import ReduceDataOptions, VizLegendOptions  # noqa: E402
from grafana_foundation_sdk.cog.encoder import JSONEncoder  # noqa: E402
from grafana_foundation_sdk.models.common import BigValueColorMode, BigValueGraphMode, LegendDisplayMode, LegendPlacement  # noqa: E402
from grafana_foundation_sdk.models.dashboard import (  # noqa: E402
    DataSourceRef,
    DataTransformerConfig,
    DashboardLinkType,
    ValueMap,
    ValueMappingResult,
    VariableRefresh,
    VariableSort,
)

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "exporter"))  # a checkout works without the package installed
from mlops_kpi_exporter.metrics.selectors import matchers_text, scoped  # noqa: E402

OPS_FILE = HERE.parent / "deploy" / "monitoring.yml"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# MLflow workspaces (multi-tenancy): series carry `workspace`; the variable's All is ".*", which also
# matches the series of a server without workspaces (no label)
WS = 'workspace=~"$workspace"'
EXP = f'{WS},experiment=~"$experiment"'
EP = 'endpoint=~"$endpoint"'


def use_settings(path: Path) -> dict:
    """Read the deployment settings into the module's constants (the panels below use them)."""
    global OPS, EXPORTER_URL, MLFLOW_URL, SCOPE
    OPS = yaml.safe_load(path.read_text())
    EXPORTER_URL = OPS["exporter_url"]  # the exporter serves the alert runbooks at /runbooks
    MLFLOW_URL = OPS["mlflow_url"]
    # every selector of the exporter's series: the job variable, then the deployment's own matchers
    SCOPE = ",".join(filter(None, ['job=~"$job"', matchers_text(OPS.get("selectors") or {})]))
    return OPS


use_settings(OPS_FILE)


def target(expr: str, legend: str = "", instant: bool = False, ref: str = "A") -> prometheus.Dataquery:
    query = (prometheus.Dataquery().expr(scoped(expr, SCOPE)).legend_format(legend or "__auto").ref_id(ref)
             .datasource(DATASOURCE))
    return query.instant() if instant else query.range()


def _common(builder, title: str, targets: list, unit: str, description: str, w: int, h: int):
    builder = builder.title(title).description(description).datasource(DATASOURCE).span(w).height(h).no_value("no data yet")
    if unit:
        builder = builder.unit(unit)
    for t in targets:
        builder = builder.with_target(t)
    return builder


def mapped(options: dict[str, tuple[str, str]]) -> list:
    return [ValueMap({value: ValueMappingResult(text=text, color=color) for value, (text, color) in options.items()})]


def stat_panel(title: str, targets: list, unit: str, description: str, w: int = 4, h: int = 4, mappings=None,
               background: bool = False) -> stat.Panel:
    p = _common(stat.Panel(), title, targets, unit, description, w, h).reduce_options(
        ReduceDataOptions().calcs(["lastNotNull"])).graph_mode(BigValueGraphMode.NONE)
    p = p.color_mode(BigValueColorMode.BACKGROUND if background else BigValueColorMode.VALUE)
    return p.mappings(mappings) if mappings else p


def stat_(title: str, expr: str, unit: str, description: str, w: int = 4) -> stat.Panel:
    return stat_panel(title, [target(expr, instant=True)], unit, description, w=w)


def series(title: str, targets: list, unit: str, description: str, w: int = 12) -> timeseries.Panel:
    legend = VizLegendOptions().display_mode(LegendDisplayMode.TABLE).placement(LegendPlacement.RIGHT).calcs(
        ["lastNotNull"]).show_legend(True)
    return _common(timeseries.Panel(), title, targets, unit, description, w, 8).legend(legend)


def bars(title: str, expr: str, legend: str, unit: str, description: str, w: int = 12) -> barchart.Panel:
    p = _common(barchart.Panel(), title, [target(expr, legend, instant=True)], unit, description, w, 8)
    return p.x_tick_label_rotation(-45).legend(VizLegendOptions().show_legend(False)).with_transformation(
        DataTransformerConfig(id_val="reduce", options={"reducers": ["lastNotNull"]}))


def table_(title: str, expr: str, unit: str, description: str, links: list | None = None, w: int = 24) -> table.Panel:
    p = _common(table.Panel(), title, [target(expr, instant=True)], unit, description, w, 8)
    p = p.with_transformation(DataTransformerConfig(id_val="labelsToFields", options={})).with_transformation(
        DataTransformerConfig(id_val="organize", options={"excludeByName": {
            "Time": True, "job": True, "instance": True, "__name__": True}}))
    return p.data_links(links) if links else p


def pie(title: str, targets: list, unit: str, description: str, w: int = 12) -> piechart.Panel:
    return _common(piechart.Panel(), title, targets, unit, description, w, 8).reduce_options(
        ReduceDataOptions().calcs(["lastNotNull"]))


def query_var(name: str, metric: str, label: str, all_value: str = ".+") -> dashboard.QueryVariable:
    scope = matchers_text(OPS.get("selectors") or {}) if name == "job" else SCOPE  # job: all of this deployment's
    query = f"label_values({scoped(metric, scope)}, {label})"
    return (dashboard.QueryVariable(name).label(label.capitalize()).datasource(DATASOURCE).query(query)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True).include_all(True).all_value(all_value)
            .sort(VariableSort.ALPHABETICAL_ASC))


def workspace_var(metric: str) -> dashboard.QueryVariable:
    """The MLflow workspaces of `metric`'s series; none on a server without workspaces, where All (".*")
    matches the series that have no workspace label."""
    return query_var("workspace", metric, "workspace", all_value=".*")


def tenant_vars(metric: str) -> list[dashboard.QueryVariable]:
    """Workspace (those with watched experiments), then the experiments of `metric` in the chosen ones."""
    return [workspace_var("mlops_experiment_info"), query_var("experiment", f"{metric}{{{WS}}}", "experiment")]


def board(uid: str, title: str, panels: list, variables: list, description: str) -> dict:
    datasource = (dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    job = query_var("job", "mlops_exporter_info", "job")
    b = (dashboard.Dashboard(title).uid(uid).description(description).tags(["mlops", "mlops-kpi-exporter"])
         .timezone("browser").refresh("1m").time("now-24h", "now").readonly()
         .with_variable(datasource).with_variable(job))
    for variable in variables:
        b = b.with_variable(variable)
    b = b.annotation(dashboard.AnnotationQuery().name("ML alerts").datasource(DATASOURCE).enable(True).icon_color("red")
                     .expr(f'ALERTS{{alertstate="firing",alertname=~"ML.*",{SCOPE}}}')
                     .title_format("{{alertname}}")
                     .text_format("{{experiment}}{{endpoint}}{{budget}}{{kpi}} ({{severity}})"))
    b = b.link(dashboard.DashboardLink("ML dashboards").type(DashboardLinkType.DASHBOARDS).tags(["mlops"])
               .as_dropdown(True).include_vars(True).keep_time(True))
    b = b.link(dashboard.DashboardLink("Alert runbooks").type(DashboardLinkType.LINK).url(f"{EXPORTER_URL}/runbooks")
               .target_blank(True).icon("doc"))
    for panel in panels:
        b = b.with_panel(panel)
    return json.loads(JSONEncoder(sort_keys=True, indent=2).encode(b.build()))


def mlflow_run_link() -> dashboard.DashboardLink:
    """A table row's run opened in MLflow (the row needs experiment_id and run_id)."""
    return (dashboard.DashboardLink("Open the run in MLflow").type(DashboardLinkType.LINK).target_blank(True)
            .url("${mlflow_url}/#/experiments/${__data.fields.experiment_id}/runs/${__data.fields.run_id}"))


def costs(money: str) -> dict:
    mlflow_run = mlflow_run_link()
    panels = [
        stat_("Spend, last 24 h", f"sum(mlops:experiment_spend:1d{{{EXP}}})", money,
             "Compute spend of the selected experiments over the last 24 hours (from the cumulative cost gauges)."),
        stat_("Spend, last 7 days", f"sum(clamp_min(delta(mlops:experiment_cost:sum{{{EXP}}}[7d]), 0))", money,
              "Compute spend of the selected experiments over the last 7 days."),
        stat_("Month to date", f"sum(mlops_experiment_cost_month_to_date{{{EXP}}})", money,
              "Compute cost of the selected experiments in the current calendar month."),
        stat_("Month-end forecast", f"sum(mlops_experiment_cost_forecast_month{{{EXP}}})", money,
             "Straight line: month to date stretched to the whole month."),
        stat_("Budgets", "sum(mlops:budget_monthly:max)", money, "Sum of the configured monthly budgets."),
        stat_("Burning now", f"sum(mlops_running_hourly_cost{{{EXP}}})", money,
             "Summed hourly rate of the runs RUNNING now, per hour."),
        series("Spend rate by experiment (per hour)", [target(f"mlops:experiment_spend:hourly{{{EXP}}}", "{{experiment}} {{workspace}}")],
               money, "Spend over the last hour, per hour, by experiment (recording rule mlops:experiment_spend:hourly)."),
        series("Burn rate now (per hour)", [target(f"sum by (workspace, experiment) (mlops_running_hourly_cost{{{EXP}}})", "{{experiment}} {{workspace}}")],
               money, "Hourly rate of the machines of RUNNING runs."),
        bars("Month to date vs budget", "mlops:budget_cost_month_to_date:sum / mlops:budget_monthly:max", "{{budget}}",
             "percentunit", "Share of each monthly budget spent so far; over 1 is overspent.", w=8),
        bars("Forecast vs budget", "mlops:budget_cost_forecast_month:sum / mlops:budget_monthly:max", "{{budget}}",
             "percentunit", "Month-end forecast as a share of each budget.", w=8),
        bars("Cost by status (failed-run waste)", f"sum by (status) (mlops_experiment_cost{{{EXP}}})", "{{status}}", money,
             "Cumulative cost by run status: FAILED, KILLED and STALE (crashed) are waste.", w=8),
        bars("Idle cost by experiment", f"sum by (workspace, experiment) (mlops_experiment_idle_cost{{{EXP}}})", "{{experiment}} {{workspace}}",
             money, "What runs paid for GPU or CPU time they did not use (MLflow system metrics): cost x (1 - "
             "utilization). Runs without system metrics add nothing (MLIdleSpend).", w=8),
        table_("Utilization by experiment", f"mlops_experiment_utilization_ratio{{{EXP}}}", "percentunit",
               "Cost-weighted mean utilization of each experiment's completed runs with system metrics, by "
               "resource (gpu, cpu, gpu_memory peak): low GPU with high CPU means the input pipeline starves the GPU.",
               w=16),
        table_("Top costly runs", f"topk(20, mlops_run_cost{{{EXP}}} * on (job, workspace, experiment) group_left (experiment_id) "
              "mlops_experiment_info)", money, "Running runs and the latest ended ones; click a row to open the run "
              "in MLflow.", links=[mlflow_run]),
        table_("Stale runs (to clean up)", f"mlops_run_cost{{status=\"STALE\",{EXP}}} * on (job, workspace, experiment) "
              "group_left (experiment_id) mlops_experiment_info", money,
              "Runs left RUNNING in MLflow with no sign of life for runs.stale_after (their process is gone), "
              "costed to their last sign of life: end them in MLflow (runbook MLStaleRuns). Click a row to open "
              "the run.", links=[mlflow_run]),
        bars("Run time per experiment (median and p90)",
             f"histogram_quantile(0.5, sum by (workspace, experiment, le) (mlops_completed_run_duration_seconds_bucket{{{EXP}}}))",
             "{{experiment}} {{workspace}} p50", "s", "The chapter's run-time chart: how long completed runs take, per experiment.", w=12),
        bars("Runs by start hour", f"sum by (hour) (mlops_runs_by_start_hour{{{EXP}}})", "{{hour}}", "short",
             "The chapter's run start times: when the team launches runs (hour of day, runs.timezone).", w=12),
        bars("Estimator distribution", f"sum by (estimator) (mlops_runs_by_estimator{{{EXP}}})", "{{estimator}}", "short",
             "The chapter's estimator distribution: which algorithms the runs use.", w=12),
        bars("Cost by team (allocation tag)", 'sum by (value) (mlops_cost_by_tag{tag="team"})', "{{value}}", money,
             "Showback: cumulative cost by the value of the team tag; untagged spend is shown as such.", w=12),
        bars("Fixed monthly costs by category", "sum by (category) (mlops_fixed_cost_monthly)", "{{category}}", money,
             "The chapter's cost categories beyond compute, from the config.", w=12),
        pie("Total cost of ownership this month", [
            target('label_replace(sum(mlops_experiment_cost_month_to_date), "category", "compute (MTD)", "", "")',
                   "{{category}}", instant=True, ref="A"),
            target('label_replace(sum(mlops_experiment_storage_monthly_cost), "category", "storage", "", "")',
                   "{{category}}", instant=True, ref="B"),
            target("sum by (category) (mlops_fixed_cost_monthly)", "{{category}}", instant=True, ref="C"),
        ], money, "Compute month to date, artifact storage and fixed costs.", w=12),
    ]
    variables = [*tenant_vars("mlops_experiment_info"),
                 dashboard.TextBoxVariable("mlflow_url").label("MLflow UI").default_value(MLFLOW_URL)]
    return board("mlops-costs", "ML costs overview", panels, variables,
                     "What ML training costs, where the money goes and how fast it burns, from MLflow runs.")


def serving(money: str) -> dict:
    quantile = "histogram_quantile({q}, sum by (endpoint, le) (rate(mlops_endpoint_request_duration_seconds_bucket{{{ep}}}[$__rate_interval])))"
    panels = [
        stat_panel("Up (probe)", [target(f"mlops_endpoint_up{{{EP}}}", "{{endpoint}}", instant=True)], "none",
                   "1 when the last synthetic probe succeeded.", w=8,
                   mappings=mapped({"0": ("DOWN", "red"), "1": ("UP", "green")}), background=True),
        stat_("Hourly cost of serving", f"sum(mlops_endpoint_hourly_cost{{{EP}}})", money,
              "What the selected endpoints' machines cost per hour, all replicas.", w=8),
        stat_("Cost per 1,000 predictions", f"avg(mlops:endpoint_cost_per_1k_predictions:1h{{{EP}}})", money,
             "Hourly cost / predictions per hour x 1,000, over the last hour.", w=8),
        series("Request rate", [target(f"sum by (endpoint) (rate(mlops_endpoint_requests_total{{{EP}}}[$__rate_interval]))",
                                       "{{endpoint}}")], "reqps", "Requests per second, as the servers count them."),
        series("Error ratio", [
            target(f"sum by (endpoint) (rate(mlops_endpoint_errors_total{{{EP}}}[$__rate_interval])) / "
                   f"sum by (endpoint) (rate(mlops_endpoint_requests_total{{{EP}}}[$__rate_interval]))", "{{endpoint}} 5xx"),
            target(f"sum by (endpoint) (rate(mlops_endpoint_client_errors_total{{{EP}}}[$__rate_interval])) / "
                   f"sum by (endpoint) (rate(mlops_endpoint_requests_total{{{EP}}}[$__rate_interval]))", "{{endpoint}} 4xx",
                   ref="B")], "percentunit",
               "Server faults (5xx: what the SLO counts) and refused requests (4xx: the callers' errors) as shares of "
               "all predictions."),
        series("Latency p50 / p95 / p99 and mean", [
            *(target(quantile.format(q=q, ep=EP), f"{{{{endpoint}}}} p{int(q * 100)}", ref=r)
              for q, r in ((0.5, "A"), (0.95, "B"), (0.99, "C"))),
            target(f"sum by (endpoint) (rate(mlops_endpoint_request_duration_seconds_sum{{{EP}}}[$__rate_interval])) / "
                   f"sum by (endpoint) (rate(mlops_endpoint_request_duration_seconds_count{{{EP}}}[$__rate_interval]))",
                   "{{endpoint}} mean", ref="D")], "s",
               "Request latency as the servers report it. Servers that give only a sum and a count (torchserve, "
               "triton) have no percentiles: their mean is the line to read."),
        series("Probe latency p95", [target(f"histogram_quantile(0.95, sum by (endpoint, le) (rate(mlops_endpoint_probe_duration_seconds_bucket{{{EP}}}[$__rate_interval])))",
                                            "{{endpoint}}")], "s", "95th percentile of the synthetic probes' wall time."),
        series("Utilization", [target(f"mlops_endpoint_utilization_ratio{{{EP}}}", "{{endpoint}} {{resource}}")],
               "percentunit", "What the servers report (gpu, cpu, memory, kv_cache) and capacity = throughput / capacity_rps."),
        series("SLO burn rate (99.9 %)", [target(f"mlops:endpoint_error_ratio:rate1h{{{EP}}} / 0.001", "{{endpoint}} 1h", ref="A"),
                                          target(f"mlops:endpoint_error_ratio:rate5m{{{EP}}} / 0.001", "{{endpoint}} 5m", ref="B")],
               "short", "Error ratio over the error budget of a 99.9 % SLO: 14.4 over 1h and 5m pages."),
        series("Cost per hour", [target(f"sum by (endpoint) (mlops_endpoint_hourly_cost{{{EP}}})", "{{endpoint}}")], money,
               "Hourly cost of each endpoint's machines, all replicas."),
    ]
    return board("mlops-serving", "Model serving", panels, [query_var("endpoint", "mlops_endpoint_up", "endpoint")],
                     "Per endpoint: up, traffic, errors, latency, utilization and the cost of each prediction.")


def kpis() -> dict:
    met_colors = mapped({"0": ("MISSED", "red"), "1": ("MET", "green")})
    panels = [
        table_("KPIs against targets", "mlops_kpi * on (job, kpi) group_left (metric, source, direction, run_id, version) "
              "mlops_kpi_source_info", "short", "Each KPI's current value, where it comes from, and its target below."),
        stat_panel("Target met", [target("mlops_kpi_target_met", "{{kpi}}", instant=True)], "none",
                   "Green when the KPI meets its target in its direction.", w=12, h=6, mappings=met_colors,
                   background=True),
        bars("KPI value vs target", "mlops_kpi / on (job, kpi) group_left mlops_kpi_target", "{{kpi}}", "percentunit",
             "Value as a share of the target (for lower-is-better KPIs, under 1 is good).", w=12),
        bars("Model deployment lead time", f"mlops_model_deploy_lead_time_seconds{{{WS}}}", "{{model}} {{workspace}}", "dtdurations",
             "From the end of the source run to the creation of the version holding the deploy alias.", w=12),
        bars("Registered versions", f"mlops_model_versions{{{WS}}}", "{{model}} {{workspace}}", "short",
             "How many versions each registered model has.", w=12),
        table_("Aliases", f"mlops_model_version_info{{{WS}}}", "short", "Which version holds which alias, and its source run."),
    ]
    return board("mlops-kpis", "KPI scorecard", panels, [workspace_var("mlops_model_versions")],
                     "Business and quality KPIs against their targets, and the model registry.")


def genai(money: str) -> dict:
    ok_or_error = f'status=~"OK|ERROR",{EXP}'
    panels = [
        stat_("GenAI spend, last 24 h", f"sum(clamp_min(delta(mlops_genai_cost{{{EXP}}}[1d]), 0))", money,
              "LLM spend of the selected experiments' traces over the last 24 hours."),
        stat_("GenAI month to date", f"sum(mlops_genai_cost_month_to_date{{{EXP}}})", money,
              "LLM spend of the traces started this calendar month."),
        stat_("Traces, last 24 h", f"sum(clamp_min(delta(mlops_genai_traces{{{ok_or_error}}}[1d]), 0))", "short",
              "Traces that ended (OK or ERROR) over the last 24 hours."),
        stat_("Cost per 1,000 traces", f"1000 * sum(clamp_min(delta(mlops_genai_cost{{{EXP}}}[1d]), 0)) / "
              f"sum(clamp_min(delta(mlops_genai_traces{{{ok_or_error}}}[1d]), 0))", money,
              "LLM spend over the last day per thousand traces."),
        stat_("Unpriced tokens", f'sum(mlops_genai_tokens_by_price_source{{price_source="unpriced",{EXP}}})',
              "short", "Tokens of models with no price (add them to traces.token_prices): counted, never costed."),
        stat_("Cached share of input", f'sum(mlops_genai_tokens{{token_type="cached_input",{EXP}}}) / '
              f'sum(mlops_genai_tokens{{token_type=~"input|cached_input|cache_creation_input",{EXP}}})', "percentunit",
              "Input tokens served from the providers' prompt caches (priced lower)."),
        bars("Spend by model", f"sum by (model) (mlops_genai_cost{{{EXP}}})", "{{model}}", money,
             "Cumulative LLM cost by model: MLflow's own cost, else traces.token_prices, else the shipped catalog."),
        bars("Spend by experiment", f"sum by (workspace, experiment) (mlops_genai_cost{{{EXP}}})", "{{experiment}} {{workspace}}", money,
             "Cumulative LLM cost by experiment (GenAI app)."),
        series("Spend rate (per hour)", [target(f"sum by (workspace, experiment) (mlops:genai_spend:hourly{{{EXP}}})",
                                                "{{experiment}} {{workspace}}")], money,
               "LLM spend over the last hour, by experiment (MLGenAISpendSpike)."),
        series("Tokens per trace", [target(f"sum by (workspace, experiment) (clamp_min(delta(mlops_genai_tokens{{{EXP}}}[1h]), 0)) / "
                                           f"sum by (workspace, experiment) (mlops:genai_traces:1h{{{EXP}}})", "{{experiment}} {{workspace}}")],
               "short", "Tokens of all types per trace over the last hour: prompts growing, retrieval bringing more."),
        series("Error ratio", [target(f"mlops:genai_error_ratio:1h{{{EXP}}}", "{{experiment}} {{workspace}}")], "percentunit",
               "Share of the last hour's traces that ended in ERROR (MLGenAITraceErrors)."),
        series("Latency p50 / p95", [
            target(f"histogram_quantile(0.5, sum by (workspace, experiment, le) (clamp_min(delta("
                   f"mlops_genai_trace_duration_seconds_bucket{{{EXP}}}[1h]), 0)))", "{{experiment}} {{workspace}} p50"),
            target(f"mlops:genai_trace_duration_seconds:p95_1h{{{EXP}}}", "{{experiment}} {{workspace}} p95", ref="B")], "s",
               "Trace latency over the last hour (MLGenAITracesSlow at p95)."),
        bars("Spend by user", f"sum by (user) (mlops_genai_cost_by_user{{{EXP}}})", "{{user}}", money,
             "LLM cost by the traces' mlflow.trace.user (traces.breakdown: user), the largest and the rest as other."),
        table_("Tokens by price source", f"mlops_genai_tokens_by_price_source{{{EXP}}}", "short",
               "Where each model's price came from: mlflow, config, catalog, or unpriced."),
        # MLflow's AI Gateway budgets: per policy, not per experiment (the experiment variable does not apply)
        table_("Gateway budgets used", f"mlops:gateway_budget_used:ratio{{{WS}}} * on (job, workspace, policy) group_left (scope, target, "
               "action, duration) max by (job, workspace, policy, scope, target, action, duration) (mlops_gateway_budget_info)",
               "percentunit", "Share of each MLflow AI Gateway budget policy's limit its current window has spent, "
               "as MLflow counts it, with the policy's scope, target, action and window length; a reject policy "
               "at 100 % refuses its calls (MLGatewayBudgetExhausted), MLGatewayBudgetNearLimit warns at 80 %."),
    ]
    variables = tenant_vars("mlops_genai_traces")
    return board("mlops-genai", "GenAI spend", panels, variables,
                 "LLM tokens, cost and latency of the MLflow 3 traces of GenAI apps and agents.")


def exporter() -> dict:
    def per_instance(expr: str) -> str:  # shards of one job: the instance variable picks among them
        return scoped(expr, 'instance=~"$instance"')

    panels = [
        stat_panel("Sources up", [target(per_instance("mlops_source_up"), "{{source}}", instant=True)], "none",
                   "Each source of the exporter: UP when its last poll succeeded.", w=24,
                   mappings=mapped({"0": ("DOWN", "red"), "1": ("UP", "green")}), background=True),
        series("Poll duration", [target(per_instance("mlops_source_poll_duration_seconds"), "{{source}}")], "s",
               "Wall time of each source's last poll."),
        series("Poll errors", [target(per_instance("sum by (source) (increase(mlops_source_errors_total[$__rate_interval]))"), "{{source}}")],
               "short", "Failed polls per interval, by source."),
        series("Time since last successful poll", [target(per_instance("time() - mlops_source_last_success_timestamp_seconds"), "{{source}}")], "s",
               "How old each source's figures are; MLExporterPollStale fires past 15 minutes."),
        bars("Skipped runs by reason", per_instance("mlops_runs_skipped"), "{{reason}}", "short",
             "Runs left out because their data cannot be costed.", w=12),
        series("Scrape size", [target(per_instance("scrape_samples_scraped"), "{{instance}}")], "short",
               "Series per scrape: bounded whatever the number of runs."),
        series("Runs tracked", [target(per_instance("mlops_mlflow_runs_tracked"), "{{instance}}")], "short",
               "Runs held in the exporter's ledger."),
    ]
    instance = query_var("instance", "mlops_exporter_info", "instance")
    return board("mlops-exporter", "mlops-kpi-exporter health", panels, [instance],
                     "Is the exporter itself healthy: sources, polls, errors, skipped runs, scrape size.")


def bill(money: str) -> dict:
    month = 'month=~"$month"'
    panels = [
        stat_("Bill, latest month", 'sum(mlops_cloud_cost_latest_month{cost_basis="billed"})', money,
              "What the invoices of the latest billing month charge so far, all exports (credits included).", w=6),
        stat_("Budget used", "sum(mlops:cloud_cost_latest_month:sum) / sum(mlops_cloud_budget_monthly)", "percentunit",
              "The latest month's bill as a share of billing.monthly_budget.", w=6),
        stat_("Billed / list price", 'sum(mlops_cloud_cost_latest_month{cost_basis="billed"}) / '
              'sum(mlops_cloud_cost_latest_month{cost_basis="list"})', "percentunit",
              "What the company pays of the list price, discounts and credits included.", w=6),
        stat_("Newest charge, age", "time() - max(mlops_cloud_cost_last_charge_timestamp_seconds)", "s",
              "How old the newest charge on the bills is: exports arrive a day or two late.", w=6),
        bars("Bill by provider and service", f'sum by (provider, service) (mlops_cloud_cost{{cost_basis="billed",{month}}})',
             "{{provider}} {{service}}", money, "The month's bill by provider and service (the largest, the rest as other)."),
        bars("Bill by team", f'sum by (value) (mlops_cloud_cost_by_tag{{tag="team",cost_basis="billed",{month}}})',
             "{{value}}", money, "The month's bill by the team tag (after tag_aliases); untagged spend shown as such."),
        panel_bars_two("Compute: MLflow estimate vs bill, by team", [
            target(f'sum by (value) (mlops_cost_by_tag_month{{tag="team",{month}}})', "{{value}} estimate", instant=True),
            target(f'sum by (value) (mlops_calibrated_cost_by_tag_month{{tag="team",{month}}})',
                   "{{value}} calibrated estimate", instant=True, ref="C"),
            target(f'sum by (value) (mlops_cloud_compute_cost_by_tag{{tag="team",cost_basis="billed",{month}}})',
                   "{{value}} bill", instant=True, ref="B")], money,
            "MLflow's list-price estimate of the runs, the same calibrated by the bill (pricing.calibrate_from_bill) "
            "and the compute part of the bill, by team."),
        bars("Compute: bill over estimate, by team", f'mlops:cloud_compute_bill_over_estimate:ratio{{tag="team",{month}}}',
             "{{value}}", "percentunit", "Billed compute as a share of MLflow's estimate: under 100 % is discounts, "
             "over it is spend no run shows (or runs without a price)."),
        bars("Catalog price calibration, by provider", "max by (provider) (mlops_price_calibration_factor)",
             "{{provider}}", "percentunit", "What the bill's compute cost against its list price (effective / list): "
             "the factor catalog prices are scaled by, with pricing.calibrate_from_bill."),
        bars("Untagged share of the latest month", "max by (bill, tag) (mlops_cloud_untagged_ratio)", "{{bill}} {{tag}}",
             "percentunit", "Spend no team can be shown back; MLCloudUntaggedSpend fires over 20 %."),
        series("Latest month so far", [target('sum by (bill) (mlops_cloud_cost_latest_month{cost_basis="billed"})',
                                              "{{bill}}")], money, "How each bill's latest month grows as the exports arrive."),
        # the bill joined to runs (billing.run_join)
        panel_bars_two("Estimate vs bill, by experiment", [
            target(f'sum by (workspace, experiment) (mlops_experiment_billed_cost{{cost_basis="list",{month}}})',
                   "{{experiment}} {{workspace}} bill at list", instant=True),
            target(f'sum by (workspace, experiment) (mlops_experiment_billed_cost{{cost_basis="billed",{month}}})',
                   "{{experiment}} {{workspace}} billed", instant=True, ref="B")], money,
            "The bill joined to each experiment's runs (billing.run_join): at list price (what MLflow's catalog "
            "estimate prices) and as billed. Runs whose resources carry no join tag are not in it."),
        series("Bill joined to runs (coverage)", [target(f"mlops:billing_attribution_coverage:ratio{{{month}}}",
                                                          "{{bill}} {{provider}} {{month}}")], "percentunit",
               "The share of each month's bill joined to a run. A drop means a launcher stopped tagging "
               "(MLBillAttributionFell)."),
        table_("Costliest runs on the bill", 'topk(15, mlops_run_billed_cost{cost_basis="billed"} * on (job, workspace, experiment) '
               "group_left (experiment_id) mlops_experiment_info)", money,
               "Runs by what the bill charged for them, once the bill covers their run time; click a row to open the "
               "run in MLflow.", links=[mlflow_run_link()]),
        bars("Idle cost of shared clusters", f'sum by (key) (mlops_billing_join_idle_cost{{cost_basis="billed",{month}}})',
             "{{key}}", money, "What each shared resource (a cluster) cost while none of its runs ran: left up "
             "between runs (MLJoinIdleCostHigh)."),
        bars("Billed over estimate, by machine type", "max by (provider, instance_type) (mlops_price_calibration_ratio)",
             "{{provider}} {{instance_type}}", "percentunit", "What the joined runs were billed against their "
             "estimate, per machine type: far from 100 % means the price is off (MLPriceCalibrationOff)."),
    ]
    month_var = (dashboard.QueryVariable("month").label("Month").datasource(DATASOURCE)
                 .query(f"label_values({scoped('mlops_cloud_cost', SCOPE)}, month)")
                 .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_DESC))
    return board("mlops-bill", "Cloud bill", panels, [month_var],
                 "The cloud bill (FOCUS exports) by month, provider, service and team, beside MLflow's estimates.")


def panel_bars_two(title: str, targets: list, unit: str, description: str, w: int = 12) -> barchart.Panel:
    p = _common(barchart.Panel(), title, targets, unit, description, w, 8)
    return p.x_tick_label_rotation(-45).with_transformation(
        DataTransformerConfig(id_val="reduce", options={"reducers": ["lastNotNull"]}))


def build(currency: str | None = None) -> dict[str, dict]:
    money = f"currency{currency or OPS['currency']}"
    return {d["uid"]: d for d in (costs(money), serving(money), kpis(), exporter(), bill(money), genai(money))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=Path, default=OPS_FILE, help="deployment settings (deploy/monitoring.yml)")
    parser.add_argument("--currency", help="overrides the settings' currency")
    parser.add_argument("--out", type=Path, default=HERE / "json")
    args = parser.parse_args()
    use_settings(args.ops)
    args.out.mkdir(parents=True, exist_ok=True)
    for uid, data in build(args.currency).items():
        (args.out / f"{uid}.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
