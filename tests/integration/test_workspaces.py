"""MLflow with workspaces (`mlflow server` with MLFLOW_ENABLE_WORKSPACES): a real server, two teams'
workspaces with an experiment of the same name in each, runs of known cost on catalog machines, a
registered model, a KPI and GenAI traces. Every run is costed, in its own workspace, exactly; every
source reads each workspace (a request that names the wrong one is not refused by MLflow: it sees
nothing, which is what the exporter did before).
"""

from __future__ import annotations


import pytest

from conftest import InProcess, MlflowServer, add_run, offline, value
from mlops_kpi_exporter.config import config_from_dict

HOUR_MS = 3_600_000
START_MS = 1_750_000_000_000  # 2025-06-15: a fixed moment, the runs' costs do not depend on today
M5 = 0.192  # m5.xlarge in the shipped catalog, per hour


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with offline():
        srv = MlflowServer(tmp_path_factory.mktemp("mlflow-workspaces"), env={"MLFLOW_ENABLE_WORKSPACES": "true"}).start()
        try:
            seed(srv)
            yield srv
        finally:
            srv.kill()


def seed(srv: MlflowServer) -> None:
    """team-a: `train` with two runs (1 h and 2 h on m5.xlarge), a model `churn` with one version, a
    trace; team-b: `train` (the same name) with one 4 h run on two m5.xlarge and a KPI metric."""
    import mlflow
    from mlflow.utils.workspace_context import WorkspaceContext

    client = srv.client()
    for name in ("team-a", "team-b"):
        client.create_workspace(name)
    with WorkspaceContext("team-a"):
        exp = client.create_experiment("train")
        first = add_run(client, exp, START_MS, START_MS + HOUR_MS, tags={"instance_type": "m5.xlarge"})
        add_run(client, exp, START_MS, START_MS + 2 * HOUR_MS, tags={"instance_type": "m5.xlarge"})
        client.create_registered_model("churn")
        client.create_model_version("churn", f"runs:/{first}/model", run_id=first)
        mlflow.set_tracking_uri(srv.url)
        try:
            mlflow.set_experiment("train")
            root = mlflow.start_span_no_context("agent", span_type="AGENT", start_time_ns=START_MS * 1_000_000)
            llm = mlflow.start_span_no_context("llm", span_type="LLM", parent_span=root, start_time_ns=START_MS * 1_000_000,
                                               attributes={"mlflow.chat.tokenUsage": {"input_tokens": 1000, "output_tokens": 0,
                                                                                      "total_tokens": 1000},
                                                           "mlflow.llm.model": "my-model"})
            llm.end(end_time_ns=START_MS * 1_000_000 + 1_000_000)
            root.end(end_time_ns=START_MS * 1_000_000 + 2_000_000)
        finally:
            mlflow.set_tracking_uri(None)
    with WorkspaceContext("team-b"):
        exp = client.create_experiment("train")
        run = add_run(client, exp, START_MS, START_MS + 4 * HOUR_MS, tags={"instance_type": "m5.xlarge", "instance_count": "2"})
        client.log_metric(run, "auc", 0.91)


def settings(srv: MlflowServer, **mlflow_cfg) -> dict:
    return {
        "mlflow": {"tracking_uri": srv.url, "timeout": "10s", **mlflow_cfg},
        "runs": {"timezone": "UTC"},
        "kpis": [{"name": "auc-b", "experiment": "team-b/train", "metric": "auc"}],
        "traces": {"token_prices": {"my-model": {"input": 1.0, "output": 1.0}}},
        "budgets": [{"name": "team-a", "experiments": ["team-a/*"], "monthly": 100, "include": ["compute", "genai"]},
                    {"name": "every-train", "experiments": ["train"], "monthly": 100}],
    }


def exporter(srv: MlflowServer, extra: dict | None = None, **mlflow_cfg) -> InProcess:
    from mlops_kpi_exporter.cli import prepare

    cfg = config_from_dict(settings(srv, **mlflow_cfg) | (extra or {}))
    mlflow, sources = prepare(cfg)
    mlflow.apply()
    for source in sources:
        if hasattr(source, "clock"):
            source.clock = lambda: START_MS / 1000 + 5 * 3600  # the same moment of the same month for all
    return InProcess(cfg, [s for s in sources if s.name in ("mlflow", "kpis", "registry", "traces")])


