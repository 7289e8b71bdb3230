"""The budgets of MLflow's AI Gateway: each policy shown, its limit, the spend and bounds of its current
window, and how many policies there are. What the gateway source (sources/gateway.py) read, rendered.

    mlops_gateway_budget_info{action="reject",duration="1d",policy="bp-1",scope="global",target="",unit="USD"} 1.0
    mlops_gateway_budget_limit{policy="bp-1"} 0.001
    mlops_gateway_budget_spend{policy="bp-1"} 0.00135
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter.gateway_budgets import BudgetPolicy, BudgetWindow
from mlops_kpi_exporter.metrics.catalogue import family

SKIP_REASONS = ("invalid_data", "over_max_policies")


@dataclass(frozen=True)
class GatewayView:
    """One good poll of the gateway budgets."""

    shown: tuple[BudgetPolicy, ...]  # at most gateway.max_policies
    windows: Mapping[str, BudgetWindow]  # policy id -> its current window, where MLflow has one
    listed: int  # policies MLflow lists, shown or not
    skipped: Mapping[str, int] = field(default_factory=dict)  # reason -> policies or windows not shown


def families(view: GatewayView) -> list[Metric]:
    info = family("mlops_gateway_budget_info")
    limit = family("mlops_gateway_budget_limit")
    spend = family("mlops_gateway_budget_spend")
    start = family("mlops_gateway_budget_window_start_timestamp_seconds")
    end = family("mlops_gateway_budget_window_end_timestamp_seconds")
    for policy in sorted(view.shown, key=lambda p: p.policy_id):
        info.add_metric([policy.policy_id, policy.scope, policy.target, policy.action, policy.unit, policy.duration], {})
        limit.add_metric([policy.policy_id], policy.limit)
        window = view.windows.get(policy.policy_id)
        if window is not None:  # no window known: no spend shown, never a 0 that is not MLflow's
            spend.add_metric([policy.policy_id], window.spend)
            start.add_metric([policy.policy_id], window.start_ms / 1000)
            end.add_metric([policy.policy_id], window.end_ms / 1000)
    policies = family("mlops_gateway_budget_policies")
    policies.add_metric([], view.listed)
    skipped = family("mlops_gateway_budget_policies_skipped")
    for reason in sorted(set(SKIP_REASONS) | set(view.skipped)):
        skipped.add_metric([reason], view.skipped.get(reason, 0))
    return [policies, skipped, info, limit, spend, start, end]
