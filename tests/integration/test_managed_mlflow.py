"""Managed MLflow through a tracking plugin: every source reads a real `mlflow server` through the test
plugin's stores (tests/plugins/signed_mlflow_store.py, the scheme signed+http://), behind a loopback
proxy that refuses whatever the plugin did not sign (tests/signed_mlflow.py). Runs and their costs,
system metrics, traces and their GenAI cost, the model registry and KPIs all arrive, and the proxy
refuses nothing; the same config as plain http:// is refused, which shows the proxy checks, and so is
a request made beside the plugin's store with its credentials, which is why no source makes one.

The sources run in this process (the exporter's own store and registry, as /metrics shows them);
`check` runs as a child process too, finding the plugin as an installed one.
"""

from __future__ import annotations

import logging
import time

import pytest
import yaml
from mlflow.entities import Metric

from conftest import HOUR_MS, InProcess, add_run, child_env, value
from mlops_kpi_exporter.cli import prepare
from mlops_kpi_exporter.config import config_from_dict
from signed_mlflow import SigningProxy, install_plugin, pythonpath
from test_cli import run_cli
from test_traces import server, trace, usage  # noqa: F401 - the module's offline MLflow server, its trace writer

CPU, GPU0 = "system/cpu_utilization_percentage", "system/gpu_0_utilization_percentage"


@pytest.fixture(scope="module")
def plugin_paths(tmp_path_factory):
    return install_plugin(tmp_path_factory.mktemp("plugin-site"))


@pytest.fixture
def proxy(server, plugin_paths):  # noqa: F811 - the fixture imported above
    proxy = SigningProxy(server.url).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def seeded(server, prefix):  # noqa: F811
    """A 2 h p3.2xlarge run (3.06 an hour: 6.12) with system metrics (GPU 50 then 70 %, CPU 20 then 40 %)
    and acc 0.91, the champion version of a model; a trace of gpt-4o, 1000 tokens in and 500 out (MLflow
    prices it: 1000 x 2.50 + 500 x 10.00 per million = 0.0075)."""
    client = server.client()
    now = int(time.time() * 1000)
    exp = client.create_experiment(f"{prefix}-train")
    run_id = add_run(client, exp, now - 3 * HOUR_MS, None, tags={"instance_type": "p3.2xlarge"}, name="fit")
    client.log_batch(run_id, metrics=[Metric(key, float(v), now - 3 * HOUR_MS + i * 10_000, i)
                                      for key, values in ((GPU0, [50, 70]), (CPU, [20, 40])) for i, v in enumerate(values)])
    client.log_metric(run_id, "acc", 0.91)
    client.set_terminated(run_id, "FINISHED", end_time=now - HOUR_MS)
    model = f"{prefix}-model"
    client.create_registered_model(model)
    client.create_model_version(model, "s3://models/fit", run_id=run_id)
    client.set_registered_model_alias(model, "champion", "1")
    trace(f"{prefix}-chat", ("gpt-4o", "openai", usage(1000, 500)))
    return {"run_id": run_id, "model": model}


def settings(uri: str, prefix: str, model: str) -> dict:
    return {
        "mlflow": {"tracking_uri": uri, "experiments": [f"{prefix}-*"], "timeout": "10s"},
        "registry": {"models": [f"{prefix}-*"]},
        "kpis": [{"name": "champion_acc", "metric": "acc", "source": "model_alias", "model": model, "alias": "champion"},
                 {"name": "fit_acc", "metric": "acc", "experiment": f"{prefix}-train"}],
        "traces": {"enabled": True},
    }


def exporter(uri: str, prefix: str, model: str) -> InProcess:
    config = config_from_dict(settings(uri, prefix, model))
    mlflow, sources = prepare(config)
    mlflow.apply()
    return InProcess(config, sources)


