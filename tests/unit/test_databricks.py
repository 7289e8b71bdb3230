"""Databricks runs priced from their cluster (mlflow.databricks.cluster.info): VMs from the catalog and
DBUs from pricing.databricks; explicit tags still win; a tag that cannot be a cluster skips the run."""

from __future__ import annotations

import json
import logging

import pytest

from mlops_kpi_exporter.bad_data import BadData
from mlops_kpi_exporter.config import ConfigError, PricingConfig, config_from_dict
from mlops_kpi_exporter.databricks import CLUSTER_INFO_TAG, Cluster, read_cluster
from mlops_kpi_exporter.pricing import Pricer
from mlops_kpi_exporter.resolved import unmatched
from mlops_kpi_exporter.runs import RunRules, make_facts

DBX = {"dbu_price": 0.15, "dbus_per_hour": {"i3.xlarge": 1.0, "m5.4xlarge": 2.74}}
PRICER = Pricer(PricingConfig(default_hourly_cost=0.5, databricks=DBX))
# catalog VMs: i3.xlarge 0.312, m5.4xlarge 0.768, m5.xlarge 0.192; one i3.xlarge node with its DBU:
I3 = 0.312 + 1.0 * 0.15  # 0.462
M5_4X = 0.768 + 2.74 * 0.15  # 1.179
START = 1_700_000_000_000
HOUR_MS = 3_600_000


def info(**fields) -> dict[str, str]:
    return {CLUSTER_INFO_TAG: json.dumps({"cluster_name": "x", "spark_version": "13.1.x-cpu-ml-scala2.12", **fields})}


def rate(tags, pricer=PRICER):
    found = pricer.rate(tags, {})
    return round(found.hourly, 12), found.source, found.instance_type


def test_the_issues_run_is_priced_from_the_catalog_and_the_dbu_rate():
    """Acceptance: a run with only the cluster info tag, two hours on 1 i3.xlarge worker + an m5.4xlarge driver."""
    rules = RunRules(PRICER, ("estimator",))
    tags = info(node_type_id="i3.xlarge", driver_node_type_id="m5.4xlarge", autotermination_minutes=120, num_workers=1)
    facts = make_facts(rules, run_id="r", experiment_id="1", run_name="dbx", status="FINISHED", start_time=START,
                       end_time=START + 2 * HOUR_MS, tags=tags, params={}, now_ms=START + 3 * HOUR_MS)
    assert facts.hourly == pytest.approx(1.641, abs=1e-12)  # 1 x 0.462 + 1 x 1.179
    assert facts.cost_nano(0) == 3_282_000_000  # 3.282 for the two hours, exactly
    assert (facts.price_source, facts.instance_type, facts.catalog_provider) == ("databricks", "i3.xlarge", None)


def test_workers_times_node_plus_one_driver():
    assert rate(info(node_type_id="i3.xlarge", num_workers=3)) == (round(4 * I3, 12), "databricks", "i3.xlarge")
    # a distinct driver type: its own VM and DBU rate
    assert rate(info(node_type_id="i3.xlarge", driver_node_type_id="m5.4xlarge", num_workers=2)) == (
        round(2 * I3 + M5_4X, 12), "databricks", "i3.xlarge")
    # a single-node cluster: the driver alone
    assert rate(info(node_type_id="i3.xlarge", driver_node_type_id="m5.4xlarge", num_workers=0))[0] == round(M5_4X, 12)


def test_autoscale_uses_the_target_else_the_minimum():
    target = info(node_type_id="i3.xlarge", autoscale={"min_workers": 2, "max_workers": 20, "target_workers": 4})
    assert rate(target) == (round(5 * I3, 12), "databricks", "i3.xlarge")  # 4 workers + the driver: 2.31
    minimum = info(node_type_id="i3.xlarge", autoscale={"min_workers": 2, "max_workers": 20})
    assert rate(minimum)[0] == round(3 * I3, 12)  # 1.386, never the maximum
    # autoscale decides even when a num_workers is written beside it
    assert rate(info(node_type_id="i3.xlarge", num_workers=9, autoscale={"min_workers": 2}))[0] == round(3 * I3, 12)