def test_every_run_is_costed_in_its_own_workspace(server):
    m = exporter(server).poll()
    assert value(m, "mlops_experiment_cost", workspace="team-a", experiment="train", status="FINISHED") == pytest.approx(3 * M5)
    assert value(m, "mlops_experiment_cost", workspace="team-b", experiment="train", status="FINISHED") == pytest.approx(8 * M5)
    assert value(m, "mlops_runs", workspace="team-a", experiment="train", status="FINISHED") == 2
    assert value(m, "mlops_runs", workspace="team-b", experiment="train", status="FINISHED") == 1
    assert all("workspace" in dict(k[1]) for k in m if k[0] == "mlops_experiment_cost")  # each in its workspace
    # the registry, KPIs and traces of each workspace, each in its own
    assert value(m, "mlops_model_versions", workspace="team-a", model="churn") == 1
    assert value(m, "mlops_kpi", workspace="team-b", experiment="train", kpi="auc-b") == pytest.approx(0.91)
    assert value(m, "mlops_genai_traces", workspace="team-a", experiment="train", status="OK") == 1
    # its spans (the model's name) read by the pool's threads, each request in team-a
    assert value(m, "mlops_genai_tokens", workspace="team-a", experiment="train", model="my-model",
                 token_type="input") == 1000
    # budgets by workspace (`team-a/*`) or by name in every workspace (`train`)
    assert value(m, "mlops_budget_cost_month_to_date", budget="team-a") == pytest.approx(3 * M5 + 0.001)
    assert value(m, "mlops_budget_cost_month_to_date", budget="every-train") == pytest.approx(11 * M5)


def test_workspace_globs_choose_what_is_read(server):
    m = exporter(server, workspaces=["team-*"], exclude_workspaces=["team-b"]).poll()
    assert value(m, "mlops_runs", workspace="team-a", experiment="train", status="FINISHED") == 2
    assert not [k for k in m if ("workspace", "team-b") in k[1] and "kpi" not in k[0]]


def test_shards_can_be_dealt_by_workspace(server):
    """Two shards `by: workspace`: each workspace is costed whole by one of them, together all of them."""
    seen: dict[str, set[int]] = {}
    for index in (0, 1):
        m = exporter(server, shard={"count": 2, "index": index, "by": "workspace"}).poll()
        for name, labels in m:
            if name == "mlops_experiment_cost":
                seen.setdefault(dict(labels)["workspace"], set()).add(index)
    assert set(seen) >= {"team-a", "team-b"}
    assert all(len(shards) == 1 for shards in seen.values())


def test_cost_is_allocated_and_reported_by_workspace(server):
    """`mlflow.workspace` as an allocation tag: each workspace's cost, exact; the report splits by
    workspace on a server with workspaces, asked or not."""
    import io
    import json

    from conftest import connected
    from mlops_kpi_exporter.report import Period, write_report

    m = exporter(server, {"allocation": {"tags": ["team", "mlflow.workspace"]}}).poll()
    assert value(m, "mlops_cost_by_tag", tag="mlflow.workspace", value="team-a") == pytest.approx(3 * M5)
    assert value(m, "mlops_cost_by_tag", tag="mlflow.workspace", value="team-b") == pytest.approx(8 * M5)
    assert value(m, "mlops_cost_by_tag", tag="team", value="untagged") == pytest.approx(11 * M5)

    config = config_from_dict(settings(server))  # no allocation tags configured
    out = io.StringIO()
    now_ms = START_MS + 5 * HOUR_MS
    write_report(config, connected(config)[1], Period(START_MS - HOUR_MS, now_ms), "json", out, now_ms)
    report = json.loads(out.getvalue())
    assert report["by_tag"]["mlflow.workspace"] == {"team-b": pytest.approx(8 * M5), "team-a": pytest.approx(3 * M5)}
    assert {r["experiment"] for r in report["top_runs"]} == {"team-a/train", "team-b/train"}


def test_the_bill_joins_to_runs_in_every_workspace(server, tmp_path):
    """A FOCUS bill tagged with run ids: each run's billed cost lands in its own workspace's experiment
    (two experiments named `train`, never summed)."""
    from mlflow.utils.workspace_context import WorkspaceContext

    from focus_rows import row, write_csv
    from mlops_kpi_exporter.cli import prepare

    client = server.client()
    ids = {}
    for workspace in ("team-a", "team-b"):
        with WorkspaceContext(workspace):
            exp = client.get_experiment_by_name("train")
            ids[workspace] = sorted(r.info.run_id for r in client.search_runs([exp.experiment_id]))[0]
    start = "2025-06-15T14:00:00Z"
    write_csv(tmp_path / "bill" / "june.csv", [
        row("0.5", "0.5", "0.6", start, "2025-06-15T15:00:00Z", tags={"mlflow_run_id": ids["team-a"]}),
        row("1.25", "1.25", "1.5", start, "2025-06-15T15:00:00Z", tags={"mlflow_run_id": ids["team-b"]}),
    ])
    cfg = config_from_dict(settings(server) | {
        "billing": {"sources": [{"name": "aws", "focus": str(tmp_path / "bill")}],
                    "run_join": [{"bill_tag": "mlflow_run_id", "run": "run_id"}]}})
    mlflow, sources = prepare(cfg)
    mlflow.apply()
    for source in sources:
        if hasattr(source, "clock"):
            source.clock = lambda: START_MS / 1000 + 5 * 3600
    m = InProcess(cfg, [s for s in sources if s.name == "mlflow" or s.name.startswith("bill")]).poll()
    for workspace, cost in (("team-a", 0.5), ("team-b", 1.25)):
        assert value(m, "mlops_experiment_billed_cost", workspace=workspace, experiment="train", month="2025-06",
                     cost_basis="billed") == pytest.approx(cost)
