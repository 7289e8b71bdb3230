"""MLflow AI Gateway budgets: the replies read in both shapes and both spellings, what cannot be read
counted, the policies bounded, the families, and the config."""

from __future__ import annotations

import math

import pytest

from conftest import render, samples, value
from mlops_kpi_exporter.bad_data import BadData
from mlops_kpi_exporter.config import ConfigError, config_from_dict
from mlops_kpi_exporter.gateway_budgets import (
    BudgetPolicy,
    BudgetWindow,
    nearest_their_limit,
    policies_page,
    policy_of,
    windows_of,
)
from mlops_kpi_exporter.metrics.gateway import GatewayView, families

# as MLflow 3.17 answers gateway/budgets/list
CURRENT = {"budget_policy_id": "bp-1", "budget_unit": "USD", "budget_amount": 50.0,
           "duration": {"unit": "DAYS", "value": 1}, "target_scope": "ENDPOINT", "target_value": "e-42",
           "budget_action": "REJECT", "created_by": "", "created_at": 1796290295372, "last_updated_at": 1796290295372}
# the same policy in the earlier spelling
EARLIER = {"budget_policy_id": "bp-1", "limit_usd": 50, "duration_type": "DAYS", "duration_value": 1,
           "target_type": "ENDPOINT", "target_value": "e-42", "on_exceeded": "REJECT"}
WINDOW = {"window_start_ms": 1796256000000, "window_end_ms": 1796342400000, "current_spend": 0.00135}


def test_both_spellings_of_a_policy_read_the_same():
    want = BudgetPolicy(policy_id="bp-1", limit=50.0, unit="USD", duration="1d", scope="endpoint", target="e-42",
                        action="reject")
    assert policy_of(CURRENT) == want
    assert policy_of(EARLIER) == want
    assert policy_of({**EARLIER, "duration_type": None, "duration_unit": "DAYS"}) == want  # a third, flat spelling


def test_policy_fields_become_bounded_label_values():
    assert policy_of({**CURRENT, "duration": {"unit": "MONTHS", "value": "3"}}).duration == "3mo"  # int64 as text
    assert policy_of({**CURRENT, "duration": {"unit": "MINUTES", "value": 15}}).duration == "15m"
    assert policy_of({**EARLIER, "duration_value": None, "duration_type": "WEEKS"}).duration == "1w"
    assert policy_of({**CURRENT, "target_scope": "GLOBAL", "target_value": None}).target == ""
    assert policy_of({**EARLIER, "on_exceeded": "ALERT_AND_REJECT"}).action == "reject"  # it rejects
    assert policy_of({**CURRENT, "budget_action": "alert"}).action == "alert"


@pytest.mark.parametrize("broken", [
    {"budget_policy_id": None}, {"budget_policy_id": ""}, {"budget_policy_id": "x" * 201},
    {"budget_amount": -1.0}, {"budget_amount": math.nan}, {"budget_amount": math.inf}, {"budget_amount": True},
    {"budget_amount": "50"}, {"budget_unit": "US dollars"}, {"budget_unit": None},
    {"duration": {"unit": "FORTNIGHTS", "value": 1}}, {"duration": {"unit": "DAYS", "value": 0}},
    {"duration": {"unit": "DAYS", "value": 1.5}}, {"duration": None},
    {"target_scope": None}, {"target_scope": "not a scope!"}, {"budget_action": 3}, {"target_value": 42},
], ids=lambda b: ",".join(f"{k}={str(v)[:12]}" for k, v in b.items()))
def test_a_policy_that_cannot_be_read_raises_bad_data(broken):
    with pytest.raises(BadData) as caught:
        policy_of({**CURRENT, **broken})
    assert caught.value.reason == "invalid_data"


@pytest.mark.parametrize("broken", [{"limit_usd": None}, {"limit_usd": -5}, {"duration_value": 0},
                                    {"duration_type": "YEARS"}, {"on_exceeded": None}, {"target_type": None}])
def test_an_earlier_policy_that_cannot_be_read_raises_bad_data(broken):
    with pytest.raises(BadData):
        policy_of({**EARLIER, **broken})


def test_a_list_reply_counts_what_it_cannot_read():
    good, bad, token = policies_page({"budget_policies": [CURRENT, {"budget_policy_id": "bp-2"}, "text"],
                                      "next_page_token": "tok"})
    assert [p.policy_id for p in good] == ["bp-1"] and len(bad) == 2 and token == "tok"
    assert policies_page({}) == ([], [], None)  # MLflow leaves the key out when there is no policy
    for reply in ([], {"budget_policies": {"bp-1": CURRENT}}, {"budget_policies": [], "next_page_token": 7}):
        with pytest.raises(BadData):
            policies_page(reply)


def test_both_shapes_of_the_windows_reply_read_the_same():
    listed = {"windows": [{"budget_policy_id": "bp-1", **WINDOW}, {"budget_policy_id": "bp-2", **WINDOW}]}
    keyed = {"windows": {"bp-1": WINDOW, "bp-2": dict(WINDOW)}}
    want = {p: BudgetWindow(start_ms=1796256000000, end_ms=1796342400000, spend=0.00135) for p in ("bp-1", "bp-2")}
    assert windows_of(listed) == windows_of(keyed) == (want, [])
    as_text = {"windows": {"bp-1": {**WINDOW, "window_start_ms": "1796256000000", "window_end_ms": "1796342400000"}}}
    assert windows_of(as_text)[0]["bp-1"] == want["bp-1"]  # int64 fields in plain proto JSON
    assert windows_of({}) == ({}, [])