def test_a_node_type_without_a_dbu_rate_is_priced_for_its_vms_under_a_source_that_says_so(caplog):
    tags = info(node_type_id="m5.xlarge", driver_node_type_id="i3.xlarge", num_workers=2)
    with caplog.at_level(logging.WARNING, logger="mlops_kpi_exporter.pricing"):
        assert rate(tags) == (round(2 * 0.192 + I3, 12), "databricks_no_dbu_rate", "m5.xlarge")  # 0.846
        rate(tags)
    assert [r.getMessage() for r in caplog.records].count(
        "pricing.databricks.dbus_per_hour has no rate for node type m5.xlarge: Databricks runs on it are priced "
        "for their VMs only (price source databricks_no_dbu_rate)") == 1  # once, not per run
    # no pricing.databricks at all: every cluster is priced for its VMs only, and says so
    assert rate(info(node_type_id="i3.xlarge", num_workers=1), Pricer(PricingConfig())) == (
        0.624, "databricks_no_dbu_rate", "i3.xlarge")


def test_vm_prices_come_through_the_config_first_and_dbu_rates_match_case_insensitively():
    pricer = Pricer(PricingConfig(instances={"i3.xlarge": 0.25}, databricks=DBX))
    assert rate(info(node_type_id="i3.xlarge", num_workers=1), pricer) == (0.8, "databricks", "i3.xlarge")
    assert rate(info(node_type_id="I3.XLarge", num_workers=1))[:2] == (round(2 * I3, 12), "databricks")


def test_an_unknown_vm_is_an_unknown_machine_at_the_default_rate_per_node():
    assert rate(info(node_type_id="x9.mega", num_workers=3)) == (2.0, "default", "x9.mega")  # 4 nodes x 0.5
    assert rate(info(node_type_id="i3.xlarge", driver_node_type_id="x9.mega", num_workers=1)) == (1.0, "default", "i3.xlarge")


def test_explicit_tags_win_over_the_cluster():
    cluster = info(node_type_id="i3.xlarge", num_workers=7)
    assert rate({**cluster, "mlops.hourly_cost": "9.5"}) == (9.5, "tag", None)
    assert rate({**cluster, "instance_type": "p3.2xlarge"}) == (3.06, "catalog", "p3.2xlarge")
    assert rate({**cluster, "instance_type": "mystery"}) == (0.5, "default", "mystery")  # named by hand: not the cluster
    assert PRICER.rate(cluster, {"instance_type": "m5.xlarge"}).source == "catalog"  # a param names a machine too
    assert rate({CLUSTER_INFO_TAG: "  "}) == (0.5, "default", None)  # an empty tag is no cluster


def test_a_python_literal_is_read_and_nothing_is_evaluated():
    text = "{'node_type_id': 'i3.xlarge', 'autoscale': {'min_workers': 2, 'max_workers': 8}, 'enable_elastic_disk': True}"
    assert read_cluster(text) == Cluster("i3.xlarge", "i3.xlarge", 2)
    with pytest.raises(BadData) as exc:
        read_cluster("__import__('os').system('true')")
    assert exc.value.reason == "invalid_data"


@pytest.mark.parametrize(
    "text, reason",
    [
        ("not json at all {", "invalid_data"),
        ('["i3.xlarge", 2]', "invalid_data"),
        ('"i3.xlarge"', "invalid_data"),
        ("{" * 5000 + "}" * 5000, "invalid_data"),
        ("x" * 100_001, "invalid_data"),
        ('{"num_workers": 2}', "invalid_data"),  # no node type (an instance pool)
        ('{"node_type_id": "", "num_workers": 2}', "invalid_data"),
        ('{"node_type_id": 42, "num_workers": 2}', "invalid_data"),
        ('{"node_type_id": "i3.xlarge", "autoscale": 4}', "invalid_data"),
        ('{"node_type_id": "i3.xlarge"}', "invalid_instance_count"),  # no workers at all
        ('{"node_type_id": "i3.xlarge", "num_workers": -1}', "invalid_instance_count"),
        ('{"node_type_id": "i3.xlarge", "num_workers": 2.5}', "invalid_instance_count"),
        ('{"node_type_id": "i3.xlarge", "num_workers": "3"}', "invalid_instance_count"),
        ('{"node_type_id": "i3.xlarge", "num_workers": true}', "invalid_instance_count"),
        ('{"node_type_id": "i3.xlarge", "num_workers": 1e9}', "invalid_instance_count"),
        ('{"node_type_id": "i3.xlarge", "num_workers": NaN}', "invalid_instance_count"),
        ('{"node_type_id": "i3.xlarge", "autoscale": {"max_workers": 8}}', "invalid_instance_count"),
        ('{"node_type_id": "i3.xlarge", "autoscale": {"min_workers": 2, "target_workers": -4}}', "invalid_instance_count"),
        # a whole number of workers whose cluster would cost over 1,000,000 an hour
        ('{"node_type_id": "p4d.24xlarge", "num_workers": 99999}', "invalid_instance_count"),
    ],
)
def test_bad_cluster_info_skips_the_run_with_a_reason(text, reason):
    with pytest.raises(BadData) as exc:
        PRICER.rate({CLUSTER_INFO_TAG: text}, {})
    assert exc.value.reason == reason


