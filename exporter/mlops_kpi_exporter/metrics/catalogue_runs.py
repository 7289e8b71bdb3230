"""The catalogue's metrics of MLflow runs: their cost, activity, month to date and budgets, and the
money spent idle."""

from __future__ import annotations

from mlops_kpi_exporter.metrics.spec import MetricSpec, RUN, RUN_SERIES_NOTE, entry

COSTS: tuple[MetricSpec, ...] = (  # costs: metrics/costs.py
    entry("mlops_experiment_cost", "gauge", ("experiment", "status"),
          "Cumulative compute cost in {currency} of the experiment's runs by run status; running runs accrue "
          "up to the poll, STALE runs stopped at their last sign of life; each machine-hour once (child runs "
          "on their parent's machine are in the parent's cost). Recomputed from MLflow, so it only falls when "
          "runs are deleted. {polled}",
          "cumulative compute cost of the experiment's runs by run status (FINISHED, FAILED, KILLED, RUNNING, "
          "STALE, SCHEDULED); running runs accrue to the poll, STALE ones stop at their last sign of life; each "
          "machine-hour once: child runs on their parent's machine count in the parent", "costs"),
    entry("mlops_experiment_run_seconds", "gauge", ("experiment", "status"),
          "Cumulative machine time of the experiment's runs by run status, each machine-hour once (child runs on "
          "their parent's machine are in the parent's). {polled}",
          "cumulative machine time, each machine-hour once (as the cost)", "costs"),
    entry("mlops_runs", "gauge", ("experiment", "status"),
          "Runs of the experiment by run status, child runs (tuning trials) included. {polled}",
          "number of runs, child runs included", "costs"),
    entry("mlops_running_hourly_cost", "gauge", ("experiment",),
          "Summed hourly rate in {currency} of the experiment's runs RUNNING now: the current burn rate. {polled}",
          "summed hourly rate of the runs RUNNING now: the burn rate (0 for every watched experiment with none)",
          "costs"),
    entry("mlops_experiment_info", "info", ("experiment", "experiment_id"),
          "Watched MLflow experiments, for joins and links.", "watched experiments, for joins and links", "costs"),
    entry("mlops_run_cost", "gauge", RUN,
          "Compute cost in {currency} of one run (a child on its parent's machine: its share of the parent's). "
          + RUN_SERIES_NOTE,
          "cost of one run (a child on its parent's machine: its share): open runs first (RUNNING, STALE), then the "
          "most recently ended, at most `runs.max_run_series` series", "costs"),
    entry("mlops_run_seconds", "gauge", RUN, "Run time of one run. " + RUN_SERIES_NOTE, "run time of one run",
          "costs"),
    entry("mlops_run_hourly_cost", "gauge", RUN, "Hourly rate in {currency} of one run's machines. " + RUN_SERIES_NOTE,
          "hourly rate of one run's machines", "costs"),
    entry("mlops_run_start_timestamp_seconds", "gauge", RUN, "Start time of one run. " + RUN_SERIES_NOTE,
          "start time of one run", "costs"),
    entry("mlops_run_info", "info", (*RUN, "instance_type", "estimator", "price_source", "parent_run_id", "machine"),
          "Machine, estimator and price source of one run; its parent run, and machine=parent when it ran on "
          "its parent's machine (its cost is then a share of the parent's). " + RUN_SERIES_NOTE,
          "what the run ran on and how it was priced; `parent_run_id` and `machine` (`own`, or `parent` for a "
          "child costed as a share of its parent's machine)", "costs"),
    entry("mlops_runs_skipped", "gauge", ("reason",),
          "Runs left out of every figure because their data cannot be costed, by reason. {polled}",
          'runs left out because their data cannot be costed (see "Skipped runs"): `missing_start_time`, '
          "`missing_end_time`, `start_before_2000`, `start_in_future`, `end_in_future`, `end_before_start`, "
          "`unknown_status`, `invalid_hourly_cost`, `invalid_instance_count`, `invalid_data`", "costs"),
    entry("mlops_runs_by_price_source", "gauge", ("experiment", "source"),
          "Runs by where their hourly rate came from: tag, config, catalog, databricks (a cluster's VMs and DBUs), "
          "databricks_no_dbu_rate, or default (machine unknown).",
          "runs priced by `tag`, `config`, `catalog`, `databricks` (a cluster's VMs and DBUs, see \"Databricks "
          "clusters\"), `databricks_no_dbu_rate` (its VMs only: a node type has no DBU rate, an underestimate) or "
          "`default`", "costs"),
    entry("mlops_mlflow_runs_tracked", "gauge", (), "Runs held by the exporter's ledger.",
          "runs held by the exporter", "costs"),
    entry("mlops_runs_stale", "gauge", ("experiment",),
          "Runs left RUNNING in MLflow with no sign of life (no metric logged) for runs.stale_after: their process "
          "is gone; costed to their last sign of life, shown with status STALE. {polled}",
          "runs left `RUNNING` with no sign of life for `runs.stale_after` (crashed, killed, evicted): end them in "
          "MLflow (runbook `MLStaleRuns`)", "costs"),
    entry("mlops_mlflow_last_full_sync_timestamp_seconds", "gauge", (),
          "Unix time of the last full reconciliation with MLflow.", "time of the last full reconciliation", "costs"),
    entry("mlops_cost_by_tag", "gauge", ("tag", "value"),
          "Cumulative compute cost in {currency} of all watched runs by the value of each allocation tag; runs "
          "without the tag count as 'untagged' (always shown), the values beyond allocation.max_values as 'other', "
          "so each tag's values add up to the total. {polled}",
          "cumulative cost by allocation tag value; `untagged` always shown, beyond `max_values` summed as "
          "`other`; each tag's values add up to the total", "costs"),
    entry("mlops_experiment_artifact_bytes", "gauge", ("experiment",),
          "Bytes of artifacts logged by the experiment's completed runs (each run listed once). {polled}",
          "artifact bytes of completed runs (when `artifacts.enabled`)", "costs"),
    entry("mlops_experiment_storage_monthly_cost", "gauge", ("experiment",),
          "Monthly cost in {currency} of storing those artifacts at pricing.storage_gb_month (GB = 2^30 bytes).",
          "monthly cost of storing them", "costs"),
    entry("mlops_artifact_runs_pending", "gauge", (), "Completed runs whose artifacts are not listed yet.",
          "completed runs not listed yet", "costs"),
    entry("mlops_artifact_listing_errors_total", "counter", (), "Runs whose artifacts could not be listed.",
          "runs whose artifacts could not be listed", "costs"),
    entry("mlops_fixed_cost_monthly", "gauge", ("category", "project"),
          "Monthly fixed cost in {currency} by category and project, from the config (fixed_costs).",
          "fixed monthly costs from the config", "costs"),
)


