"""pricing.calibrate_from_bill: catalog (list) prices scaled by what the bill's compute cost against
list, per provider, shown beside the list-price figures. A real MLflow server and FOCUS files."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from conftest import HOUR_MS, InProcess, add_run, connected, value
from focus_rows import row, write_csv
from mlops_kpi_exporter.bill import catalog_provider
from mlops_kpi_exporter.config import ConfigError, config_from_dict
from mlops_kpi_exporter.sources.billing import bill_sources
from mlops_kpi_exporter.sources.mlflow_runs import MlflowSource

NOW = datetime(2026, 11, 20, 12, tzinfo=timezone.utc).timestamp()


def test_provider_names_on_bills_map_to_the_catalog():
    assert [catalog_provider(p) for p in ("AWS", "Amazon Web Services", "Google Cloud", "Microsoft", "Azure",
                                          "Oracle")] == ["aws", "aws", "gcp", "azure", "azure", None]


def test_calibration_needs_a_bill_and_the_catalog():
    base = {"mlflow": {"tracking_uri": "http://127.0.0.1:1"}, "pricing": {"calibrate_from_bill": True}}
    with pytest.raises(ConfigError, match="calibrate_from_bill needs a bill"):
        config_from_dict(base)
    with pytest.raises(ConfigError, match="needs pricing.use_catalog"):
        config_from_dict(base | {"pricing": {"calibrate_from_bill": True, "use_catalog": False},
                                 "billing": {"sources": [{"name": "aws", "focus": "/tmp"}]}})


def test_catalog_prices_are_scaled_by_the_bills_effective_to_list_ratio(mlflow_server, prefix, tmp_path):
    client = mlflow_server.client()
    exp = client.create_experiment(f"{prefix}-train")
    start = int(NOW * 1000) - 10 * 24 * HOUR_MS
    add_run(client, exp, start, start + 10 * HOUR_MS, tags={"instance_type": "p3.2xlarge", "team": "a"})  # aws 30.60
    add_run(client, exp, start, start + 10 * HOUR_MS, tags={"instance_type": "e2-standard-4", "team": "a"})  # gcp 1.34012
    add_run(client, exp, start, start + 10 * HOUR_MS, tags={"instance_type": "my-box", "team": "b"})  # config: 2.0
    add_run(client, exp, start, start + 10 * HOUR_MS, tags={"mlops.hourly_cost": "0.5", "team": "b"})  # tag: 5.0
    nov = ("2026-11-05T00:00:00Z", "2026-11-06T00:00:00Z")
    write_csv(tmp_path / "bill.csv", [
        row("60", "60", "100", *nov, tags={"team": "a"}),  # AWS compute: effective 60 of list 100
        row("-20", "-20", "0", *nov, charge="Credit"),  # a one-off credit is not a price: left out of the factor
        row("10", "10", "10", *nov, service="Amazon S3", category="Storage"),  # not compute: no part of the factor
        row("9", "8", "10", *nov, provider="Google Cloud", service="Compute Engine"),  # gcp: 0.8
    ])
    config = config_from_dict({
        "mlflow": {"tracking_uri": mlflow_server.url, "experiments": [f"{prefix}-*"]},
        "pricing": {"calibrate_from_bill": True, "instances": {"my-box": 0.2}},
        "allocation": {"tags": ["team"]},
        "billing": {"sources": [{"name": "aws", "focus": str(tmp_path / "bill.csv")}]},
    })
    mlflow = MlflowSource(*connected(config), clock=lambda: NOW)
    exporter = InProcess(config, [mlflow, *bill_sources(config)])

    before = exporter.poll(mlflow)  # no bill read yet: no calibrated figure, never list shown as calibrated
    assert not any(name.startswith("mlops_price_calibration") or "calibrated" in name for name, _ in before)
    assert value(before, "mlops_derived_input_pending", figure="calibration", source="billing:aws") == 1

    m = exporter.poll(exporter.sources[1])
    assert value(m, "mlops_price_calibration_factor", provider="aws") == pytest.approx(0.6)
    assert value(m, "mlops_price_calibration_factor", provider="gcp") == pytest.approx(0.8)
    name = f"{prefix}-train"
    listed = sum(v for (n, labels), v in m.items() if n == "mlops_experiment_cost" and ("experiment", name) in labels)
    assert listed == pytest.approx(30.6 + 1.34012 + 2.0 + 5.0)  # the list-price figures are untouched
    assert value(m, "mlops_experiment_calibrated_cost", experiment=name) == pytest.approx(
        30.6 * 0.6 + 1.34012 * 0.8 + 2.0 + 5.0)  # config and tag prices are what you pay already
    assert value(m, "mlops_calibrated_cost_by_tag_month", month="2026-11", tag="team", value="a") == pytest.approx(
        30.6 * 0.6 + 1.34012 * 0.8)
    assert value(m, "mlops_calibrated_cost_by_tag_month", month="2026-11", tag="team", value="b") == pytest.approx(7.0)
    assert value(m, "mlops_cost_by_tag_month", month="2026-11", tag="team", value="a") == pytest.approx(30.6 + 1.34012)
