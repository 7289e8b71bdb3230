"""The shipped catalog and the order in which a run's hourly rate is found."""

from __future__ import annotations

import pytest

from mlops_kpi_exporter.bad_data import BadData
from mlops_kpi_exporter.config import PricingConfig
from mlops_kpi_exporter.pricing import Pricer, load_catalog


def test_catalog_covers_three_clouds_with_source_and_date():
    catalog = load_catalog()
    assert catalog.currency == "USD" and catalog.source and catalog.as_of
    assert catalog.prices["p3.2xlarge"] == 3.06  # the chapter's example machine
    for name in ("g4dn.xlarge", "n1-standard-8", "a2-highgpu-1g", "Standard_NC6s_v3", "Standard_D4s_v3"):
        assert catalog.prices[name] > 0
    assert len(catalog.prices) >= 50


def test_rate_order_tag_then_config_then_catalog_then_default():
    pricer = Pricer(PricingConfig(default_hourly_cost=0.5, instances={"p3.2xlarge": 2.0, "box": 1.0}))
    assert pricer.rate({"mlops.hourly_cost": "9.5", "instance_type": "box"}, {}).hourly == 9.5
    rate = pricer.rate({"instance_type": "p3.2xlarge"}, {})
    assert (rate.hourly, rate.source) == (2.0, "config")  # config overrides the catalog
    rate = pricer.rate({}, {"instance_type": "g4dn.xlarge"})  # params are read when tags say nothing
    assert (rate.hourly, rate.source) == (0.526, "catalog")
    rate = pricer.rate({"instance_type": "unheard-of"}, {})
    assert (rate.hourly, rate.source, rate.instance_type) == (0.5, "default", "unheard-of")
    assert pricer.rate({"instance_type": "standard_nc6s_v3"}, {}).hourly == 3.06  # case-insensitive fallback


def test_instance_count_multiplies_and_tags_beat_params():
    pricer = Pricer(PricingConfig())
    assert pricer.rate({"instance_type": "m5.xlarge", "instance_count": "3"}, {"instance_count": "5"}).hourly == pytest.approx(0.576)
    assert pricer.rate({"instance_type": "m5.xlarge"}, {"instance_count": "2.0"}).hourly == pytest.approx(0.384)


def test_custom_keys():
    pricer = Pricer(PricingConfig(instance_type_keys=["node_type", "instance_type"], instance_count_keys=["nodes"]))
    assert pricer.rate({"node_type": "m5.large", "instance_type": "p3.2xlarge", "nodes": "4"}, {}).hourly == pytest.approx(0.384)


@pytest.mark.parametrize(
    "tags, reason",
    [
        ({"mlops.hourly_cost": "abc"}, "invalid_hourly_cost"),
        ({"mlops.hourly_cost": "-1"}, "invalid_hourly_cost"),
        ({"mlops.hourly_cost": "nan"}, "invalid_hourly_cost"),
        ({"mlops.hourly_cost": "inf"}, "invalid_hourly_cost"),
        ({"instance_type": "m5.large", "instance_count": "0"}, "invalid_instance_count"),
        ({"instance_type": "m5.large", "instance_count": "1.5"}, "invalid_instance_count"),
        ({"instance_type": "m5.large", "instance_count": "many"}, "invalid_instance_count"),
    ],
)
def test_bad_values_are_named(tags, reason):
    with pytest.raises(BadData) as exc:
        Pricer(PricingConfig()).rate(tags, {})
    assert exc.value.reason == reason
