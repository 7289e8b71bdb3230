"""The catalogue's metrics of spend beyond the runs' estimate: the cloud bill, GenAI traces, and the
bill joined to runs."""

from __future__ import annotations

from mlops_kpi_exporter.metrics.spec import MetricSpec, RUN, RUN_SERIES_NOTE, entry

BILLING: tuple[MetricSpec, ...] = (  # the cloud bill: metrics/billing.py
    entry("mlops_cloud_cost", "gauge", ("bill", "month", "provider", "service", "cost_basis"),
          "Cost in {currency} on the cloud bill (FOCUS export) by month of the charge period (UTC), provider and "
          "service; cost_basis billed (the invoice, credits included), effective (amortized) or list. The latest "
          "billing.months months; beyond billing.max_services services per provider the rest as 'other'. {polled}",
          "the bill by `month` (`YYYY-MM`), `provider` and `service`; `cost_basis` `billed` (what the invoice "
          "charges, credits and adjustments included), `effective` (amortized, after commitments) or `list`; "
          "`bill` names the configured export", "billing"),
    entry("mlops_cloud_cost_by_tag", "gauge", ("bill", "month", "tag", "value", "cost_basis"),
          "Cost in {currency} on the cloud bill by the value of each allocation tag (after allocation.tag_aliases); "
          "'untagged' always shown, beyond allocation.max_values as 'other': each tag's values add up to the "
          "month's total. {polled}",
          "the bill by allocation tag value (after `allocation.tag_aliases`); `untagged` always shown, beyond "
          "`max_values` as `other`; each tag's values add up to the month's total", "billing"),
    entry("mlops_cloud_compute_cost_by_tag", "gauge", ("bill", "month", "tag", "value", "cost_basis"),
          "The same for the compute part of the bill only (ServiceCategory Compute or AI and Machine Learning): "
          "what MLflow's run estimates price, for reconciliation with mlops_cost_by_tag_month. {polled}",
          "the compute part of the bill (service categories Compute, AI and Machine Learning) by tag value: what "
          "MLflow's estimates price (see `mlops:cloud_compute_bill_over_estimate:ratio`)", "billing"),
    entry("mlops_cloud_cost_last_charge_timestamp_seconds", "gauge", ("bill", "provider"),
          "End of the latest charge period on the bill: bills arrive a day or two late. {polled}",
          "end of the latest charge period seen: how fresh the bill is (it arrives a day or two late)", "billing"),
    entry("mlops_cloud_cost_latest_month", "gauge", ("bill", "month", "cost_basis"),
          "Cost in {currency} of the latest month on the bill, all providers and services. {polled}",
          "the whole bill of its latest month (`month` label)", "billing"),
    entry("mlops_cloud_untagged_ratio", "gauge", ("bill", "tag"),
          "Share of the latest month's billed cost without the allocation tag (0-1). {polled}",
          "share of the latest month's billed cost without the tag: unallocated spend", "billing"),
    entry("mlops_billing_api_calls_total", "counter", ("bill",),
          "Billed AWS Cost Explorer requests (USD 0.01 each) made since the exporter started. {polled}",
          "Cost Explorer requests made (each billed USD 0.01): `increase(...[1d])` against "
          "`cost_explorer.max_calls_per_day`", "billing"),
    entry("mlops_cloud_budget_monthly", "gauge", (), "Monthly budget in {currency} of the whole bill, all exports "
          "(billing.monthly_budget).", "the configured monthly budget of the bill", "billing"),
    entry("mlops_cost_by_tag_month", "gauge", ("month", "tag", "value"),
          "MLflow's estimated compute cost in {currency} by month (runs split at month boundaries, in "
          "runs.timezone) and allocation tag value, the latest billing.months months: the estimate beside the "
          "bill's compute. {polled}",
          "MLflow's estimate by month and allocation tag value, beside `mlops_cloud_compute_cost_by_tag` (when "
          "billing is configured)", "costs"),
    entry("mlops_price_calibration_factor", "gauge", ("provider",),
          "Effective over list cost of the bill's compute usage (no credits) per catalog provider (aws, gcp, azure), all bills, the "
          "months they show: what catalog list prices are scaled by (pricing.calibrate_from_bill). {polled}",
          "what the bill's compute cost against its list price, per catalog provider (`aws`, `gcp`, `azure`): the "
          "factor applied to catalog prices (`pricing.calibrate_from_bill`)", "costs"),
    entry("mlops_experiment_calibrated_cost", "gauge", ("experiment",),
          "Cost in {currency} of the experiment's runs with catalog prices scaled by the bill: the machine type's "
          "mlops_price_calibration_ratio where the bill has one, else mlops_price_calibration_factor (other prices "
          "as they are). {polled}",
          "the experiment's cost with catalog prices scaled by the bill's factor, beside the list-price "
          "`mlops_experiment_cost` (`pricing.calibrate_from_bill`)", "costs"),
    entry("mlops_calibrated_cost_by_tag_month", "gauge", ("month", "tag", "value"),
          "mlops_cost_by_tag_month with catalog prices scaled as in mlops_experiment_calibrated_cost. {polled}",
          "`mlops_cost_by_tag_month` calibrated by the bill, the same values (`pricing.calibrate_from_bill`)", "costs"),
)


