"""The bill joined to MLflow runs (billing.run_join): a real MLflow server, FOCUS files written here
(1.2 and 1.3 column sets), every figure worked out by hand in the comments."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from conftest import InProcess, add_run, connected, value
from focus_rows import FOCUS_13_SPLIT, row, write_csv, write_parquet
from mlops_kpi_exporter.config import config_from_dict
from mlops_kpi_exporter.sources.billing import bill_sources
from mlops_kpi_exporter.sources.mlflow_runs import MlflowSource

NOW = datetime(2026, 11, 20, 12, tzinfo=timezone.utc)


def ms(day: int, hour: int, minute: int = 0) -> int:
    return int(datetime(2026, 11, day, hour, minute, tzinfo=timezone.utc).timestamp() * 1000)


def iso(moment_ms: int) -> str:
    return datetime.fromtimestamp(moment_ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def period(start_ms: int, end_ms: int) -> tuple[str, str]:
    return iso(start_ms), iso(end_ms)


@pytest.fixture
def runs(mlflow_server, prefix):
    client = mlflow_server.client()
    exp = client.create_experiment(f"{prefix}-train")
    other = client.create_experiment(f"{prefix}-tune")
    ids = {
        # its own machine, tagged with the run id by the launcher: estimate p3.2xlarge 3.06/h x 1 h
        "a": add_run(client, exp, ms(10, 10), ms(10, 11), tags={"instance_type": "p3.2xlarge"}, name="a"),
        # two runs on the shared cluster c-1 on the 11th, 10:00-10:30 and 10:15-10:45
        "b": add_run(client, exp, ms(11, 10), ms(11, 10, 30), name="b",
                     tags={"instance_type": "m5.xlarge", "mlflow.databricks.cluster.id": "c-1"}),
        "c": add_run(client, other, ms(11, 10, 15), ms(11, 10, 45), name="c",
                     tags={"instance_type": "m5.xlarge", "mlflow.databricks.cluster.id": "c-1"}),
        # a pod on a shared Kubernetes node, its share of the node by split cost allocation (FOCUS 1.3)
        "d": add_run(client, other, ms(12, 8), ms(12, 9), name="d", tags={"instance_type": "g4dn.xlarge"}),
        # ended this morning: the bill (a day or two late) does not cover it yet
        "e": add_run(client, exp, ms(20, 9), ms(20, 11), name="e", tags={"instance_type": "p3.2xlarge"}),
    }
    return prefix, ids


def setup(mlflow_server, prefix, folder, pricing=None, **billing):
    config = config_from_dict({
        "mlflow": {"tracking_uri": mlflow_server.url, "experiments": [f"{prefix}-*"]},
        "pricing": pricing or {},
        "billing": {"months": 2, "sources": [{"name": "aws", "focus": str(folder)}],
                    "run_join": [{"bill_tag": "mlflow_run_id", "run": "run_id"},
                                 {"bill_tag": "ClusterId", "run_tag": "mlflow.databricks.cluster.id"}], **billing},
        "allocation": {"tag_aliases": {"mlflow_run_id": ["mlflow_run_id", "user:mlflow_run_id"]}},
    })
    return InProcess(config, [MlflowSource(*connected(config), clock=lambda: NOW.timestamp()), *bill_sources(config)])


def poll_all(exporter):
    return exporter.poll()


def write_bill(folder, ids, cluster_hour_one="12", restated=False):
    write_csv(folder / "nov.csv", [
        row("5", "4", "6", *period(ms(10, 10), ms(10, 11)), tags={"user:mlflow_run_id": ids["a"]}),
        row("0.5", "0.5", "0.5", *period(ms(10, 0), ms(11, 0)), service="Amazon S3", category="Storage",
            tags={"mlflow_run_id": ids["a"]}),  # the run's bucket: its storage is its cost too
        # the cluster's first hour: some run ran 10:00-10:45 (9.00 shared), idle 10:45-11:00 (3.00)
        row(cluster_hour_one, "9", "15", *period(ms(11, 10), ms(11, 11)), tags={"ClusterId": "c-1"}),
        # the cluster left up for another hour after its runs: all of it idle
        row("12", "9", "15", *period(ms(11, 11), ms(11, 12)), tags={"ClusterId": "c-1", "Vendor": "Databricks"}),
        # both tags: the first rule (the run id) wins
        row("1", "1", "1", *period(ms(11, 10), ms(11, 11)), tags={"ClusterId": "c-1", "mlflow_run_id": ids["b"]}),
        # a run id no watched run has (another team's experiment, a deleted run)
        row("7", "7", "7", *period(ms(12, 0), ms(12, 1)), tags={"mlflow_run_id": "0" * 32}),
        # nothing to join by
        row("100", "80", "120", *period(ms(12, 0), ms(13, 0)), service="Amazon EKS"),
    ] + ([row("2", "2", "2", *period(ms(13, 0), ms(13, 1)), tags={"mlflow_run_id": ids["a"]})] if restated else []))
    # FOCUS 1.3 split cost allocation: the node's Tags name the cluster, the pod's AllocatedTags the run
    write_parquet(folder / "k8s.parquet", [
        row("3", "2", "4", *period(ms(12, 8), ms(12, 9)), tags={"ClusterId": "c-1"}, allocated={"mlflow_run_id": ids["d"]}),
    ], FOCUS_13_SPLIT)


def billed(m, prefix, run_id, name, exp="train", basis="billed", status="FINISHED"):
    return value(m, "mlops_run_billed_cost", experiment=f"{prefix}-{exp}", run_id=run_id, run_name=name, status=status,
                 cost_basis=basis)


def test_runs_joined_by_id_and_by_cluster_split_with_the_idle_rest(mlflow_server, runs, tmp_path):
    prefix, ids = runs
    write_bill(tmp_path / "bill", ids)
    m = poll_all(setup(mlflow_server, prefix, tmp_path / "bill"))

    assert billed(m, prefix, ids["a"], "a") == 5.5  # 5 compute + 0.5 storage
    assert billed(m, prefix, ids["a"], "a", basis="list") == 6.5
    assert billed(m, prefix, ids["b"], "b") == pytest.approx(4.5 + 1)  # half of the shared 9.00, and its own row
    assert billed(m, prefix, ids["c"], "c", exp="tune") == pytest.approx(4.5)
    assert billed(m, prefix, ids["c"], "c", exp="tune", basis="effective") == pytest.approx(9 * 0.75 / 2)
    assert billed(m, prefix, ids["d"], "d", exp="tune") == 3.0  # AllocatedTags before Tags
    assert ("mlops_run_billed_cost", ()) not in m and not any(  # run e: not on the bill yet
        n == "mlops_run_billed_cost" and ("run_id", ids["e"]) in labels for n, labels in m)

    assert value(m, "mlops_billing_join_idle_cost", bill="aws", provider="AWS", month="2026-11", key="c-1",
                 cost_basis="billed") == pytest.approx(3 + 12)
    assert value(m, "mlops_billing_shared_cost", bill="aws", provider="AWS", month="2026-11",
                 cost_basis="billed") == pytest.approx(24)
    assert value(m, "mlops_billing_join_unmatched_cost", bill="aws", provider="AWS", month="2026-11",
                 cost_basis="billed") == 7.0
    # joined to a run: 5.5 (a) + 9 (b, c shared) + 1 (b) + 3 (d); idle, unmatched and the EKS row are not
    assert value(m, "mlops_billing_attributed_cost", bill="aws", provider="AWS", month="2026-11",
                 cost_basis="billed") == pytest.approx(18.5)
    assert value(m, "mlops_experiment_billed_cost", experiment=f"{prefix}-train", month="2026-11",
                 cost_basis="billed") == pytest.approx(5.5 + 5.5)
    assert value(m, "mlops_experiment_billed_cost", experiment=f"{prefix}-tune", month="2026-11",
                 cost_basis="billed") == pytest.approx(4.5 + 3)
    assert value(m, "mlops_experiment_billed_runs", experiment=f"{prefix}-train") == 2  # a, b (e not yet)
    # billed over estimated, by machine: p3.2xlarge 5.5 / 3.06; m5.xlarge (5.5 + 4.5) / (0.192 x 0.5 x 2)
    assert value(m, "mlops_price_calibration_ratio", provider="AWS", instance_type="p3.2xlarge") == pytest.approx(5.5 / 3.06)
    assert value(m, "mlops_price_calibration_ratio", provider="AWS", instance_type="m5.xlarge") == pytest.approx(
        10 / (0.192 * 0.5 * 2))


def test_a_late_bill_a_restated_month_and_a_restart(mlflow_server, runs, tmp_path):
    prefix, ids = runs
    folder = tmp_path / "bill"
    write_bill(folder, ids)
    exporter = setup(mlflow_server, prefix, folder)
    poll_all(exporter)
    # the bill catches up with this morning's run e: its billed cost appears
    write_csv(folder / "today.csv", [row("8", "7", "9", *period(ms(20, 9), ms(20, 11)), tags={"mlflow_run_id": ids["e"]})])
    m = poll_all(exporter)
    assert billed(m, prefix, ids["e"], "e") == 8.0
    # the month restated: the cluster's first hour was 24, not 12; a late row for run a
    write_bill(folder, ids, cluster_hour_one="24", restated=True)
    m = poll_all(exporter)
    assert billed(m, prefix, ids["c"], "c", exp="tune") == pytest.approx(24 * 0.75 / 2)  # replaced, not added
    assert billed(m, prefix, ids["a"], "a") == pytest.approx(5.5 + 2)
    assert value(m, "mlops_billing_join_idle_cost", bill="aws", provider="AWS", month="2026-11", key="c-1",
                 cost_basis="billed") == pytest.approx(6 + 12)
    # a restart: new sources over the same files give identical figures
    again = poll_all(setup(mlflow_server, prefix, folder))
    joined = {k: v for k, v in m.items() if "billed" in k[0] or k[0].startswith("mlops_billing_")}
    assert joined and joined == {k: v for k, v in again.items() if k in joined}


def test_the_report_shows_billed_cost_per_experiment_and_run_beside_the_estimate(mlflow_server, runs, tmp_path):
    import io
    import json

    from mlops_kpi_exporter.report import Period, write_report

    prefix, ids = runs
    write_bill(tmp_path / "bill", ids)
    config = setup(mlflow_server, prefix, tmp_path / "bill").config
    now = int(NOW.timestamp() * 1000)
    out = io.StringIO()
    write_report(config, connected(config)[1], Period(ms(1, 0), now), "json", out, now)
    joined = json.loads(out.getvalue())["billed_runs"]
    train, tune = joined["by_experiment"][f"{prefix}-train"], joined["by_experiment"][f"{prefix}-tune"]
    assert train["billed"] == pytest.approx(5.5 + 5.5) and train["runs"] == 2
    assert train["estimate"] == pytest.approx(3.06 + 0.192 * 0.5)  # a on a p3.2xlarge 1 h, b on an m5.xlarge 30 min
    assert tune["billed"] == pytest.approx(4.5 + 3.0)
    top = joined["top_runs"]
    assert {top[0]["run_name"], top[1]["run_name"]} == {"a", "b"} and top[0]["billed"] == 5.5 and top[0]["complete"]
    assert joined["idle"] == {"c-1": pytest.approx(15.0)} and joined["unmatched"] == 7.0
    assert joined["attributed"] == pytest.approx(18.5)
    page = io.StringIO()
    write_report(config, connected(config)[1], Period(ms(1, 0), now), "html", page, now)
    assert "What the runs really cost" in page.getvalue() and "c-1" in page.getvalue()


def test_calibration_uses_the_machine_types_billed_ratio_for_runs_not_yet_on_the_bill(mlflow_server, runs, tmp_path):
    prefix, ids = runs
    write_bill(tmp_path / "bill", ids)
    m = poll_all(setup(mlflow_server, prefix, tmp_path / "bill", pricing={"calibrate_from_bill": True}))
    # train: a (p3.2xlarge 1 h, 3.06), b (m5.xlarge 30 min, 0.096), e (p3.2xlarge 2 h, 6.12, not billed yet).
    # p3.2xlarge was billed 5.5 for 3.06 of estimate: e, not on the bill yet, is scaled by it. a and b are
    # billed already: their estimate is left as it is (their billed cost stands apart, not scaled twice)
    p3 = 5.5 / 3.06
    assert value(m, "mlops_experiment_calibrated_cost", experiment=f"{prefix}-train") == pytest.approx(
        3.06 + 6.12 * p3 + 0.096)
    assert value(m, "mlops_experiment_billed_cost", experiment=f"{prefix}-train", month="2026-11",
                 cost_basis="billed") == pytest.approx(5.5 + 5.5)
    # tune: c (m5.xlarge, billed) and d (g4dn.xlarge, billed): nothing left to scale
    assert value(m, "mlops_experiment_calibrated_cost", experiment=f"{prefix}-tune") == pytest.approx(
        value(m, "mlops_experiment_cost", experiment=f"{prefix}-tune", status="FINISHED"))


def test_joined_figures_are_absent_until_the_bill_is_read_and_say_what_they_wait_for(mlflow_server, runs, tmp_path):
    prefix, ids = runs
    write_bill(tmp_path / "bill", ids)
    exporter = setup(mlflow_server, prefix, tmp_path / "bill")
    mlflow, bill = exporter.sources
    m = exporter.poll(mlflow)  # the runs are in, the bill is not: no billed figure, not even a 0
    assert not any("billed" in name or name.startswith("mlops_billing_join") for name, _ in m)
    assert value(m, "mlops_derived_input_pending", figure="bill_join", source="billing:aws") == 1
    assert value(m, "mlops_derived_input_pending", figure="bill_join", source="mlflow") == 0
    m = exporter.poll(bill)
    assert value(m, "mlops_experiment_billed_runs", experiment=f"{prefix}-train") == 2
    assert value(m, "mlops_derived_input_pending", figure="bill_join", source="billing:aws") == 0
