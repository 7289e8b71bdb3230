"""MLflow's AI Gateway in the tests: a real `mlflow server` with its gateway on, a chat endpoint whose
provider is an OpenAI-compatible stand-in on 127.0.0.1 (answers /v1/chat/completions with a usage
block, so that MLflow prices each call from its bundled catalog), and budget policies over it."""

from __future__ import annotations

import json

import requests

from upstream import Reply, Upstream

# What the server needs to route to a plain-http provider on loopback; the passphrase that encrypts
# the provider's (fake) API key is a test value, not a secret.
GATEWAY_ENV = {"MLFLOW_GATEWAY_API_BASE_ALLOWED_SCHEMES": "http,https",
               "MLFLOW_GATEWAY_API_BASE_ALLOW_PRIVATE_IPS": "true",
               "MLFLOW_CRYPTO_KEK_PASSPHRASE": "test-only-passphrase"}
MODEL = "gpt-4o-mini"  # in MLflow's bundled price catalog: USD 0.15 / 0.60 per million input / output tokens
USAGE = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
COST_OF_A_CALL = 1000 * 0.15e-6 + 500 * 0.60e-6  # USD 0.00045


def openai_stand_in() -> Upstream:
    provider = Upstream()
    provider.replies["/v1/chat/completions"] = Reply(200, json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
        "usage": USAGE}).encode(), "application/json")
    return provider


def chat_endpoint(server, provider: Upstream, name: str) -> str:
    """A gateway endpoint `name` over the stand-in, its usage traced (what the budgets count); its id."""
    from mlflow.entities.gateway_endpoint import GatewayEndpointModelConfig, GatewayModelLinkageType

    store = server.client()._tracking_client.store
    secret = store.create_gateway_secret(secret_name=f"{name}-key", secret_value={"api_key": "sk-not-a-real-key"},
                                         provider="openai", auth_config={"api_base": f"{provider.url}/v1"})
    model = store.create_gateway_model_definition(name=f"{name}-model", secret_id=secret.secret_id,
                                                  provider="openai", model_name=MODEL)
    endpoint = store.create_gateway_endpoint(name=name, model_configs=[GatewayEndpointModelConfig(
        model_definition_id=model.model_definition_id, linkage_type=GatewayModelLinkageType.PRIMARY, weight=1.0)])
    return endpoint.endpoint_id


def budget(server, amount: float, action: str, unit: str = "DAYS", value: int = 1, endpoint_id: str | None = None):
    """A budget policy in USD: ENDPOINT-scoped when an endpoint is given (tests sharing a server stay apart)."""
    from mlflow.entities.gateway_budget_policy import (
        BudgetAction,
        BudgetDuration,
        BudgetDurationUnit,
        BudgetTargetScope,
        BudgetUnit,
    )

    store = server.client()._tracking_client.store
    scope = BudgetTargetScope.ENDPOINT if endpoint_id else BudgetTargetScope.GLOBAL
    return store.create_budget_policy(budget_unit=BudgetUnit.USD, budget_amount=amount,
                                      duration=BudgetDuration(BudgetDurationUnit(unit), value), target_scope=scope,
                                      budget_action=BudgetAction(action), target_value=endpoint_id)


def chat(server, endpoint: str) -> requests.Response:
    return requests.post(f"{server.url}/gateway/{endpoint}/mlflow/invocations",
                         json={"messages": [{"role": "user", "content": "hi"}]}, timeout=30)


def windows(server) -> dict[str, dict]:
    """MLflow's own reply: policy id -> its current window."""
    reply = requests.get(f"{server.url}/api/3.0/mlflow/gateway/budgets/windows", timeout=10)
    reply.raise_for_status()
    return {w["budget_policy_id"]: w for w in reply.json().get("windows", [])}