GENAI: tuple[MetricSpec, ...] = (  # GenAI traces: metrics/genai.py
    entry("mlops_genai_traces", "gauge", ("experiment", "status"),
          "MLflow traces of the experiment by state (OK, ERROR, IN_PROGRESS); traces whose data cannot be read "
          "are left out (mlops_genai_traces_skipped). Recomputed from MLflow, so it only falls when traces are "
          "deleted. {polled}",
          "traces by state (`OK`, `ERROR`, `IN_PROGRESS`), cumulative; the error ratio is "
          "`ERROR / (OK + ERROR)`", "genai"),
    entry("mlops_genai_tokens", "gauge", ("experiment", "model", "token_type"),
          "LLM tokens of the experiment's ended traces by model (the LLM spans' mlflow.llm.model; 'unknown' when "
          "none is recorded; beyond traces.max_models the rest as 'other') and type: input (not from a prompt "
          "cache), output, cached_input (read from the cache), cache_creation_input (written to it); the types "
          "are disjoint and add up to MLflow's total_tokens. {polled}",
          "tokens by model and `token_type`: `input` (not cached), `output`, and where recorded `cached_input` "
          "(cache reads) and `cache_creation_input` (cache writes); disjoint, they add up to the total", "genai"),
    entry("mlops_genai_cost", "gauge", ("experiment", "model"),
          "Cumulative cost in {currency} of the experiment's LLM calls by model: MLflow's recorded cost "
          "(mlflow.llm.cost, USD, used when the currency is USD), else tokens x traces.token_prices, else the "
          "shipped token price catalog (USD only); unpriced tokens add nothing (see "
          "mlops_genai_tokens_by_price_source). {polled}",
          "cumulative LLM cost by model: MLflow's own cost, else tokens x `traces.token_prices`, else the "
          "shipped catalog; never a guess for unpriced models", "genai"),
    entry("mlops_genai_cost_month_to_date", "gauge", ("experiment",),
          "Cost in {currency} of the experiment's LLM calls in traces started within the current calendar month "
          "in {timezone}. {polled}",
          "LLM cost of traces started this calendar month (`runs.timezone`): what budgets add to compute",
          "genai"),
    entry("mlops_genai_tokens_by_price_source", "gauge", ("experiment", "model", "price_source"),
          "Tokens by how they were priced: mlflow (MLflow recorded the cost), config (traces.token_prices), "
          "catalog (the shipped list prices) or unpriced (no price known: their cost is not counted). {polled}",
          "tokens by `price_source`: `mlflow`, `config`, `catalog`, or `unpriced` (counted, not costed: add the "
          "model to `traces.token_prices`)", "genai"),
    entry("mlops_genai_trace_duration_seconds", "histogram", ("experiment",),
          "Latency of the experiment's ended traces (MLflow's execution duration), buckets "
          "traces.duration_buckets. {polled}",
          "latency of ended traces (`traces.duration_buckets`): p95 with `histogram_quantile`", "genai"),
    entry("mlops_genai_cost_by_user", "gauge", ("experiment", "user"),
          "Cumulative LLM cost in {currency} by the trace's user (mlflow.trace.user; 'unknown' when unset), the "
          "top traces.max_breakdown_values per experiment, the rest as 'other'. {polled}",
          "LLM cost by end user (`traces.breakdown: user`), top N per experiment, the rest `other`", "genai"),
    entry("mlops_genai_cost_by_session", "gauge", ("experiment", "session"),
          "Cumulative LLM cost in {currency} by the trace's session (mlflow.trace.session; 'unknown' when "
          "unset), the top traces.max_breakdown_values per experiment, the rest as 'other'. {polled}",
          "LLM cost by session (`traces.breakdown: session`), top N per experiment, the rest `other`", "genai"),
    entry("mlops_genai_traces_skipped", "gauge", ("reason",),
          "Traces left out of every GenAI figure because their data cannot be read, by reason. {polled}",
          "traces left out: `invalid_token_usage` (not whole non-negative numbers, JSON that does not parse), "
          "`invalid_cost`, `unknown_status`, `invalid_time`, `invalid_data`", "genai"),
    entry("mlops_genai_last_resync_timestamp_seconds", "gauge", (),
          "Unix time of the traces source's last full recount, or check against the server's aggregation.",
          "time of the last recount (or aggregate check) of the traces", "genai"),
)


