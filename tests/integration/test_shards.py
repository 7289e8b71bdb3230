"""mlflow.shard: several exporters share one MLflow, each its experiments by a stable hash of their id;
Prometheus sums the shards to the figures of a single exporter. A real MLflow server."""

from __future__ import annotations

import time

import pytest

from conftest import HOUR_MS, InProcess, add_run, connected
from mlops_kpi_exporter.config import ConfigError, config_from_dict
from mlops_kpi_exporter.sources.mlflow_runs import MlflowSource

SUMMED = ("mlops_experiment_cost", "mlops_runs", "mlops_cost_by_tag", "mlops_budget_cost_month_to_date",
          "mlops_experiment_run_seconds", "mlops_mlflow_runs_tracked")


def figures(mlflow_server, prefix, now, shard=None):
    config = config_from_dict({
        "mlflow": {"tracking_uri": mlflow_server.url, "experiments": [f"{prefix}-*"],
                   **({"shard": shard} if shard else {})},
        "allocation": {"tags": ["team"]},
        "budgets": [{"name": "all", "experiments": ["*"], "monthly": 100}],
    })
    source = MlflowSource(*connected(config), clock=lambda: now / 1000)
    return InProcess(config, [source]).poll()  # budgets come from the derived stage


def summed(parts):
    out = {}
    for part in parts:
        for (name, labels), v in part.items():
            if name in SUMMED:
                out[(name, labels)] = out.get((name, labels), 0) + v
    return out


def test_two_shards_sum_to_one_exporter_with_no_overlap_and_no_gap(mlflow_server, prefix):
    client = mlflow_server.client()
    now = int(time.time() * 1000)
    for e in range(12):
        exp = client.create_experiment(f"{prefix}-e{e}")
        for r in range(3):
            start = now - (e + r + 2) * HOUR_MS
            add_run(client, exp, start, start + HOUR_MS, tags={"instance_type": "m5.large", "team": f"t{e % 3}"})
    single = figures(mlflow_server, prefix, now)
    shards = [figures(mlflow_server, prefix, now, {"count": 2, "index": i}) for i in range(2)]
    watched = [{dict(labels)["experiment"] for name, labels in part if name == "mlops_experiment_info"} for part in shards]
    assert watched[0] and watched[1] and not watched[0] & watched[1]  # both work, none twice
    assert watched[0] | watched[1] == {f"{prefix}-e{e}" for e in range(12)}  # none left out
    whole = {k: v for k, v in single.items() if k[0] in SUMMED}
    assert summed(shards).keys() == whole.keys()
    for key, v in whole.items():
        assert summed(shards)[key] == pytest.approx(v), key


def test_the_shard_index_comes_from_the_config_or_the_environment(monkeypatch):
    base = {"mlflow": {"tracking_uri": "http://127.0.0.1:1"}}
    monkeypatch.delenv("MLOPS_SHARD_INDEX", raising=False)
    with pytest.raises(ConfigError, match="set shard.index or the MLOPS_SHARD_INDEX environment variable"):
        config_from_dict({"mlflow": {**base["mlflow"], "shard": {"count": 3}}})
    monkeypatch.setenv("MLOPS_SHARD_INDEX", "2")  # a StatefulSet's pod ordinal
    assert config_from_dict({"mlflow": {**base["mlflow"], "shard": {"count": 3}}}).mlflow.shard.index == 2
    monkeypatch.setenv("MLOPS_SHARD_INDEX", "3")
    with pytest.raises(ConfigError, match="shard index 3 is not from 0 to 2"):
        config_from_dict({"mlflow": {**base["mlflow"], "shard": {"count": 3}}})
    monkeypatch.setenv("MLOPS_SHARD_INDEX", "two")
    with pytest.raises(ConfigError, match="is not a whole number"):
        config_from_dict({"mlflow": {**base["mlflow"], "shard": {"count": 3}}})


def test_only_the_first_shard_runs_what_is_not_split_by_experiment(tmp_path):
    from mlops_kpi_exporter.cli import prepare

    (tmp_path / "bill").mkdir()
    base = {"tracking_uri": "http://127.0.0.1:1"}
    rest = {"kpis": [{"name": "k", "metric": "m", "experiment": "x"}],
            "billing": {"sources": [{"name": "aws", "focus": str(tmp_path / "bill")}]},
            "endpoints": [{"name": "e", "url": "http://127.0.0.1:1", "hourly_cost": 1}]}
    names = [sorted(s.name for s in prepare(config_from_dict({"mlflow": {**base, "shard": {"count": 2, "index": i}},
                                                                **rest}))[1]) for i in (0, 1)]
    assert names[0] == ["billing:aws", "endpoint:e", "gateway", "kpis", "mlflow", "registry", "traces"]
    assert names[1] == ["mlflow", "traces"]  # traces split by experiment, like the runs