ACTIVITY: tuple[MetricSpec, ...] = (  # activity: metrics/activity.py
    entry("mlops_runs_by_start_hour", "gauge", ("experiment", "hour"),
          "Runs started within runs.activity_window, by hour of day (0-23, {timezone}), child runs included. {polled}",
          "runs started within `runs.activity_window`, by hour of day 0-23 in `runs.timezone` (the chapter's "
          '"run start times" chart)', "activity"),
    entry("mlops_runs_by_estimator", "gauge", ("experiment", "estimator"),
          "Runs by estimator (the first of runs.estimator_keys found in tags, then params), child runs included; "
          "beyond runs.max_estimators per experiment they count as 'other'. {polled}",
          "runs by estimator, top `runs.max_estimators` per experiment, the rest as `other`; `unknown` when no "
          "key is set (the chapter's estimator distribution)", "activity"),
    entry("mlops_completed_run_duration_seconds", "histogram", ("experiment",),
          "Run time of the experiment's completed runs (FINISHED, FAILED, KILLED), child runs included. {polled}",
          "run time of completed runs (the chapter's run-time strip chart)", "activity"),
    entry("mlops_completed_run_cost", "histogram", ("experiment",),
          "Compute cost in {currency} of the experiment's completed runs that cost on their own machine (child runs "
          "on their parent's machine are in the parent's). {polled}",
          "cost of completed runs on their own machine (children on their parent's are in the parent's)",
          "activity"),
)