BILL_JOIN: tuple[MetricSpec, ...] = (  # the bill joined to runs (billing.run_join): metrics/bill_join.py
    entry("mlops_experiment_billed_cost", "gauge", ("experiment", "month", "cost_basis"),
          "Cost in {currency} on the cloud bill joined to the experiment's runs (billing.run_join), by month of the "
          "charge (UTC) and cost basis. {polled}",
          "the bill joined to the experiment's runs by `month`, beside its estimate", "bill_join"),
    entry("mlops_experiment_billed_runs", "gauge", ("experiment",),
          "Runs of the experiment whose billed cost is complete: joined to the bill, which has charges up to "
          "their end. {polled}", "runs with a complete billed figure", "bill_join"),
    entry("mlops_run_billed_cost", "gauge", (*RUN, "cost_basis"),
          "Cost in {currency} of one run on the cloud bill, once the bill covers its run time. " + RUN_SERIES_NOTE,
          "one run's billed cost, once the bill covers its run time (before that only its estimate)", "bill_join"),
    entry("mlops_billing_attributed_cost", "gauge", ("bill", "provider", "month", "cost_basis"),
          "Cost in {currency} on the bill joined to a run (idle time of shared resources not included). {polled}",
          "the part of the bill joined to runs; over `mlops_cloud_cost` it is the attribution coverage "
          "(`mlops:billing_attribution_coverage:ratio`)", "bill_join"),
    entry("mlops_billing_shared_cost", "gauge", ("bill", "provider", "month", "cost_basis"),
          "Cost in {currency} of bill rows split across several runs (a shared cluster), idle time included. {polled}",
          "rows split across several runs, idle included: the base of the idle share", "bill_join"),
    entry("mlops_billing_join_idle_cost", "gauge", ("bill", "provider", "month", "key", "cost_basis"),
          "Cost in {currency} of a shared resource's time when none of its runs ran, by join key (a cluster id); "
          "beyond billing.max_join_keys the rest as 'other'. {polled}",
          "idle cost of a shared resource (`key`, e.g. a cluster id) between its runs", "bill_join"),
    entry("mlops_billing_join_unmatched_cost", "gauge", ("bill", "provider", "month", "cost_basis"),
          "Cost in {currency} of bill rows that carry a join tag no watched run has. {polled}",
          "rows with a join tag that names no watched run (another experiment, a deleted run)", "bill_join"),
    entry("mlops_price_calibration_ratio", "gauge", ("provider", "instance_type"),
          "Billed over estimated cost of the joined runs with a complete billed figure that ended within "
          "billing.calibration_window, by provider and machine type: how far the prices are from the bill. {polled}",
          "billed over estimated cost of joined runs, by machine type: which prices are off", "bill_join"),
)
