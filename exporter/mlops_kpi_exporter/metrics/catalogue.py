"""Every metric the exporter exposes, declared once: name as exposed, type, labels, help, meaning.

The metric modules build their families from here (`family(...)`), the README's metric reference is
generated from here (`python -m mlops_kpi_exporter.metrics.catalogue --write README.md`), and the
tests check that every metric named by a dashboard, a rule or a PromQL test is declared here with
the labels it uses. A name is written as Prometheus shows it: `mlops_endpoint_requests_total`, not
the `mlops_endpoint_requests` that prometheus-client is given.

Help texts may use {currency}, {timezone} (runs.timezone), {deploy_alias} (registry.deploy_alias)
and {polled}; nothing else is filled in.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

POLLED_NOTE = "Computed by a background poll, not at scrape time."
RUN = ("experiment", "run_id", "run_name", "status")  # the labels of every per-run series
RUN_SERIES_NOTE = "Running runs and the most recently ended ones, at most runs.max_run_series. {polled}"
UPSTREAM_NOTE = "Re-counted from the server's own metrics; upstream restarts do not reset it."
Kind = Literal["gauge", "counter", "histogram", "info"]


@dataclass(frozen=True)
class MetricSpec:
    name: str  # as exposed; counters end in _total, info metrics in _info, histograms are the base name
    kind: Kind
    labels: tuple[str, ...]
    help: str  # the HELP text
    meaning: str  # the README's column, in markdown
    area: str  # the metric module (or source) that renders it

    def family(self, **values: str) -> Metric:
        """An empty family of this metric; label values are then given in `labels` order."""
        text = self.help.format(polled=POLLED_NOTE, **values) if "{" in self.help else self.help
        if self.kind == "counter":
            return CounterMetricFamily(self.name.removesuffix("_total"), text, labels=self.labels)
        if self.kind == "info":
            return InfoMetricFamily(self.name.removesuffix("_info"), text, labels=self.labels)
        if self.kind == "histogram":
            return HistogramMetricFamily(self.name, text, labels=self.labels)
        return GaugeMetricFamily(self.name, text, labels=self.labels)


def _spec(name: str, kind: Kind, labels: tuple[str, ...], help: str, meaning: str, area: str) -> MetricSpec:  # noqa: A002
    return MetricSpec(name, kind, labels, help, meaning, area)


CATALOGUE: tuple[MetricSpec, ...] = (
    # -- costs: metrics/costs.py ------------------------------------------------------------------
    _spec("mlops_experiment_cost", "gauge", ("experiment", "status"),
          "Cumulative compute cost in {currency} of the experiment's runs by run status; running runs accrue "
          "up to the poll, STALE runs stopped at their last sign of life; each machine-hour once (child runs "
          "on their parent's machine are in the parent's cost). Recomputed from MLflow, so it only falls when "
          "runs are deleted. {polled}",
          "cumulative compute cost of the experiment's runs by run status (FINISHED, FAILED, KILLED, RUNNING, "
          "STALE, SCHEDULED); running runs accrue to the poll, STALE ones stop at their last sign of life; each "
          "machine-hour once: child runs on their parent's machine count in the parent", "costs"),
    _spec("mlops_experiment_run_seconds", "gauge", ("experiment", "status"),
          "Cumulative machine time of the experiment's runs by run status, each machine-hour once (child runs on "
          "their parent's machine are in the parent's). {polled}",
          "cumulative machine time, each machine-hour once (as the cost)", "costs"),
    _spec("mlops_runs", "gauge", ("experiment", "status"),
          "Runs of the experiment by run status, child runs (tuning trials) included. {polled}",
          "number of runs, child runs included", "costs"),
    _spec("mlops_running_hourly_cost", "gauge", ("experiment",),
          "Summed hourly rate in {currency} of the experiment's runs RUNNING now: the current burn rate. {polled}",
          "summed hourly rate of the runs RUNNING now: the burn rate (0 for every watched experiment with none)",
          "costs"),
    _spec("mlops_experiment_info", "info", ("experiment", "experiment_id"),
          "Watched MLflow experiments, for joins and links.", "watched experiments, for joins and links", "costs"),
    _spec("mlops_run_cost", "gauge", RUN,
          "Compute cost in {currency} of one run (a child on its parent's machine: its share of the parent's). "
          + RUN_SERIES_NOTE,
          "cost of one run (a child on its parent's machine: its share): open runs first (RUNNING, STALE), then the "
          "most recently ended, at most `runs.max_run_series` series", "costs"),
    _spec("mlops_run_seconds", "gauge", RUN, "Run time of one run. " + RUN_SERIES_NOTE, "run time of one run",
          "costs"),
    _spec("mlops_run_hourly_cost", "gauge", RUN, "Hourly rate in {currency} of one run's machines. " + RUN_SERIES_NOTE,
          "hourly rate of one run's machines", "costs"),
    _spec("mlops_run_start_timestamp_seconds", "gauge", RUN, "Start time of one run. " + RUN_SERIES_NOTE,
          "start time of one run", "costs"),
    _spec("mlops_run_info", "info", (*RUN, "instance_type", "estimator", "price_source", "parent_run_id", "machine"),
          "Machine, estimator and price source of one run; its parent run, and machine=parent when it ran on "
          "its parent's machine (its cost is then a share of the parent's). " + RUN_SERIES_NOTE,
          "what the run ran on and how it was priced; `parent_run_id` and `machine` (`own`, or `parent` for a "
          "child costed as a share of its parent's machine)", "costs"),
    _spec("mlops_runs_skipped", "gauge", ("reason",),
          "Runs left out of every figure because their data cannot be costed, by reason. {polled}",
          'runs left out because their data cannot be costed (see "Skipped runs"): `missing_start_time`, '
          "`missing_end_time`, `start_before_2000`, `start_in_future`, `end_in_future`, `end_before_start`, "
          "`unknown_status`, `invalid_hourly_cost`, `invalid_instance_count`, `invalid_data`", "costs"),
    _spec("mlops_runs_by_price_source", "gauge", ("experiment", "source"),
          "Runs by where their hourly rate came from: tag, config, catalog, or default (machine unknown).",
          "runs priced by `tag`, `config`, `catalog` or `default`", "costs"),
    _spec("mlops_mlflow_runs_tracked", "gauge", (), "Runs held by the exporter's ledger.",
          "runs held by the exporter", "costs"),
    _spec("mlops_runs_stale", "gauge", ("experiment",),
          "Runs left RUNNING in MLflow with no sign of life (no metric logged) for runs.stale_after: their process "
          "is gone; costed to their last sign of life, shown with status STALE. {polled}",
          "runs left `RUNNING` with no sign of life for `runs.stale_after` (crashed, killed, evicted): end them in "
          "MLflow (runbook `MLStaleRuns`)", "costs"),
    _spec("mlops_mlflow_last_full_sync_timestamp_seconds", "gauge", (),
          "Unix time of the last full reconciliation with MLflow.", "time of the last full reconciliation", "costs"),
    _spec("mlops_cost_by_tag", "gauge", ("tag", "value"),
          "Cumulative compute cost in {currency} of all watched runs by the value of each allocation tag; runs "
          "without the tag count as 'untagged' (always shown), the values beyond allocation.max_values as 'other', "
          "so each tag's values add up to the total. {polled}",
          "cumulative cost by allocation tag value; `untagged` always shown, beyond `max_values` summed as "
          "`other`; each tag's values add up to the total", "costs"),
    _spec("mlops_experiment_artifact_bytes", "gauge", ("experiment",),
          "Bytes of artifacts logged by the experiment's completed runs (each run listed once). {polled}",
          "artifact bytes of completed runs (when `artifacts.enabled`)", "costs"),
    _spec("mlops_experiment_storage_monthly_cost", "gauge", ("experiment",),
          "Monthly cost in {currency} of storing those artifacts at pricing.storage_gb_month (GB = 2^30 bytes).",
          "monthly cost of storing them", "costs"),
    _spec("mlops_artifact_runs_pending", "gauge", (), "Completed runs whose artifacts are not listed yet.",
          "completed runs not listed yet", "costs"),
    _spec("mlops_artifact_listing_errors_total", "counter", (), "Runs whose artifacts could not be listed.",
          "runs whose artifacts could not be listed", "costs"),
    _spec("mlops_fixed_cost_monthly", "gauge", ("category", "project"),
          "Monthly fixed cost in {currency} by category and project, from the config (fixed_costs).",
          "fixed monthly costs from the config", "costs"),
    # -- activity: metrics/activity.py ------------------------------------------------------------
    _spec("mlops_runs_by_start_hour", "gauge", ("experiment", "hour"),
          "Runs started within runs.activity_window, by hour of day (0-23, {timezone}), child runs included. {polled}",
          "runs started within `runs.activity_window`, by hour of day 0-23 in `runs.timezone` (the chapter's "
          '"run start times" chart)', "activity"),
    _spec("mlops_runs_by_estimator", "gauge", ("experiment", "estimator"),
          "Runs by estimator (the first of runs.estimator_keys found in tags, then params), child runs included; "
          "beyond runs.max_estimators per experiment they count as 'other'. {polled}",
          "runs by estimator, top `runs.max_estimators` per experiment, the rest as `other`; `unknown` when no "
          "key is set (the chapter's estimator distribution)", "activity"),
    _spec("mlops_completed_run_duration_seconds", "histogram", ("experiment",),
          "Run time of the experiment's completed runs (FINISHED, FAILED, KILLED), child runs included. {polled}",
          "run time of completed runs (the chapter's run-time strip chart)", "activity"),
    _spec("mlops_completed_run_cost", "histogram", ("experiment",),
          "Compute cost in {currency} of the experiment's completed runs that cost on their own machine (child runs "
          "on their parent's machine are in the parent's). {polled}",
          "cost of completed runs on their own machine (children on their parent's are in the parent's)",
          "activity"),
    # -- budgets: metrics/budgets.py --------------------------------------------------------------
    _spec("mlops_experiment_cost_month_to_date", "gauge", ("experiment",),
          "Compute cost in {currency} of the experiment's runs within the current calendar month in {timezone}; "
          "runs spanning the month start count only their hours in it; running runs up to the poll. {polled}",
          "compute cost within the current calendar month (runs split at the month boundary)", "budgets"),
    _spec("mlops_experiment_cost_forecast_month", "gauge", ("experiment",),
          "Straight-line forecast in {currency} of the experiment's compute cost for the whole current calendar "
          "month in {timezone}: month-to-date x month length / time elapsed (at least one day). {polled}",
          "straight-line forecast of the month's compute cost (elapsed time at least one day)", "budgets"),
    _spec("mlops_budget_monthly", "gauge", ("budget",), "Monthly budget in {currency}.",
          "the configured monthly budget", "budgets"),
    _spec("mlops_budget_cost_month_to_date", "gauge", ("budget",),
          "Month-to-date compute cost in {currency} of the experiments the budget covers. {polled}",
          "month-to-date cost of the experiments the budget covers", "budgets"),
    _spec("mlops_budget_cost_forecast_month", "gauge", ("budget",),
          "Straight-line month-end forecast in {currency} of the experiments the budget covers. {polled}",
          "month-end forecast of the same", "budgets"),
    _spec("mlops_budget_info", "info", ("budget", "experiments", "include"),
          "Experiment globs each budget covers, and what spend it counts (compute, genai).",
          "the globs each budget covers and what it counts (`compute`, `genai`, or `compute+genai`)", "budgets"),
    # -- kpis: metrics/kpis.py --------------------------------------------------------------------
    _spec("mlops_kpi", "gauge", ("kpi", "experiment"),
          "Current value of a business or quality KPI read from MLflow metrics. {polled}",
          "current value of a KPI (absent when unknown)", "kpis"),
    _spec("mlops_kpi_target", "gauge", ("kpi",), "Target of the KPI, from the config.", "its target", "kpis"),
    _spec("mlops_kpi_target_met", "gauge", ("kpi",),
          "1 when the KPI meets its target in its direction, 0 when not; absent when unknown.",
          "1 when the KPI meets its target in its direction, else 0", "kpis"),
    _spec("mlops_kpi_source_info", "info",
          ("kpi", "experiment", "metric", "source", "direction", "run_id", "model", "alias", "version"),
          "Where each KPI's current value comes from: the run and, for model_alias KPIs, the model version.",
          "where the value came from, for links", "kpis"),
    _spec("mlops_kpi_missing", "gauge", ("kpi", "reason"),
          "1 for a KPI that could not be read, with the reason; such a KPI has no value.",
          "1 for a KPI that could not be read: `experiment_not_found`, `metric_missing`, `alias_not_found`, "
          "`run_gone`, `not_a_number` (NaN or infinite), `invalid_data`", "kpis"),
    # -- registry: metrics/registry.py ------------------------------------------------------------
    _spec("mlops_registered_models", "gauge", (), "Registered models watched. {polled}", "registered models watched",
          "registry"),
    _spec("mlops_model_versions", "gauge", ("model",), "Versions of a registered model. {polled}",
          "versions of a model", "registry"),
    _spec("mlops_model_version_info", "info", ("model", "version", "alias", "run_id"),
          "A model version that holds an alias, with its source run.", "versions holding an alias", "registry"),
    _spec("mlops_model_version_stage_info", "info", ("model", "version", "stage", "run_id"),
          "A model version in a legacy Staging or Production stage.",
          "versions in a legacy Staging or Production stage", "registry"),
    _spec("mlops_model_deploy_lead_time_seconds", "gauge", ("model",),
          "Time from the end of the source run to the creation of the version holding the '{deploy_alias}' alias "
          "(registry.deploy_alias): the model deployment time KPI. {polled}",
          "end of the source run to creation of the version holding `registry.deploy_alias` (0 when registered "
          "before the run ended)", "registry"),
    _spec("mlops_model_deploy_lead_time_unknown", "gauge", ("model", "reason"),
          "1 when the deploy alias exists but its lead time cannot be known (no_run, run_gone, run_not_ended), "
          "or the model's data cannot be read (invalid_data).",
          "1 when that version has no run (`no_run`), its run is gone (`run_gone`) or has not ended "
          "(`run_not_ended`), or the model's data cannot be read (`invalid_data`)", "registry"),
    # -- serving: metrics/serving.py --------------------------------------------------------------
    _spec("mlops_endpoint_up", "gauge", ("endpoint",), "1 when the endpoint's last synthetic probe succeeded.",
          "1 when the last synthetic probe succeeded", "serving"),
    _spec("mlops_endpoint_probes_total", "counter", ("endpoint", "outcome"), "Synthetic probes by outcome.",
          "probes by outcome: `success`, `http_error`, `timeout`, `connection_error`, `bad_response`", "serving"),
    _spec("mlops_endpoint_probe_duration_seconds", "histogram", ("endpoint",),
          "Wall time of synthetic probes, whatever their outcome.", "probe wall time (buckets 5 ms - 10 s)",
          "serving"),
    _spec("mlops_endpoint_hourly_cost", "gauge", ("endpoint",),
          "Hourly cost in {currency} of the endpoint's machines (all replicas).",
          "hourly cost of the endpoint's machines, all replicas", "serving"),
    _spec("mlops_endpoint_capacity_rps", "gauge", ("endpoint",), "Requests per second the deployment is sized for.",
          "the configured sizing", "serving"),
    _spec("mlops_endpoint_metrics_up", "gauge", ("endpoint",),
          "1 when the server's own metrics were read at the last poll.",
          "1 when the server's own metrics were read at the last poll", "serving"),
    _spec("mlops_endpoint_metrics_scrapes_total", "counter", ("endpoint", "outcome"),
          "Reads of the server's own metrics by outcome.", "reads of the server's metrics by outcome (same outcomes)",
          "serving"),
    _spec("mlops_endpoint_requests_total", "counter", ("endpoint",), "Requests served. " + UPSTREAM_NOTE,
          "requests served (re-counted; upstream restarts do not reset it)", "serving"),
    _spec("mlops_endpoint_errors_total", "counter", ("endpoint",),
          "Requests that failed (server errors). " + UPSTREAM_NOTE, "failed requests, where the server reports them",
          "serving"),
    _spec("mlops_endpoint_request_duration_seconds", "histogram", ("endpoint",),
          "Request latency as the server reports it; servers that give only a sum and a count have just the +Inf "
          "bucket (use _sum/_count for the mean). " + UPSTREAM_NOTE,
          "latency as the server gives it; sum-and-count servers have only the `+Inf` bucket (use "
          "`_sum / _count`)", "serving"),
    _spec("mlops_endpoint_utilization_ratio", "gauge", ("endpoint", "resource"),
          "Utilization 0-1 by resource: what the server reports (gpu, cpu, memory, kv_cache), and capacity = "
          "throughput over the last poll / capacity_rps.",
          "0-1: `gpu`, `cpu`, `memory`, `kv_cache` as reported, and `capacity` = throughput over the last poll / "
          "`capacity_rps`", "serving"),
    # -- money spent idle: metrics/utilization.py -------------------------------------------------
    _spec("mlops_experiment_utilization_ratio", "gauge", ("experiment", "resource"),
          "Cost-weighted mean utilization (0-1) of the experiment's completed runs that logged MLflow system "
          "metrics; resource gpu (mean over a run's GPUs), cpu, gpu_memory (a run's peak). {polled}",
          "how busy the experiment's machines were (cost-weighted, completed runs with system metrics): `gpu`, "
          "`cpu`, `gpu_memory` (peak)", "utilization"),
    _spec("mlops_experiment_idle_cost", "gauge", ("experiment",),
          "Cost in {currency} of the idle share of the experiment's runs: each run's cost x (1 - mean utilization "
          "of its GPUs, else its CPU); runs without system metrics add nothing. {polled}",
          "cumulative cost of the idle share: a run's cost x (1 - utilization of what dominates its price)",
          "utilization"),
    _spec("mlops_runs_with_system_metrics", "gauge", ("experiment",),
          "Runs of the experiment that logged MLflow system metrics (utilization). {polled}",
          "runs whose utilization is known", "utilization"),
    _spec("mlops_runs_without_system_metrics", "gauge", ("experiment",),
          "Runs of the experiment without MLflow system metrics: their idle share is unknown, never guessed. {polled}",
          "runs whose utilization is unknown (turn on system metrics logging)", "utilization"),
    _spec("mlops_run_utilization_ratio", "gauge", (*RUN, "resource"),
          "Utilization (0-1) of one run: the mean of its history once read, the latest value while it runs. "
          + RUN_SERIES_NOTE, "one run's utilization by `resource`", "utilization"),
    _spec("mlops_utilization_runs_pending", "gauge", (),
          "Completed runs with system metrics whose history is not read yet (utilization.max_runs_per_poll a "
          "poll). {polled}", "runs waiting for their system metrics to be read", "utilization"),
    # -- the cloud bill: metrics/billing.py -------------------------------------------------------
    _spec("mlops_cloud_cost", "gauge", ("bill", "month", "provider", "service", "cost_basis"),
          "Cost in {currency} on the cloud bill (FOCUS export) by month of the charge period (UTC), provider and "
          "service; cost_basis billed (the invoice, credits included), effective (amortized) or list. The latest "
          "billing.months months; beyond billing.max_services services per provider the rest as 'other'. {polled}",
          "the bill by `month` (`YYYY-MM`), `provider` and `service`; `cost_basis` `billed` (what the invoice "
          "charges, credits and adjustments included), `effective` (amortized, after commitments) or `list`; "
          "`bill` names the configured export", "billing"),
    _spec("mlops_cloud_cost_by_tag", "gauge", ("bill", "month", "tag", "value", "cost_basis"),
          "Cost in {currency} on the cloud bill by the value of each allocation tag (after allocation.tag_aliases); "
          "'untagged' always shown, beyond allocation.max_values as 'other': each tag's values add up to the "
          "month's total. {polled}",
          "the bill by allocation tag value (after `allocation.tag_aliases`); `untagged` always shown, beyond "
          "`max_values` as `other`; each tag's values add up to the month's total", "billing"),
    _spec("mlops_cloud_compute_cost_by_tag", "gauge", ("bill", "month", "tag", "value", "cost_basis"),
          "The same for the compute part of the bill only (ServiceCategory Compute or AI and Machine Learning): "
          "what MLflow's run estimates price, for reconciliation with mlops_cost_by_tag_month. {polled}",
          "the compute part of the bill (service categories Compute, AI and Machine Learning) by tag value: what "
          "MLflow's estimates price (see `mlops:cloud_compute_bill_over_estimate:ratio`)", "billing"),
    _spec("mlops_cloud_cost_last_charge_timestamp_seconds", "gauge", ("bill", "provider"),
          "End of the latest charge period on the bill: bills arrive a day or two late. {polled}",
          "end of the latest charge period seen: how fresh the bill is (it arrives a day or two late)", "billing"),
    _spec("mlops_cloud_cost_latest_month", "gauge", ("bill", "month", "cost_basis"),
          "Cost in {currency} of the latest month on the bill, all providers and services. {polled}",
          "the whole bill of its latest month (`month` label)", "billing"),
    _spec("mlops_cloud_untagged_ratio", "gauge", ("bill", "tag"),
          "Share of the latest month's billed cost without the allocation tag (0-1). {polled}",
          "share of the latest month's billed cost without the tag: unallocated spend", "billing"),
    _spec("mlops_billing_api_calls_total", "counter", ("bill",),
          "Billed AWS Cost Explorer requests (USD 0.01 each) made since the exporter started. {polled}",
          "Cost Explorer requests made (each billed USD 0.01): `increase(...[1d])` against "
          "`cost_explorer.max_calls_per_day`", "billing"),
    _spec("mlops_cloud_budget_monthly", "gauge", (), "Monthly budget in {currency} of the whole bill, all exports "
          "(billing.monthly_budget).", "the configured monthly budget of the bill", "billing"),
    _spec("mlops_cost_by_tag_month", "gauge", ("month", "tag", "value"),
          "MLflow's estimated compute cost in {currency} by month (runs split at month boundaries, in "
          "runs.timezone) and allocation tag value, the latest billing.months months: the estimate beside the "
          "bill's compute. {polled}",
          "MLflow's estimate by month and allocation tag value, beside `mlops_cloud_compute_cost_by_tag` (when "
          "billing is configured)", "costs"),
    _spec("mlops_price_calibration_factor", "gauge", ("provider",),
          "Effective over list cost of the bill's compute usage (no credits) per catalog provider (aws, gcp, azure), all bills, the "
          "months they show: what catalog list prices are scaled by (pricing.calibrate_from_bill). {polled}",
          "what the bill's compute cost against its list price, per catalog provider (`aws`, `gcp`, `azure`): the "
          "factor applied to catalog prices (`pricing.calibrate_from_bill`)", "costs"),
    _spec("mlops_experiment_calibrated_cost", "gauge", ("experiment",),
          "Cost in {currency} of the experiment's runs with catalog prices scaled by the bill: the machine type's "
          "mlops_price_calibration_ratio where the bill has one, else mlops_price_calibration_factor (other prices "
          "as they are). {polled}",
          "the experiment's cost with catalog prices scaled by the bill's factor, beside the list-price "
          "`mlops_experiment_cost` (`pricing.calibrate_from_bill`)", "costs"),
    _spec("mlops_calibrated_cost_by_tag_month", "gauge", ("month", "tag", "value"),
          "mlops_cost_by_tag_month with catalog prices scaled as in mlops_experiment_calibrated_cost. {polled}",
          "`mlops_cost_by_tag_month` calibrated by the bill, the same values (`pricing.calibrate_from_bill`)", "costs"),
    # -- GenAI traces: metrics/genai.py ---------------------------------------------------------
    _spec("mlops_genai_traces", "gauge", ("experiment", "status"),
          "MLflow traces of the experiment by state (OK, ERROR, IN_PROGRESS); traces whose data cannot be read "
          "are left out (mlops_genai_traces_skipped). Recomputed from MLflow, so it only falls when traces are "
          "deleted. {polled}",
          "traces by state (`OK`, `ERROR`, `IN_PROGRESS`), cumulative; the error ratio is "
          "`ERROR / (OK + ERROR)`", "genai"),
    _spec("mlops_genai_tokens", "gauge", ("experiment", "model", "token_type"),
          "LLM tokens of the experiment's ended traces by model (the LLM spans' mlflow.llm.model; 'unknown' when "
          "none is recorded; beyond traces.max_models the rest as 'other') and type: input (not from a prompt "
          "cache), output, cached_input (read from the cache), cache_creation_input (written to it); the types "
          "are disjoint and add up to MLflow's total_tokens. {polled}",
          "tokens by model and `token_type`: `input` (not cached), `output`, and where recorded `cached_input` "
          "(cache reads) and `cache_creation_input` (cache writes); disjoint, they add up to the total", "genai"),
    _spec("mlops_genai_cost", "gauge", ("experiment", "model"),
          "Cumulative cost in {currency} of the experiment's LLM calls by model: MLflow's recorded cost "
          "(mlflow.llm.cost, USD, used when the currency is USD), else tokens x traces.token_prices, else the "
          "shipped token price catalog (USD only); unpriced tokens add nothing (see "
          "mlops_genai_tokens_by_price_source). {polled}",
          "cumulative LLM cost by model: MLflow's own cost, else tokens x `traces.token_prices`, else the "
          "shipped catalog; never a guess for unpriced models", "genai"),
    _spec("mlops_genai_cost_month_to_date", "gauge", ("experiment",),
          "Cost in {currency} of the experiment's LLM calls in traces started within the current calendar month "
          "in {timezone}. {polled}",
          "LLM cost of traces started this calendar month (`runs.timezone`): what budgets add to compute",
          "genai"),
    _spec("mlops_genai_tokens_by_price_source", "gauge", ("experiment", "model", "price_source"),
          "Tokens by how they were priced: mlflow (MLflow recorded the cost), config (traces.token_prices), "
          "catalog (the shipped list prices) or unpriced (no price known: their cost is not counted). {polled}",
          "tokens by `price_source`: `mlflow`, `config`, `catalog`, or `unpriced` (counted, not costed: add the "
          "model to `traces.token_prices`)", "genai"),
    _spec("mlops_genai_trace_duration_seconds", "histogram", ("experiment",),
          "Latency of the experiment's ended traces (MLflow's execution duration), buckets "
          "traces.duration_buckets. {polled}",
          "latency of ended traces (`traces.duration_buckets`): p95 with `histogram_quantile`", "genai"),
    _spec("mlops_genai_cost_by_user", "gauge", ("experiment", "user"),
          "Cumulative LLM cost in {currency} by the trace's user (mlflow.trace.user; 'unknown' when unset), the "
          "top traces.max_breakdown_values per experiment, the rest as 'other'. {polled}",
          "LLM cost by end user (`traces.breakdown: user`), top N per experiment, the rest `other`", "genai"),
    _spec("mlops_genai_cost_by_session", "gauge", ("experiment", "session"),
          "Cumulative LLM cost in {currency} by the trace's session (mlflow.trace.session; 'unknown' when "
          "unset), the top traces.max_breakdown_values per experiment, the rest as 'other'. {polled}",
          "LLM cost by session (`traces.breakdown: session`), top N per experiment, the rest `other`", "genai"),
    _spec("mlops_genai_traces_skipped", "gauge", ("reason",),
          "Traces left out of every GenAI figure because their data cannot be read, by reason. {polled}",
          "traces left out: `invalid_token_usage` (not whole non-negative numbers, JSON that does not parse), "
          "`invalid_cost`, `unknown_status`, `invalid_time`, `invalid_data`", "genai"),
    _spec("mlops_genai_last_resync_timestamp_seconds", "gauge", (),
          "Unix time of the traces source's last full recount, or check against the server's aggregation.",
          "time of the last recount (or aggregate check) of the traces", "genai"),
    # -- the bill joined to runs (billing.run_join): metrics/bill_join.py ---------------------------
    _spec("mlops_experiment_billed_cost", "gauge", ("experiment", "month", "cost_basis"),
          "Cost in {currency} on the cloud bill joined to the experiment's runs (billing.run_join), by month of the "
          "charge (UTC) and cost basis. {polled}",
          "the bill joined to the experiment's runs by `month`, beside its estimate", "bill_join"),
    _spec("mlops_experiment_billed_runs", "gauge", ("experiment",),
          "Runs of the experiment whose billed cost is complete: joined to the bill, which has charges up to "
          "their end. {polled}", "runs with a complete billed figure", "bill_join"),
    _spec("mlops_run_billed_cost", "gauge", (*RUN, "cost_basis"),
          "Cost in {currency} of one run on the cloud bill, once the bill covers its run time. " + RUN_SERIES_NOTE,
          "one run's billed cost, once the bill covers its run time (before that only its estimate)", "bill_join"),
    _spec("mlops_billing_attributed_cost", "gauge", ("bill", "provider", "month", "cost_basis"),
          "Cost in {currency} on the bill joined to a run (idle time of shared resources not included). {polled}",
          "the part of the bill joined to runs; over `mlops_cloud_cost` it is the attribution coverage "
          "(`mlops:billing_attribution_coverage:ratio`)", "bill_join"),
    _spec("mlops_billing_shared_cost", "gauge", ("bill", "provider", "month", "cost_basis"),
          "Cost in {currency} of bill rows split across several runs (a shared cluster), idle time included. {polled}",
          "rows split across several runs, idle included: the base of the idle share", "bill_join"),
    _spec("mlops_billing_join_idle_cost", "gauge", ("bill", "provider", "month", "key", "cost_basis"),
          "Cost in {currency} of a shared resource's time when none of its runs ran, by join key (a cluster id); "
          "beyond billing.max_join_keys the rest as 'other'. {polled}",
          "idle cost of a shared resource (`key`, e.g. a cluster id) between its runs", "bill_join"),
    _spec("mlops_billing_join_unmatched_cost", "gauge", ("bill", "provider", "month", "cost_basis"),
          "Cost in {currency} of bill rows that carry a join tag no watched run has. {polled}",
          "rows with a join tag that names no watched run (another experiment, a deleted run)", "bill_join"),
    _spec("mlops_price_calibration_ratio", "gauge", ("provider", "instance_type"),
          "Billed over estimated cost of the joined runs with a complete billed figure that ended within "
          "billing.calibration_window, by provider and machine type: how far the prices are from the bill. {polled}",
          "billed over estimated cost of joined runs, by machine type: which prices are off", "bill_join"),
    # -- exporter health: metrics/exporter.py -----------------------------------------------------
    _spec("mlops_exporter_info", "info", ("version", "currency"),
          "Exporter version and the currency of every cost metric.", "the exporter", "exporter"),
    _spec("mlops_source_up", "gauge", ("source",), "1 when the source's last poll succeeded, else 0.",
          "1 when the source's last poll succeeded", "exporter"),
    _spec("mlops_source_poll_duration_seconds", "gauge", ("source",), "Wall time of the source's last poll.",
          "wall time of the last poll", "exporter"),
    _spec("mlops_source_last_success_timestamp_seconds", "gauge", ("source",),
          "Unix time the source last polled successfully (absent before the first success).",
          "time of the last successful poll (alert on staleness with `time() - ...`)", "exporter"),
    _spec("mlops_source_errors_total", "counter", ("source",), "Failed polls of the source since the exporter started.",
          "failed polls since start", "exporter"),
    _spec("mlops_source_polls_total", "counter", ("source",), "Polls of the source since the exporter started.",
          "polls since start", "exporter"),
    _spec("mlops_exporter_config_last_reload_successful", "gauge", (),
          "1 when the last SIGHUP reload of the config succeeded; 0 when it was refused and the previous config "
          "stays in force.",
          "1 when the last SIGHUP reload succeeded, 0 when it was refused (absent before any reload)", "exporter"),
    _spec("mlops_derived_input_pending", "gauge", ("figure", "source"),
          "1 while the figure waits for the source's first good poll (the figure is absent until every input is "
          "in), else 0. figure: budgets, calibration or bill_join.",
          "1 while a figure joined from several sources (`figure`: budgets, calibration, bill_join) waits for "
          "`source`'s first good poll: the figure is absent until all its inputs are in, never partial", "exporter"),
)
BY_NAME = {spec.name: spec for spec in CATALOGUE}


def family(name: str, **values: str) -> Metric:
    """The empty family of a declared metric, by the name Prometheus shows (KeyError for any other)."""
    return BY_NAME[name].family(**values)


def series_names(spec: MetricSpec) -> tuple[str, ...]:
    """The sample names a metric shows up as in PromQL."""
    if spec.kind == "histogram":
        return tuple(f"{spec.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return (spec.name,)


def reference_table() -> str:
    """The README's metric reference, in markdown."""
    kinds = {"info": "info (gauge)"}
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for spec in CATALOGUE:
        labels = ", ".join(spec.labels) or "-"
        rows.append(f"| `{spec.name}` | {kinds.get(spec.kind, spec.kind)} | {labels} | {spec.meaning} |")
    return "\n".join(rows) + "\n"


BEGIN = "<!-- metric reference: generated from exporter/mlops_kpi_exporter/metrics/catalogue.py (make generate) -->\n"
END = "<!-- end of metric reference -->\n"


def with_reference(readme: str) -> str:
    """The README with its generated metric reference brought up to date."""
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(readme):
        raise ValueError("the README has no generated metric reference markers")
    return pattern.sub(lambda _: BEGIN + reference_table() + END, readme)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--write":
        sys.exit("usage: python -m mlops_kpi_exporter.metrics.catalogue --write README.md")
    path = Path(sys.argv[2])
    path.write_text(with_reference(path.read_text(encoding="utf-8")), encoding="utf-8")
