"""The catalogue's metrics of MLflow's AI Gateway: its budget policies, their limits and the spend of
their current windows."""

from __future__ import annotations

from mlops_kpi_exporter.metrics.spec import MetricSpec, entry

# The gateway counts spend per MLflow server process with its default (in-memory) tracker: the figure
# is what the process that answered the poll holds.
PROCESS_NOTE = ("As the MLflow server process that answered counts it (per process with MLflow's "
                "in-memory tracker, shared with its Redis tracker).")
SHOWN_NOTE = "At most gateway.max_policies policies, the most used of their limit first."

GATEWAY: tuple[MetricSpec, ...] = (  # the AI Gateway's budgets: metrics/gateway.py
    entry("mlops_gateway_budget_info", "info", ("policy", "scope", "target", "action", "unit", "duration"),
          "A budget policy of MLflow's AI Gateway: its scope (global, workspace, endpoint, user) and target "
          "(the endpoint id or user name), what MLflow does when the limit is reached (alert: a webhook; reject: "
          "HTTP 429 to the calls it covers), its currency and window length. " + SHOWN_NOTE + " {polled}",
          "a gateway budget policy: `scope` and `target`, `action` (`alert` or `reject`), `unit` (the currency), "
          "`duration` (the window: `15m`, `1d`, `1w`, `1mo`)", "gateway"),
    entry("mlops_gateway_budget_limit", "gauge", ("policy",),
          "The policy's limit per window, in its unit (mlops_gateway_budget_info). {polled}",
          "the policy's limit per window, in its `unit`", "gateway"),
    entry("mlops_gateway_budget_spend", "gauge", ("policy",),
          "Spend of the policy's current window, in its unit, from MLflow's own budget windows. "
          + PROCESS_NOTE + " Absent while MLflow has no window for the policy. {polled}",
          "spend of the current window as MLflow counts it (per server process with the in-memory tracker)",
          "gateway"),
    entry("mlops_gateway_budget_window_start_timestamp_seconds", "gauge", ("policy",),
          "Start of the policy's current budget window (Unix time). {polled}",
          "start of the current window", "gateway"),
    entry("mlops_gateway_budget_window_end_timestamp_seconds", "gauge", ("policy",),
          "End of the policy's current budget window (Unix time): MLflow starts the next window, from 0, at the "
          "first call after it. {polled}",
          "end of the current window; past it, the spend shown is the ended window's until MLflow starts the next",
          "gateway"),
    entry("mlops_gateway_budget_policies", "gauge", (),
          "Budget policies MLflow's AI Gateway lists, shown or not. {polled}",
          "budget policies MLflow lists", "gateway"),
    entry("mlops_gateway_budget_policies_skipped", "gauge", ("reason",),
          "Budget policies or windows not shown, by reason: over_max_policies (beyond gateway.max_policies), "
          "invalid_data (a policy or window that cannot be read). {polled}",
          "policies or windows not shown: `over_max_policies`, `invalid_data`", "gateway"),
)
