"""The gateway source against a real `mlflow server` with its AI Gateway: an endpoint over an
OpenAI-compatible stand-in on 127.0.0.1, budget policies over it, calls through the gateway that
MLflow prices, and the exporter's figures equal to MLflow's own windows reply. Servers without the
gateway API, refused reads and bad replies, from a real server with its gateway off and loopback
stand-ins."""

from __future__ import annotations

import json
import logging
import time

import pytest
import requests

from ai_gateway import COST_OF_A_CALL, GATEWAY_ENV, budget, chat, chat_endpoint, openai_stand_in, windows
from conftest import InProcess, MlflowServer, connected, value
from upstream import Reply, Upstream

LIST = "/api/3.0/mlflow/gateway/budgets/list?max_results=1000"
WINDOWS = "/api/3.0/mlflow/gateway/budgets/windows"


@pytest.fixture(scope="module")
def gateway_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-gateway"), env=GATEWAY_ENV).start()
    yield server
    server.kill()


@pytest.fixture
def provider():
    stand_in = openai_stand_in()
    yield stand_in
    stand_in.close()


def gateway_source(url: str, **gateway):
    from mlops_kpi_exporter.config import config_from_dict
    from mlops_kpi_exporter.sources.gateway import GatewaySource

    config, mlflow = connected(config_from_dict({"mlflow": {"tracking_uri": url, "timeout": "10s"},
                                                 "gateway": gateway}))
    return config, GatewaySource(config, mlflow)


def wait_for(condition, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.1)
    return result


def test_limit_and_spend_are_mlflows_own_windows(gateway_server, provider, prefix):
    endpoint = f"{prefix}-chat"
    endpoint_id = chat_endpoint(gateway_server, provider, endpoint)
    cap = budget(gateway_server, 0.001, "REJECT", endpoint_id=endpoint_id).budget_policy_id
    watch = budget(gateway_server, 5.0, "ALERT", unit="WEEKS", endpoint_id=endpoint_id).budget_policy_id
    for _ in range(3):  # USD 0.00045 each: the third passes the cap of 0.001
        assert chat(gateway_server, endpoint).status_code == 200
    wait_for(lambda: windows(gateway_server)[cap]["current_spend"] >= 0.001)
    assert chat(gateway_server, endpoint).status_code == 429  # REJECT: the cap is spent, calls are refused
    assert [p for _, p, _ in provider.requests].count("/v1/chat/completions") == 3

    config, source = gateway_source(gateway_server.url)
    m = InProcess(config, [source]).poll()
    theirs = windows(gateway_server)  # nothing called since: the same windows the source read
    for policy_id, limit, action, duration in ((cap, 0.001, "reject", "1d"), (watch, 5.0, "alert", "1w")):
        window = theirs[policy_id]
        assert value(m, "mlops_gateway_budget_limit", policy=policy_id) == limit
        assert value(m, "mlops_gateway_budget_spend", policy=policy_id) == window["current_spend"]
        assert value(m, "mlops_gateway_budget_window_start_timestamp_seconds", policy=policy_id) == \
            window["window_start_ms"] / 1000
        assert value(m, "mlops_gateway_budget_window_end_timestamp_seconds", policy=policy_id) == \
            window["window_end_ms"] / 1000
        assert value(m, "mlops_gateway_budget_info", policy=policy_id, scope="endpoint", target=endpoint_id,
                     action=action, unit="USD", duration=duration) == 1
        assert window["current_spend"] == pytest.approx(3 * COST_OF_A_CALL, rel=1e-9)  # priced by MLflow, not 0
    assert value(m, "mlops_gateway_budget_policies") >= 2
    assert value(m, "mlops_gateway_budget_policies_skipped", reason="invalid_data") == 0
    assert value(m, "mlops_source_up", source="gateway") == 1


def test_max_policies_keeps_the_most_used_and_counts_the_rest(gateway_server, provider, prefix):
    endpoint = f"{prefix}-chat"
    endpoint_id = chat_endpoint(gateway_server, provider, endpoint)
    used = budget(gateway_server, 0.01, "ALERT", endpoint_id=endpoint_id).budget_policy_id
    for amount in (100.0, 200.0):
        budget(gateway_server, amount, "ALERT", endpoint_id=endpoint_id)
    assert chat(gateway_server, endpoint).status_code == 200
    wait_for(lambda: windows(gateway_server)[used]["current_spend"] > 0)

    config, source = gateway_source(gateway_server.url, max_policies=1)
    m = InProcess(config, [source]).poll()
    # MLflow's own figures: the policy most used of its limit (ties by id) is the one shown
    listed = requests.get(f"{gateway_server.url}{LIST}", timeout=10).json()["budget_policies"]
    theirs = windows(gateway_server)
    share = {p["budget_policy_id"]: theirs[p["budget_policy_id"]]["current_spend"] / p["budget_amount"] for p in listed}
    shown = [dict(labels)["policy"] for name, labels in m if name == "mlops_gateway_budget_limit"]
    assert shown == [max(sorted(share), key=share.get)]
    assert value(m, "mlops_gateway_budget_policies") == len(listed) >= 3
    assert value(m, "mlops_gateway_budget_policies_skipped", reason="over_max_policies") == len(listed) - 1