def test_a_bad_cluster_is_skipped_by_the_run_checks_too():
    rules = RunRules(PRICER, ())
    with pytest.raises(BadData) as exc:
        make_facts(rules, run_id="r", experiment_id="1", run_name=None, status="FINISHED", start_time=START,
                   end_time=START + HOUR_MS, tags={CLUSTER_INFO_TAG: "{oops"}, params={}, now_ms=START + HOUR_MS)
    assert exc.value.reason == "invalid_data"


@pytest.mark.parametrize(
    "databricks, words",
    [
        ({"dbu_price": -0.1, "dbus_per_hour": {"i3.xlarge": 1}}, "pricing.databricks.dbu_price: Input should be greater than or equal to 0"),
        ({"dbu_price": float("nan"), "dbus_per_hour": {"i3.xlarge": 1}}, "pricing.databricks.dbu_price: Input should be a finite number"),
        ({"dbu_price": 5000, "dbus_per_hour": {"i3.xlarge": 1}}, "pricing.databricks.dbu_price: Input should be less than or equal to 1000"),
        ({"dbus_per_hour": {"i3.xlarge": 1}}, "pricing.databricks.dbu_price: required key is missing"),
        ({"dbu_price": 0.15}, "pricing.databricks.dbus_per_hour: required key is missing"),
        ({"dbu_price": 0.15, "dbus_per_hour": {}}, "pricing.databricks.dbus_per_hour"),
        ({"dbu_price": 0.15, "dbus_per_hour": {"i3.xlarge": -2}}, "pricing.databricks.dbus_per_hour.i3.xlarge: Input should be greater than or equal to 0"),
        ({"dbu_price": 0.15, "dbus_per_hour": {"i3.xlarge": "lots"}}, "pricing.databricks.dbus_per_hour.i3.xlarge"),
        ({"dbu_price": 0.15, "dbus_per_hour": {"i3.xlarge": 1, "I3.xlarge": 1}}, "differ only in case"),
        ({"dbu_price": 0.15, "dbus_per_hour": {" ": 1}}, "a node type must not be empty"),
        ({"dbu_price": 0.15, "dbus_per_hour": {"i3.xlarge": 1}, "dbu_prices": 1}, "pricing.databricks.dbu_prices: unknown key"),
    ],
)
def test_bad_databricks_config_is_refused_naming_the_field(databricks, words):
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"mlflow": {"tracking_uri": "http://mlflow:5000"}, "pricing": {"databricks": databricks}})
    assert words in str(exc.value), str(exc.value)


def test_check_warns_of_a_dbu_rate_for_a_vm_nothing_prices():
    config = config_from_dict({"mlflow": {"tracking_uri": "http://mlflow:5000"},
                               "pricing": {"databricks": {"dbu_price": 0.15, "dbus_per_hour": {"i3.xlarge": 1, "z1d.huge": 3}}}})
    assert unmatched(config, []) == [
        "pricing.databricks.dbus_per_hour[z1d.huge]: neither pricing.instances nor the catalog prices this VM: "
        "clusters of it are priced at pricing.default_hourly_cost per node"]