def test_every_source_reads_through_the_plugin(proxy, seeded, prefix, caplog):
    caplog.set_level(logging.INFO, logger="mlops_kpi_exporter")
    app = exporter(proxy.plugin_uri, prefix, seeded["model"])
    assert sorted(s.name for s in app.sources) == ["gateway", "kpis", "mlflow", "registry", "traces"]
    m = app.poll()  # every source polls once, and each poll must succeed
    train, chat, model = f"{prefix}-train", f"{prefix}-chat", seeded["model"]
    assert value(m, "mlops_experiment_cost", experiment=train, status="FINISHED") == pytest.approx(6.12)
    assert value(m, "mlops_run_utilization_ratio", experiment=train, run_id=seeded["run_id"], run_name="fit",
                 status="FINISHED", resource="gpu") == pytest.approx(0.6)
    assert value(m, "mlops_experiment_utilization_ratio", experiment=train, resource="cpu") == pytest.approx(0.3)
    assert value(m, "mlops_genai_cost", experiment=chat, model="gpt-4o") == pytest.approx(0.0075, abs=1e-12)
    assert value(m, "mlops_genai_traces", experiment=chat, status="OK") == 1
    assert value(m, "mlops_model_versions", model=model) == 1
    assert value(m, "mlops_model_version_info", model=model, version="1", alias="champion",
                 run_id=seeded["run_id"]) == 1
    assert value(m, "mlops_kpi", kpi="champion_acc", experiment=train) == 0.91
    assert value(m, "mlops_kpi", kpi="fit_acc", experiment=train) == 0.91
    assert not any(name.startswith("mlops_gateway_") for name, _ in m)

    assert proxy.refused == {}, proxy.refused  # not one request the plugin did not sign
    for read in ("POST /api/2.0/mlflow/runs/search", "GET /api/2.0/mlflow/metrics/get-history",
                 "GET /api/3.0/mlflow/traces/batchGet", "GET /api/2.0/mlflow/registered-models/search",
                 "GET /api/2.0/mlflow/registered-models/alias"):
        assert proxy.signed[read] > 0, (read, proxy.signed)

    app.poll()  # the gateway says once that it reads nothing through a plugin
    told = [r.getMessage() for r in caplog.records if r.name == "mlops_kpi_exporter.sources.gateway"]
    assert len(told) == 1 and proxy.plugin_uri in told[0], told
    assert proxy.refused == {}


def test_the_proxy_refuses_what_the_plugin_did_not_sign(proxy, seeded, prefix):
    from mlflow.utils.rest_utils import http_request

    plain = exporter(proxy.url, prefix, seeded["model"])  # MLflow's own client, nothing signed
    runs = next(s for s in plain.sources if s.name == "mlflow")
    with pytest.raises(Exception, match="UNAUTHENTICATED"):
        runs.poll()
    assert proxy.refused["GET /api/3.0/mlflow/workspaces"] >= 1 and not proxy.signed  # its first read

    # beside the plugin's store, its own credentials sign nothing: a source's own REST call would be refused
    store = exporter(proxy.plugin_uri, prefix, seeded["model"]).sources[0].runs.client._tracking_client.store
    reply = http_request(store.get_host_creds(), "/api/3.0/mlflow/traces/batchGet", "GET", params={"trace_ids": ["x"]})
    assert reply.status_code == 401
    assert not proxy.signed


def test_check_in_a_child_process_finds_the_plugin_installed(proxy, seeded, prefix, plugin_paths, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(settings(proxy.plugin_uri, prefix, seeded["model"])))
    proc = run_cli("check", "--config", str(path), env=child_env() | {"PYTHONPATH": pythonpath(plugin_paths)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"config {path}: ok"
    assert sorted(line.split(":")[0] for line in lines[1:] if line.startswith("source ")) == [
        "source gateway", "source kpis", "source mlflow", "source registry", "source traces"]
    assert "source gateway: ok: no gateway API through this plugin: nothing to read" in lines
    assert all(": ok: " in line for line in lines[1:] if line.startswith("source ")), proc.stdout
    assert proxy.refused == {} and proxy.signed, (proxy.refused, proxy.signed)