def test_a_server_with_its_gateway_off_is_quiet(tmp_path, caplog):
    """A real server started with MLFLOW_ENABLE_AI_GATEWAY=false answers NOT_IMPLEMENTED: logged once at
    info, the source up, and not one gateway series in the whole exposition."""
    from mlops_kpi_exporter.cli import build_sources
    from mlops_kpi_exporter.config import config_from_dict

    server = MlflowServer(tmp_path, env={"MLFLOW_ENABLE_AI_GATEWAY": "false"}).start()
    try:
        config, mlflow = connected(config_from_dict({"mlflow": {"tracking_uri": server.url, "timeout": "10s"}}))
        sources = build_sources(config, mlflow)
        assert "gateway" in [s.name for s in sources]  # enabled: auto, an http(s) server
        exporter = InProcess(config, sources)
        with caplog.at_level(logging.INFO, logger="mlops_kpi_exporter.sources.gateway"):
            exporter.poll()
            m = exporter.poll()
    finally:
        server.kill()
    assert not [name for name, _ in m if name.startswith("mlops_gateway_")]
    assert value(m, "mlops_source_up", source="gateway") == 1
    notes = [r for r in caplog.records if r.name == "mlops_kpi_exporter.sources.gateway"]
    assert [(r.levelno, "no gateway API" in r.getMessage()) for r in notes] == [(logging.INFO, True)]
    assert "NOT_IMPLEMENTED" in notes[0].getMessage()


def test_an_older_mlflow_without_the_routes_is_quiet_too(caplog):
    older = Upstream()  # answers 404 to every route it does not know, as an MLflow before the gateway does
    try:
        _, source = gateway_source(older.url)
        with caplog.at_level(logging.INFO, logger="mlops_kpi_exporter.sources.gateway"):
            families, summary = source.poll()
            assert source.poll()[0] == [] and families == []
        assert "no gateway API" in summary and "ENDPOINT_NOT_FOUND" in summary
        assert "no gateway API" in source.check()
    finally:
        older.close()
    assert [r.levelno for r in caplog.records if r.name == "mlops_kpi_exporter.sources.gateway"] == [logging.INFO]


def test_a_refused_read_is_a_warning_or_with_enabled_true_a_failed_poll(caplog):
    from mlops_kpi_exporter.mlflow_client import SourceError

    refusing = Upstream()
    refusing.replies[LIST] = Reply(403, b'{"error_code": "PERMISSION_DENIED", "message": "admins only"}',
                                   "application/json")
    try:
        _, auto = gateway_source(refusing.url)
        with caplog.at_level(logging.INFO, logger="mlops_kpi_exporter.sources.gateway"):
            assert auto.poll()[0] == [] and auto.poll()[0] == []
        warnings = [r for r in caplog.records if r.name == "mlops_kpi_exporter.sources.gateway"]
        assert [r.levelno for r in warnings] == [logging.WARNING]
        assert "refuses to list the gateway budgets (PERMISSION_DENIED)" in warnings[0].getMessage()
        _, strict = gateway_source(refusing.url, enabled=True)
        with pytest.raises(SourceError, match="refuses to list the gateway budgets"):
            strict.poll()
    finally:
        refusing.close()


def test_bad_replies_are_counted_or_a_clear_error():
    from mlops_kpi_exporter.mlflow_client import SourceError

    stand_in = Upstream()
    good = {"budget_policy_id": "bp-good", "budget_unit": "USD", "budget_amount": 10.0,
            "duration": {"unit": "DAYS", "value": 1}, "target_scope": "GLOBAL", "budget_action": "ALERT"}
    stand_in.replies[LIST] = Reply(200, json.dumps({"budget_policies": [good, {"budget_policy_id": "bp-bad"}]}).encode(),
                                   "application/json")
    stand_in.replies[WINDOWS] = Reply(200, json.dumps({"windows": {
        "bp-good": {"window_start_ms": 1000, "window_end_ms": 86_401_000, "current_spend": 2.5},
        "bp-bad": {"window_start_ms": "soon"}}}).encode(), "application/json")
    try:
        config, source = gateway_source(stand_in.url)
        m = InProcess(config, [source]).poll()
        assert value(m, "mlops_gateway_budget_spend", policy="bp-good") == 2.5
        assert value(m, "mlops_gateway_budget_policies_skipped", reason="invalid_data") == 2  # the policy, its window
        assert value(m, "mlops_gateway_budget_policies") == 2
        stand_in.replies[WINDOWS] = Reply(200, b'{"windows": 5}', "application/json")
        with pytest.raises(SourceError, match="windows is neither a list nor a map"):
            source.poll()
        stand_in.replies[WINDOWS] = Reply(200, b"<html>a proxy's page</html>", "text/html")
        with pytest.raises(SourceError, match="not JSON"):
            source.poll()
    finally:
        stand_in.close()