BUDGETS: tuple[MetricSpec, ...] = (  # budgets: metrics/budgets.py
    entry("mlops_experiment_cost_month_to_date", "gauge", ("experiment",),
          "Compute cost in {currency} of the experiment's runs within the current calendar month in {timezone}; "
          "runs spanning the month start count only their hours in it; running runs up to the poll. {polled}",
          "compute cost within the current calendar month (runs split at the month boundary)", "budgets"),
    entry("mlops_experiment_cost_forecast_month", "gauge", ("experiment",),
          "Straight-line forecast in {currency} of the experiment's compute cost for the whole current calendar "
          "month in {timezone}: month-to-date x month length / time elapsed (at least one day). {polled}",
          "straight-line forecast of the month's compute cost (elapsed time at least one day)", "budgets"),
    entry("mlops_budget_monthly", "gauge", ("budget",), "Monthly budget in {currency}.",
          "the configured monthly budget", "budgets"),
    entry("mlops_budget_cost_month_to_date", "gauge", ("budget",),
          "Month-to-date compute cost in {currency} of the experiments the budget covers. {polled}",
          "month-to-date cost of the experiments the budget covers", "budgets"),
    entry("mlops_budget_cost_forecast_month", "gauge", ("budget",),
          "Straight-line month-end forecast in {currency} of the experiments the budget covers. {polled}",
          "month-end forecast of the same", "budgets"),
    entry("mlops_budget_info", "info", ("budget", "experiments", "include"),
          "Experiment globs each budget covers, and what spend it counts (compute, genai).",
          "the globs each budget covers and what it counts (`compute`, `genai`, or `compute+genai`)", "budgets"),
)


UTILIZATION: tuple[MetricSpec, ...] = (  # money spent idle: metrics/utilization.py
    entry("mlops_experiment_utilization_ratio", "gauge", ("experiment", "resource"),
          "Cost-weighted mean utilization (0-1) of the experiment's completed runs that logged MLflow system "
          "metrics; resource gpu (mean over a run's GPUs), cpu, gpu_memory (a run's peak). {polled}",
          "how busy the experiment's machines were (cost-weighted, completed runs with system metrics): `gpu`, "
          "`cpu`, `gpu_memory` (peak)", "utilization"),
    entry("mlops_experiment_idle_cost", "gauge", ("experiment",),
          "Cost in {currency} of the idle share of the experiment's runs: each run's cost x (1 - mean utilization "
          "of its GPUs, else its CPU); runs without system metrics add nothing. {polled}",
          "cumulative cost of the idle share: a run's cost x (1 - utilization of what dominates its price)",
          "utilization"),
    entry("mlops_runs_with_system_metrics", "gauge", ("experiment",),
          "Runs of the experiment that logged MLflow system metrics (utilization). {polled}",
          "runs whose utilization is known", "utilization"),
    entry("mlops_runs_without_system_metrics", "gauge", ("experiment",),
          "Runs of the experiment without MLflow system metrics: their idle share is unknown, never guessed. {polled}",
          "runs whose utilization is unknown (turn on system metrics logging)", "utilization"),
    entry("mlops_run_utilization_ratio", "gauge", (*RUN, "resource"),
          "Utilization (0-1) of one run: the mean of its history once read, the latest value while it runs. "
          + RUN_SERIES_NOTE, "one run's utilization by `resource`", "utilization"),
    entry("mlops_utilization_runs_pending", "gauge", (),
          "Completed runs with system metrics whose history is not read yet (utilization.max_runs_per_poll a "
          "poll). {polled}", "runs waiting for their system metrics to be read", "utilization"),
)
