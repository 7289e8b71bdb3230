"""The Grafana dashboards: structure, drift from their generator, and every panel query answered with
data by a real Prometheus that scrapes the real exporter over the demo data and a serving endpoint."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from ai_gateway import GATEWAY_ENV, budget
from conftest import EXPORTER, MlflowServer, add_run, child_env, free_port, wait_http
from upstream import Reply, Upstream, fixture

ROOT = Path(__file__).parents[2]
BOARDS = ROOT / "dashboards"


def load_module(name: str):
    spec = importlib.util.spec_from_file_location(name, BOARDS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = load_module("build")
render = load_module("render")


def dashboards() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((BOARDS / "json").glob("*.json"))}


def targets(board: dict):
    for panel in board["panels"]:
        for target in panel["targets"]:
            yield panel, target


def test_committed_json_is_what_the_generator_builds():
    assert dashboards() == {uid: json.loads(json.dumps(b)) for uid, b in build.build().items()}, \
        "run: python dashboards/build.py"


def test_provisioning_opens_the_stacks_own_prometheus_with_no_clicks():
    """The datasource variable picks Grafana's default Prometheus: in the compose stack, the provisioned one."""
    provisioned = yaml.safe_load((BOARDS / "provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert provisioned["isDefault"] is True and provisioned["type"] == "prometheus"
    ops = yaml.safe_load((ROOT / "deploy" / "monitoring.yml").read_text())
    assert provisioned["uid"] == ops["datasource_uid"]
    boards = dashboards()
    assert set(boards) == {"mlops-costs", "mlops-serving", "mlops-kpis", "mlops-exporter", "mlops-bill",
                           "mlops-genai"}  # alerts link to these
    for uid, board in boards.items():
        assert board["uid"] == uid and "id" not in board and "__inputs" not in board
        assert any(link.get("tags") == ["mlops"] for link in board["links"])  # links between the dashboards
        assert any("runbooks" in link.get("url", "") for link in board["links"])
    provider = yaml.safe_load((BOARDS / "provisioning/dashboards/mlops.yml").read_text())["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"]
    assert provider.get("allowUiUpdates") is False  # edits in the UI would be lost at the next restart


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    """Demo data + one served model -> the exporter -> Prometheus with the shipped recording rules."""
    from mlops_kpi_exporter import demo

    work = tmp_path_factory.mktemp("dashboards")
    demo.prepare(work / "demo")
    upstream = Upstream()
    upstream.replies["/ping"] = Reply(200, b"")
    counts = {"OK": 1000.0, "ERR": 2.0, "B1": 600.0, "B2": 950.0, "LAT_S": 150.0}
    stop = threading.Event()

    def traffic() -> None:  # a model server under steady load
        while not stop.wait(0.5):
            for key, step in (("OK", 20), ("ERR", 0.1), ("B1", 12), ("B2", 19), ("LAT_S", 3)):
                counts[key] += step
            upstream.replies["/metrics"] = Reply(200, fixture("bentoml", **counts))

    upstream.replies["/metrics"] = Reply(200, fixture("bentoml", **counts))
    threading.Thread(target=traffic, daemon=True).start()
    config = demo.demo_config_dict(work / "demo" / "mlflow.db")
    config["mlflow"] |= {"poll_interval": "2s"}
    config["endpoints"] = [{"name": "churn-model", "url": upstream.url, "metrics_url": f"{upstream.url}/metrics",
                            "preset": "bentoml", "hourly_cost": 1.2, "replicas": 2, "capacity_rps": 100,
                            "probe": {"path": "/ping", "interval": "1s", "timeout": "1s"}}]
    (work / "exporter.yml").write_text(yaml.safe_dump(config))
    # The demo's local store has no AI Gateway and no workspaces: a second exporter of the same job reads
    # a real server with both on (its gateway budgets, one experiment and one model in its default
    # workspace), so the panels show series with and without a workspace label side by side.
    (work / "gateway").mkdir()
    gateway = MlflowServer(work / "gateway", env=GATEWAY_ENV | {"MLFLOW_ENABLE_WORKSPACES": "true"}).start()
    try:
        budget(gateway, 50.0, "REJECT")
        client = gateway.client()
        run = add_run(client, client.create_experiment("tenant-train"), 1_750_000_000_000, 1_750_003_600_000,
                      tags={"instance_type": "m5.xlarge"})
        client.create_registered_model("tenant-model")
        client.create_model_version("tenant-model", f"runs:/{run}/model", run_id=run)
    except BaseException:
        gateway.kill()
        raise
    (work / "gateway.yml").write_text(yaml.safe_dump({
        "mlflow": {"tracking_uri": gateway.url, "experiments": ["tenant-train"], "poll_interval": "2s"},
        "traces": {"enabled": False}, "gateway": {"enabled": True}}))
    exporter_port, gateway_port, prom_port = free_port(), free_port(), free_port()
    procs = [subprocess.Popen([EXPORTER, "serve", "--config", str(work / name), "--listen", f"127.0.0.1:{port}"],
                              env=child_env(), stdout=subprocess.DEVNULL, stderr=open(work / f"{Path(name).stem}.log", "wb"))
             for name, port in (("exporter.yml", exporter_port), ("gateway.yml", gateway_port))]
    (work / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ROOT / "alerts" / "rules.yml")],
        "scrape_configs": [{"job_name": "mlops-kpi-exporter", "static_configs": [
            {"targets": [f"127.0.0.1:{exporter_port}", f"127.0.0.1:{gateway_port}"]}]}]}))
    promtool = shutil.which("prometheus")
    if promtool is None:
        pytest.fail("prometheus is not installed (Debian package 'prometheus'; .ci/run installs it)")
    procs.append(subprocess.Popen([promtool, f"--config.file={work / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                                  stdout=subprocess.DEVNULL, stderr=open(work / "prometheus.log", "wb")))
    url = f"http://127.0.0.1:{prom_port}"
    try:
        wait_http(f"{url}/-/ready", timeout=60)
        deadline = time.monotonic() + 90
        ready = ("mlops:endpoint_cost_per_1k_predictions:1h", "mlops_kpi_target_met", "mlops:experiment_spend:1d",
                 'mlops_endpoint_utilization_ratio{resource="capacity"}',
                 "mlops_calibrated_cost_by_tag_month", "mlops:billing_attribution_coverage:ratio",  # after the MLflow poll that follows the first bill read
                 "mlops:gateway_budget_used:ratio")
        while not all(requests.get(f"{url}/api/v1/query", params={"query": q}, timeout=5).json()["data"]["result"]
                      for q in ready):
            assert time.monotonic() < deadline, "Prometheus never got the exporter's data"
            time.sleep(1)
        # enough scrapes for every rate window the test uses (15s): wait until Prometheus holds them
        scraped = 'count_over_time(up{job="mlops-kpi-exporter"}[15s]) >= 12'
        while not requests.get(f"{url}/api/v1/query", params={"query": scraped}, timeout=5).json()["data"]["result"]:
            assert time.monotonic() < deadline + 60, "Prometheus never scraped the exporter long enough"
            time.sleep(0.5)
        yield url
    finally:
        stop.set()
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        upstream.close()
        gateway.kill()


def test_variables_resolve(prometheus):
    for board in dashboards().values():
        for variable in board["templating"]["list"]:
            if variable["type"] != "query":
                continue
            metric, label = variable["query"].removeprefix("label_values(").removesuffix(")").rsplit(", ", 1)
            metric = render.expand(metric)
            values = requests.get(f"{prometheus}/api/v1/label/{label}/values", params={"match[]": metric}, timeout=5).json()
            assert values["status"] == "success", (variable["name"], values)
            if variable["name"] == "workspace":  # the gateway's MLflow has workspaces, the demo's store has none
                assert "default" in values["data"], f"variable workspace of {board['uid']}: {values['data']}"
                continue
            assert values["data"], f"variable {variable['name']} of {board['uid']} has no values"


@pytest.mark.parametrize("job", [".+", "mlops-kpi-exporter"], ids=["job=All", "job=the demo's"])
def test_every_panel_query_is_valid_and_returns_data(prometheus, job):
    """Each query with its variables set the way Grafana sets them: the datasource chosen (the one
    Prometheus), job = All (its allValue) or the demo's job, the other variables All."""
    empty = []
    for uid, board in dashboards().items():
        for panel, target in targets(board):
            result = render.run(prometheus, target, window=60, rate_interval="15s", variables={"job": job})
            if not result:
                empty.append(f"{uid} / {panel['title']} / {target['refId']}: {target['expr']}")
    assert empty == [], "panels without data:\n" + "\n".join(empty)


def test_another_job_sees_nothing_of_this_one(prometheus):
    """The job variable really selects: a job that does not exist returns no data on any panel."""
    for uid, board in dashboards().items():
        for panel, target in targets(board):
            if "time()" in target["expr"] and "-" not in target["expr"]:
                continue
            assert not render.run(prometheus, target, window=60, rate_interval="15s", variables={"job": "staging"}), \
                f"{uid} / {panel['title']}"


def test_pictures_render(prometheus, tmp_path):
    """MLOPS_UPDATE_PICTURES=1 writes them to dashboards/img/ for the README instead of a temp folder."""
    import os

    out = BOARDS / "img" if os.environ.get("MLOPS_UPDATE_PICTURES") else tmp_path
    out.mkdir(exist_ok=True)
    for board in dashboards().values():
        path = render.render(board, prometheus, out, window=90)
        assert path.stat().st_size > 10_000
    readme = (ROOT / "README.md").read_text()
    for uid in dashboards():
        assert f"dashboards/img/{uid}.png" in readme and (BOARDS / "img" / f"{uid}.png").is_file()
