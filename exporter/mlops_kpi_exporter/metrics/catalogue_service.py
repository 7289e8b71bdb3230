"""The catalogue's metrics of models and their serving: KPIs, the model registry, serving endpoints;
and of the exporter's own health."""

from __future__ import annotations

from mlops_kpi_exporter.metrics.spec import MetricSpec, UPSTREAM_NOTE, entry

KPIS: tuple[MetricSpec, ...] = (  # kpis: metrics/kpis.py
    entry("mlops_kpi", "gauge", ("kpi", "experiment"),
          "Current value of a business or quality KPI read from MLflow metrics. {polled}",
          "current value of a KPI (absent when unknown)", "kpis"),
    entry("mlops_kpi_target", "gauge", ("kpi",), "Target of the KPI, from the config.", "its target", "kpis"),
    entry("mlops_kpi_target_met", "gauge", ("kpi",),
          "1 when the KPI meets its target in its direction, 0 when not; absent when unknown.",
          "1 when the KPI meets its target in its direction, else 0", "kpis"),
    entry("mlops_kpi_source_info", "info",
          ("kpi", "experiment", "metric", "source", "direction", "run_id", "model", "alias", "version"),
          "Where each KPI's current value comes from: the run and, for model_alias KPIs, the model version.",
          "where the value came from, for links", "kpis"),
    entry("mlops_kpi_missing", "gauge", ("kpi", "reason"),
          "1 for a KPI that could not be read, with the reason; such a KPI has no value.",
          "1 for a KPI that could not be read: `experiment_not_found`, `metric_missing`, `alias_not_found`, "
          "`run_gone`, `not_a_number` (NaN or infinite), `invalid_data`", "kpis"),
)


REGISTRY: tuple[MetricSpec, ...] = (  # registry: metrics/registry.py
    entry("mlops_registered_models", "gauge", (), "Registered models watched. {polled}", "registered models watched",
          "registry"),
    entry("mlops_model_versions", "gauge", ("model",), "Versions of a registered model. {polled}",
          "versions of a model", "registry"),
    entry("mlops_model_version_info", "info", ("model", "version", "alias", "run_id"),
          "A model version that holds an alias, with its source run.", "versions holding an alias", "registry"),
    entry("mlops_model_version_stage_info", "info", ("model", "version", "stage", "run_id"),
          "A model version in a legacy Staging or Production stage.",
          "versions in a legacy Staging or Production stage", "registry"),
    entry("mlops_model_deploy_lead_time_seconds", "gauge", ("model",),
          "Time from the end of the source run to the creation of the version holding the '{deploy_alias}' alias "
          "(registry.deploy_alias): the model deployment time KPI. {polled}",
          "end of the source run to creation of the version holding `registry.deploy_alias` (0 when registered "
          "before the run ended)", "registry"),
    entry("mlops_model_deploy_lead_time_unknown", "gauge", ("model", "reason"),
          "1 when the deploy alias exists but its lead time cannot be known (no_run, run_gone, run_not_ended), "
          "or the model's data cannot be read (invalid_data).",
          "1 when that version has no run (`no_run`), its run is gone (`run_gone`) or has not ended "
          "(`run_not_ended`), or the model's data cannot be read (`invalid_data`)", "registry"),
)