@pytest.mark.parametrize("broken", [
    {"current_spend": None}, {"current_spend": -0.5}, {"current_spend": "0.1"}, {"window_start_ms": None},
    {"window_end_ms": 1796256000000}, {"window_start_ms": -1}, {"window_end_ms": 1.5e12},
])
def test_a_window_that_cannot_be_read_is_counted_in_either_shape(broken):
    for reply in ({"windows": [{"budget_policy_id": "bp-1", **WINDOW, **broken}]},
                  {"windows": {"bp-1": {**WINDOW, **broken}}}):
        good, bad = windows_of(reply)
        assert good == {} and len(bad) == 1
    assert len(windows_of({"windows": [WINDOW, "text"]})[1]) == 2  # no policy id; not an object
    with pytest.raises(BadData, match="neither a list nor a map"):
        windows_of({"windows": 5})
    with pytest.raises(BadData):
        windows_of(["windows"])


def _policy(policy_id: str, limit: float, action: str = "alert") -> BudgetPolicy:
    return BudgetPolicy(policy_id=policy_id, limit=limit, unit="USD", duration="1d", scope="global", target="",
                        action=action)


def _window(spend: float) -> BudgetWindow:
    return BudgetWindow(start_ms=0, end_ms=86_400_000, spend=spend)


def test_the_policies_nearest_their_limit_are_kept():
    policies = [_policy("a", 10), _policy("b", 10), _policy("c", 0), _policy("d", 100), _policy("e", 1)]
    windows = {"a": _window(5), "b": _window(9), "c": _window(0.01), "e": _window(0.5)}  # d: no window known
    assert [p.policy_id for p in nearest_their_limit(policies, windows, 10)] == ["c", "b", "a", "e", "d"]
    assert [p.policy_id for p in nearest_their_limit(policies, windows, 2)] == ["c", "b"]


def test_families_show_what_mlflow_said_and_no_spend_without_a_window():
    view = GatewayView(shown=(_policy("bp-2", 5.0, "reject"), _policy("bp-1", 50.0)),
                       windows={"bp-2": BudgetWindow(start_ms=1_000, end_ms=86_401_000, spend=5.25)},
                       listed=4, skipped={"over_max_policies": 1, "invalid_data": 1})
    m = samples(render(families(view)))
    assert value(m, "mlops_gateway_budget_info", policy="bp-2", scope="global", target="", action="reject",
                 unit="USD", duration="1d") == 1
    assert value(m, "mlops_gateway_budget_limit", policy="bp-1") == 50.0
    assert value(m, "mlops_gateway_budget_spend", policy="bp-2") == 5.25
    assert value(m, "mlops_gateway_budget_window_start_timestamp_seconds", policy="bp-2") == 1.0
    assert value(m, "mlops_gateway_budget_window_end_timestamp_seconds", policy="bp-2") == 86_401.0
    assert ("mlops_gateway_budget_spend", (("policy", "bp-1"),)) not in m  # unknown, not 0
    assert value(m, "mlops_gateway_budget_policies") == 4
    assert value(m, "mlops_gateway_budget_policies_skipped", reason="over_max_policies") == 1
    empty = samples(render(families(GatewayView(shown=(), windows={}, listed=0))))
    assert value(empty, "mlops_gateway_budget_policies_skipped", reason="invalid_data") == 0  # both reasons, always


def test_gateway_config_defaults_and_errors():
    base = {"mlflow": {"tracking_uri": "http://127.0.0.1:5000"}}
    config = config_from_dict(base)
    assert (config.gateway.enabled, config.gateway.poll_interval, config.gateway.max_policies) == ("auto", 60.0, 100)
    assert config.reads_gateway
    assert not config_from_dict({"mlflow": {"tracking_uri": "sqlite:///mlflow.db"}}).reads_gateway  # no server
    for written, meant in ((True, "true"), (False, "false"), ("auto", "auto"), ("AUTO", "auto")):
        assert config_from_dict({**base, "gateway": {"enabled": written}}).gateway.enabled == meant
    assert not config_from_dict({**base, "gateway": {"enabled": False}}).reads_gateway
    for bad, words in (({"enabled": "maybe"}, "gateway.enabled: must be auto, true or false"),
                       ({"poll_interval": "5s"}, "gateway.poll_interval: must be at least 10s"),
                       ({"max_policies": 0}, "gateway.max_policies"), ({"policies": 3}, "gateway.policies: unknown key")):
        with pytest.raises(ConfigError, match=words):
            config_from_dict({**base, "gateway": bad})
    with pytest.raises(ConfigError, match="gateway.enabled is true, but mlflow.tracking_uri is not an http"):
        config_from_dict({"mlflow": {"tracking_uri": "sqlite:///mlflow.db"}, "gateway": {"enabled": True}})


def test_the_gateway_source_runs_against_a_server_on_the_first_shard_only():
    from mlops_kpi_exporter.cli import prepare

    def names(config: dict) -> list[str]:
        return sorted(s.name for s in prepare(config_from_dict(config))[1])

    server = {"tracking_uri": "http://127.0.0.1:1"}
    assert "gateway" in names({"mlflow": server})
    assert "gateway" not in names({"mlflow": server, "gateway": {"enabled": False}})
    assert "gateway" in names({"mlflow": {**server, "shard": {"count": 2, "index": 0}}})
    assert "gateway" not in names({"mlflow": {**server, "shard": {"count": 2, "index": 1}}})
