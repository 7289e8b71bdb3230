"""The cloud bill from FOCUS files written to the spec here: every column rule, totals worked out by hand."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import render, samples, value
from focus_rows import FOCUS_12, FOCUS_13, row, write_csv, write_parquet
from mlops_kpi_exporter.config import config_from_dict
from mlops_kpi_exporter.sources.billing import BillingSource, NotFocus

def source(folder: Path, **billing) -> BillingSource:
    config = config_from_dict({
        "mlflow": {"tracking_uri": "http://127.0.0.1:1"},
        "allocation": {"tags": ["team", "project"], "max_values": 2,
                       "tag_aliases": {"team": ["team", "Team", "user:team"]}},
        "billing": {"months": 2, "max_services": 2, **billing, "sources": [{"name": "aws", "focus": str(folder)}]},
    })
    return BillingSource(config.billing.sources[0], config)


def poll(src: BillingSource):
    families, summary = src.poll()
    return samples(render(families)), summary


def cost(m, basis="billed", **labels):
    return value(m, "mlops_cloud_cost", bill="aws", cost_basis=basis, **labels)


OCT = ("2026-10-05T00:00:00Z", "2026-10-06T00:00:00Z")
NOV = ("2026-11-02 00:00:00", "2026-11-03 00:00:00")  # no zone: UTC


def test_costs_by_month_provider_service_and_basis_with_credits_and_nulls(tmp_path):
    write_csv(tmp_path / "bill" / "aws.csv", [
        row("100.0", "80.0", "120.0", *NOV, tags={"user:team": "churn", "project": "crm"}),
        row("50.5", "50.5", "60.0", *NOV, tags={"Team": "fraud"}),
        row("-20.0", "-20.0", "0.0", *NOV, service="Amazon EC2", charge="Credit"),  # credits lower the invoice
        row("10.0", "10.0", "10.0", *NOV, service="Amazon S3", category="Storage", tags={"team": "churn"}),
        row("NULL", "", "5.0", *NOV, service="AWS Support", category="Management and Governance"),  # NULL and empty
        row("7.0", "7.0", "7.0", "2026-11-30T23:00:00+02:00", "2026-12-01T00:00:00+02:00"),  # 21:00 UTC: November
    ])
    m, summary = poll(source(tmp_path / "bill"))
    assert cost(m, month="2026-11", provider="AWS", service="Amazon EC2") == pytest.approx(100 + 50.5 - 20 + 7)
    assert cost(m, "effective", month="2026-11", provider="AWS", service="Amazon EC2") == pytest.approx(80 + 50.5 - 20 + 7)
    assert cost(m, "list", month="2026-11", provider="AWS", service="Amazon EC2") == pytest.approx(120 + 60 + 7)
    # two services per provider and month: the rest as other (S3 10 + Support 0 billed, 5 list)
    assert cost(m, month="2026-11", provider="AWS", service="other") == pytest.approx(0.0)
    assert cost(m, "list", month="2026-11", provider="AWS", service="other") == pytest.approx(5.0)
    assert value(m, "mlops_cloud_cost_latest_month", bill="aws", month="2026-11", cost_basis="billed") == pytest.approx(147.5)
    assert "6 rows" in summary


def test_tags_after_aliases_add_up_to_the_month_and_untagged_is_always_there(tmp_path):
    write_csv(tmp_path / "b.csv", [
        row("100", "100", "100", *NOV, tags={"user:team": "churn"}),
        row("40", "40", "40", *NOV, tags={"Team": "fraud"}),
        row("30", "30", "30", *NOV, tags={"team": "recsys"}),
        row("20", "20", "20", *NOV, tags={"team": "demand", "flag": True}),
        row("10", "10", "10", *NOV, service="Amazon S3", category="Storage"),
    ])
    m, _ = poll(source(tmp_path / "b.csv"))
    by = {v: value(m, "mlops_cloud_cost_by_tag", bill="aws", month="2026-11", tag="team", value=v, cost_basis="billed")
          for v in ("churn", "fraud", "other", "untagged")}
    assert by == {"churn": 100, "fraud": 40, "other": 50, "untagged": 10}  # max_values 2; they add up to 200
    compute = value(m, "mlops_cloud_compute_cost_by_tag", bill="aws", month="2026-11", tag="team", value="untagged",
                    cost_basis="billed")
    assert compute == 0  # the untagged 10 was storage
    assert value(m, "mlops_cloud_untagged_ratio", bill="aws", tag="team") == pytest.approx(10 / 200)
    assert value(m, "mlops_cloud_untagged_ratio", bill="aws", tag="project") == 1.0


def test_focus_1_3_parquet_and_gzip_csv_read_alike_and_only_the_latest_months_show(tmp_path):
    rows = [row("10", "9", "12", *OCT), row("20", "18", "24", *NOV, provider="Microsoft", service="Virtual Machines")]
    write_parquet(tmp_path / "bill" / "part-0.parquet", rows)
    write_csv(tmp_path / "bill" / "sep.csv.gz", [row("5", "5", "5", "2026-09-01T00:00:00Z", "2026-09-02T00:00:00Z")],
              columns=FOCUS_13, gz=True)
    m, _ = poll(source(tmp_path / "bill"))
    assert cost(m, month="2026-10", provider="AWS", service="Amazon EC2") == 10
    assert cost(m, "effective", month="2026-11", provider="Microsoft", service="Virtual Machines") == 18
    assert not any(dict(k[1]).get("month") == "2026-09" for k in m)  # months: 2
    assert value(m, "mlops_cloud_cost_last_charge_timestamp_seconds", bill="aws", provider="Microsoft") == 1_793_664_000


def test_a_restated_month_replaces_the_old_figures_and_unchanged_files_are_not_read_again(tmp_path):
    folder = tmp_path / "bill"
    write_csv(folder / "2026-10.csv", [row("10", "10", "10", *OCT)])
    nov = write_csv(folder / "2026-11.csv", [row("100", "100", "100", *NOV)])
    src = source(folder)
    m, summary = poll(src)
    assert cost(m, month="2026-11", provider="AWS", service="Amazon EC2") == 100 and "2 read anew" in summary
    write_csv(nov, [row("100", "100", "100", *NOV), row("25", "25", "25", *NOV)])  # AWS rewrites an open period
    os.utime(nov, ns=(nov.stat().st_atime_ns, nov.stat().st_mtime_ns + 1_000_000_000))
    m, summary = poll(src)
    assert cost(m, month="2026-11", provider="AWS", service="Amazon EC2") == 125 and "1 read anew" in summary
    assert cost(m, month="2026-10", provider="AWS", service="Amazon EC2") == 10
    m, summary = poll(src)
    assert "0 read anew" in summary


def test_what_was_read_survives_a_restart_and_a_corrupt_state_file_is_a_fresh_start(tmp_path, caplog):
    folder = tmp_path / "bill"
    write_csv(folder / "2026-10.csv", [row("10", "10", "10", *OCT)])
    write_csv(folder / "2026-11.csv", [row("100", "100", "100", *NOV)])
    first, summary = poll(source(folder))
    assert "2 read anew" in summary
    again = source(folder)  # a restart (or a reload: the sources are built afresh)
    m, summary = poll(again)
    assert "0 read anew" in summary and m == first  # the same figures, from the kept totals
    other = source(folder, months=1)  # months only chooses what shows: the kept totals still hold
    assert "0 read anew" in poll(other)[1]
    retagged = config_from_dict({  # other allocation tags: the kept totals are not this reader's
        "mlflow": {"tracking_uri": "http://127.0.0.1:1"}, "allocation": {"tags": ["owner"]},
        "billing": {"sources": [{"name": "aws", "focus": str(folder)}]}})
    assert "2 read anew" in BillingSource(retagged.billing.sources[0], retagged).poll()[1]
    again.state.path.write_text('{"kind": "focus-files", "version": 1, "data": {"where": "')  # cut off mid-write
    with caplog.at_level("WARNING"):
        fresh = source(folder)
    assert "cannot be read" in caplog.text and "starting afresh" in caplog.text and str(again.state.path) in caplog.text
    m, summary = poll(fresh)
    assert "2 read anew" in summary and m == first
    assert "0 read anew" in poll(source(folder))[1]  # the good file written again


@pytest.mark.parametrize("columns, words", [
    ([c for c in FOCUS_12 if c != "BilledCost"], "no BilledCost column"),
    ([c for c in FOCUS_12 if c != "ProviderName"], "no ProviderName (or ServiceProviderName) column"),
])
def test_a_file_that_is_not_focus_is_an_error_naming_file_and_column(tmp_path, columns, words):
    broken = write_csv(tmp_path / "bill" / "broken.csv", [row("1", "1", "1", *NOV)], columns=columns)
    with pytest.raises(NotFocus) as exc:
        source(tmp_path / "bill").poll()
    assert str(broken) in str(exc.value) and words in str(exc.value)


def test_a_broken_file_fails_the_poll_and_the_last_good_figures_stay(tmp_path):
    from mlops_kpi_exporter.poller import Poller
    from mlops_kpi_exporter.snapshot import SnapshotStore

    folder = tmp_path / "bill"
    write_csv(folder / "good.csv", [row("10", "10", "10", *NOV)])
    src = source(folder)
    store = SnapshotStore()
    poller = Poller([src], store)
    assert poller.poll_once(src)
    write_csv(folder / "bad.csv", [row("ten", "1", "1", *NOV)])
    assert not poller.poll_once(src)
    _, states = store.states()
    assert "bad.csv: row 2: not a number" in states[0].last_error
    assert any(f.name == "mlops_cloud_cost" for f in states[0].families)  # still the good figures


def test_config_rules(tmp_path):
    from mlops_kpi_exporter.config import ConfigError

    base = {"mlflow": {"tracking_uri": "http://127.0.0.1:1"}}
    with pytest.raises(ConfigError, match="s3:// needs a bucket"):
        config_from_dict(base | {"billing": {"sources": [{"name": "aws", "focus": "s3:///x/"}]}})
    with pytest.raises(ConfigError, match="s3: applies to an s3:// focus location only"):
        config_from_dict(base | {"billing": {"sources": [{"name": "aws", "focus": "bills/", "s3": {}}]}})
    with pytest.raises(ConfigError, match="endpoint_url"):
        config_from_dict(base | {"billing": {"sources": [{"name": "aws", "focus": "s3://b/", "s3": {"endpoint_url": "ftp://x"}}]}})
    on_s3 = config_from_dict(base | {"billing": {"sources": [{"name": "aws", "focus": "s3://bucket/x/"}]}})
    assert on_s3.billing.sources[0].focus == "s3://bucket/x/"  # not made relative to the config folder
    with pytest.raises(ConfigError, match="tag_aliases for team, which neither allocation.tags nor billing.run_join"):
        config_from_dict(base | {"allocation": {"tag_aliases": {"team": ["Team"]}}})
    with pytest.raises(ConfigError, match="set focus"):
        config_from_dict(base | {"billing": {"sources": [{"name": "aws"}]}})
    relative = config_from_dict(base | {"billing": {"sources": [{"name": "aws", "focus": "bills/"}]}}, base_dir=tmp_path)
    assert relative.billing.sources[0].focus == str(tmp_path / "bills")


def test_a_bill_in_another_currency_is_refused_not_summed_as_ours(tmp_path):
    eur = row("10", "10", "10", *NOV)
    eur["BillingCurrency"] = "EUR"
    write_csv(tmp_path / "bill" / "eur.csv", [row("1", "1", "1", *NOV), eur])
    with pytest.raises(NotFocus, match="row 3: BillingCurrency EUR, not pricing.currency USD"):
        source(tmp_path / "bill").poll()