SERVING: tuple[MetricSpec, ...] = (  # serving: metrics/serving.py
    entry("mlops_endpoint_up", "gauge", ("endpoint",), "1 when the endpoint's last synthetic probe succeeded.",
          "1 when the last synthetic probe succeeded", "serving"),
    entry("mlops_endpoint_probes_total", "counter", ("endpoint", "outcome"), "Synthetic probes by outcome.",
          "probes by outcome: `success`, `http_error`, `timeout`, `connection_error`, `bad_response`", "serving"),
    entry("mlops_endpoint_probe_duration_seconds", "histogram", ("endpoint",),
          "Wall time of synthetic probes, whatever their outcome.", "probe wall time (buckets 5 ms - 10 s)",
          "serving"),
    entry("mlops_endpoint_hourly_cost", "gauge", ("endpoint",),
          "Hourly cost in {currency} of the endpoint's machines (all replicas).",
          "hourly cost of the endpoint's machines, all replicas", "serving"),
    entry("mlops_endpoint_capacity_rps", "gauge", ("endpoint",), "Requests per second the deployment is sized for.",
          "the configured sizing", "serving"),
    entry("mlops_endpoint_metrics_up", "gauge", ("endpoint",),
          "1 when the server's own metrics were read at the last poll.",
          "1 when the server's own metrics were read at the last poll", "serving"),
    entry("mlops_endpoint_metrics_scrapes_total", "counter", ("endpoint", "outcome"),
          "Reads of the server's own metrics by outcome; unmatched: a page with none of the preset's series.",
          "reads of the server's metrics by outcome: the probe's, and `unmatched` (a page with none of the "
          "preset's request or latency series: the wrong preset, or a metric renamed upstream; `metrics_up` 0)",
          "serving"),
    entry("mlops_endpoint_requests_total", "counter", ("endpoint",),
          "Prediction requests served, whatever their outcome (health, metrics and docs routes left out). "
          + UPSTREAM_NOTE,
          "prediction requests, whatever their outcome; health, readiness, metrics and docs routes left out where "
          "the server labels routes (re-counted; upstream restarts do not reset it)", "serving"),
    entry("mlops_endpoint_errors_total", "counter", ("endpoint",),
          "Prediction requests the server failed (5xx, or its own failure counter). " + UPSTREAM_NOTE,
          "server faults (5xx or the server's failure counter), where the server reports them; not shown for a "
          "server-wide counter on a page filtered to one model", "serving"),
    entry("mlops_endpoint_client_errors_total", "counter", ("endpoint",),
          "Prediction requests the server refused as malformed (4xx). " + UPSTREAM_NOTE,
          "requests refused as the client's fault (4xx), apart from errors: they burn no error budget", "serving"),
    entry("mlops_endpoint_request_duration_seconds", "histogram", ("endpoint",),
          "Request latency as the server reports it; servers that give only a sum and a count have just the +Inf "
          "bucket (use _sum/_count for the mean). " + UPSTREAM_NOTE,
          "latency as the server gives it; sum-and-count servers have only the `+Inf` bucket (use "
          "`_sum / _count`)", "serving"),
    entry("mlops_endpoint_utilization_ratio", "gauge", ("endpoint", "resource"),
          "Utilization 0-1 by resource: what the server reports (gpu, cpu, memory, kv_cache), and capacity = "
          "throughput over the last poll / capacity_rps.",
          "0-1: `gpu`, `cpu`, `memory`, `kv_cache` as reported, and `capacity` = throughput over the last poll / "
          "`capacity_rps`", "serving"),
)


EXPORTER: tuple[MetricSpec, ...] = (  # exporter health: metrics/exporter.py
    entry("mlops_exporter_info", "info", ("version", "currency"),
          "Exporter version and the currency of every cost metric.", "the exporter", "exporter"),
    entry("mlops_source_up", "gauge", ("source",), "1 when the source's last poll succeeded, else 0.",
          "1 when the source's last poll succeeded", "exporter"),
    entry("mlops_source_poll_duration_seconds", "gauge", ("source",), "Wall time of the source's last poll.",
          "wall time of the last poll", "exporter"),
    entry("mlops_source_last_success_timestamp_seconds", "gauge", ("source",),
          "Unix time the source last polled successfully (absent before the first success).",
          "time of the last successful poll (alert on staleness with `time() - ...`)", "exporter"),
    entry("mlops_source_errors_total", "counter", ("source",), "Failed polls of the source since the exporter started.",
          "failed polls since start", "exporter"),
    entry("mlops_source_polls_total", "counter", ("source",), "Polls of the source since the exporter started.",
          "polls since start", "exporter"),
    entry("mlops_exporter_config_last_reload_successful", "gauge", (),
          "1 when the last SIGHUP reload of the config succeeded; 0 when it was refused and the previous config "
          "stays in force.",
          "1 when the last SIGHUP reload succeeded, 0 when it was refused (absent before any reload)", "exporter"),
    entry("mlops_derived_input_pending", "gauge", ("figure", "source"),
          "1 while the figure waits for the source's first good poll (the figure is absent until every input is "
          "in), else 0. figure: budgets, calibration or bill_join.",
          "1 while a figure joined from several sources (`figure`: budgets, calibration, bill_join) waits for "
          "`source`'s first good poll: the figure is absent until all its inputs are in, never partial", "exporter"),
)
