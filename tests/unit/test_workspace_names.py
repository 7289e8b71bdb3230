"""Workspaces, in pieces: listing them (a stand-in for MLflow's workspaces route on loopback), the
globs, qualified names, and the split into a `workspace` label."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client.metrics_core import GaugeMetricFamily

from mlops_kpi_exporter.mlflow_workspaces import (
    NoListableWorkspace,
    discover,
    in_workspace,
    matches,
    qualified,
    split,
    split_workspace_labels,
)


@pytest.fixture
def stand_in():
    """A server that answers GET /api/3.0/mlflow/workspaces with `reply` = (status, body)."""
    state = {"reply": (200, {"workspaces": []}), "headers": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            state["headers"].append(self.headers.get("X-MLFLOW-WORKSPACE"))
            status, body = state["reply"]
            data = (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    from mlflow.tracking import MlflowClient

    state["client"] = MlflowClient(f"http://127.0.0.1:{server.server_address[1]}")
    yield state
    server.shutdown()


def listed(*names):
    return 200, {"workspaces": [{"name": n, "description": ""} for n in names]}


def test_a_server_without_workspaces_is_read_as_before(stand_in):
    stand_in["reply"] = (503, "Endpoint: /api/3.0/mlflow/workspaces disabled because the server is running without "
                              "workspaces support.")
    assert discover(stand_in["client"], ["*"], []) is None
    stand_in["reply"] = (404, "not found")  # an MLflow before workspaces
    assert discover(stand_in["client"], ["*"], []) is None


def test_workspaces_are_chosen_by_globs(stand_in):
    stand_in["reply"] = listed("team-b", "default", "team-a", "lab")
    assert discover(stand_in["client"], ["*"], []) == ("default", "lab", "team-a", "team-b")
    assert discover(stand_in["client"], ["team-*"], ["team-b"]) == ("team-a",)
    assert discover(stand_in["client"], ["nothing-*"], []) == ()  # chosen none: nothing read, no error


def test_credentials_that_may_list_none_get_a_clear_error(stand_in):
    stand_in["reply"] = listed()
    with pytest.raises(NoListableWorkspace, match="lists none to the exporter's credentials"):
        discover(stand_in["client"], ["*"], [])
    stand_in["reply"] = (403, {"error_code": "PERMISSION_DENIED"})
    with pytest.raises(NoListableWorkspace, match="HTTP 403"):
        discover(stand_in["client"], ["*"], [])
    stand_in["reply"] = (401, {"error_code": "UNAUTHENTICATED"})  # not a matter of workspace rights
    with pytest.raises(NoListableWorkspace, match="HTTP 401 UNAUTHENTICATED.*check mlflow.auth"):
        discover(stand_in["client"], ["*"], [])


def test_a_request_in_a_workspace_names_it_and_only_in_that_block(stand_in):
    from mlflow.utils.rest_utils import http_request

    creds = stand_in["client"]._tracking_client.store.get_host_creds()
    with in_workspace("team-a"):
        http_request(creds, "/api/2.0/mlflow/experiments/search", "GET", max_retries=0)
    http_request(creds, "/api/2.0/mlflow/experiments/search", "GET", max_retries=0)
    assert stand_in["headers"] == ["team-a", None]


def test_local_stores_have_no_workspaces(tmp_path):
    from mlflow.tracking import MlflowClient

    assert discover(MlflowClient(f"sqlite:///{tmp_path}/m.db"), ["*"], []) is None


def test_qualified_names_and_globs():
    assert qualified(None, "churn") == "churn" and qualified("team-a", "churn") == "team-a/churn"
    assert split("team-a//Users/x/exp") == ("team-a", "/Users/x/exp")  # a name with slashes stays whole
    assert split("churn") == (None, "churn")
    assert matches("team-a/churn", ["churn*"], True) and matches("team-a/churn", ["team-a/*"], True)
    assert not matches("team-b/churn", ["team-a/*"], True)
    assert not matches("/Users/x/churn", ["Users/x/*"], False)  # without workspaces a slash is a slash


def test_the_split_gives_a_workspace_label_and_leaves_other_families_alone():
    cost = GaugeMetricFamily("mlops_experiment_cost", "", labels=["experiment", "status"])
    cost.add_metric(["team-a/churn", "FINISHED"], 1.0)
    cost.add_metric(["other", "FINISHED"], 2.0)  # beyond a top N: no workspace
    genai = GaugeMetricFamily("mlops_genai_cost", "", labels=["experiment", "model"])
    genai.add_metric(["team-a/chat", "openai/gpt-4o"], 3.0)  # an LLM's name keeps its slash
    serving = GaugeMetricFamily("mlops_endpoint_up", "", labels=["model"])
    serving.add_metric(["meta/llama"], 1.0)
    out = split_workspace_labels([cost, genai, serving], {"mlops_experiment_cost": "experiment",
                                                          "mlops_genai_cost": "experiment"})
    assert [s.labels for s in out[0].samples] == [{"workspace": "team-a", "experiment": "churn", "status": "FINISHED"},
                                                  {"experiment": "other", "status": "FINISHED"}]
    assert out[1].samples[0].labels == {"workspace": "team-a", "experiment": "chat", "model": "openai/gpt-4o"}
    assert out[2] is serving
