"""FOCUS exports on S3 (`focus: s3://bucket/prefix/`) read through boto3, against a moto S3 server on
loopback: AWS itself cannot be reached from the tests, moto stands in for it (real HTTP, real boto3)."""

from __future__ import annotations

import gzip
import io
import subprocess

import boto3
import pytest

from conftest import EXPORTER, child_env, render, samples, value
from focus_rows import FOCUS_12, FOCUS_13, row, write_csv, write_parquet
from mlops_kpi_exporter.config import config_from_dict
from mlops_kpi_exporter.poller import Poller
from mlops_kpi_exporter.snapshot import SnapshotStore
from mlops_kpi_exporter.sources.billing import BillingSource

OCT = ("2026-10-05T00:00:00Z", "2026-10-06T00:00:00Z")
NOV = ("2026-11-02T00:00:00+01:00", "2026-11-03T00:00:00+01:00")  # 2026-11-01T23:00Z: November


def config(url: str, focus: str, **extra):
    return config_from_dict({
        "mlflow": {"tracking_uri": "http://127.0.0.1:1"},
        "allocation": {"tags": ["team"], "tag_aliases": {"team": ["team", "user:team"]}},
        "billing": {"months": 2, "sources": [{"name": "aws", "focus": focus, "s3": {"endpoint_url": url}, **extra}]},
    })


def put(s3, key: str, rows: list[dict], tmp_path, columns=FOCUS_12) -> None:
    path = tmp_path / key.replace("/", "_")
    if key.endswith(".parquet"):
        write_parquet(path, rows, columns)
    else:
        write_csv(path, rows, columns, gz=key.endswith(".gz"))
    s3.put_object(Bucket="bills", Key=key, Body=path.read_bytes())


def poll(src: BillingSource):
    families, _ = src.poll()
    return samples(render(families))


@pytest.fixture
def s3(moto_server):
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    client.create_bucket(Bucket="bills")
    return client


def billed(m, month: str, service: str = "Amazon EC2") -> float:
    return value(m, "mlops_cloud_cost", bill="aws", month=month, provider="AWS", service=service, cost_basis="billed")


def test_an_s3_export_is_read_once_per_etag_and_restated_months_replace(s3, moto_server, tmp_path):
    prefix = "focus/ml-bill/data"
    put(s3, f"{prefix}/BILLING_PERIOD=2026-10/part-0.csv.gz",
        [row("100.5", "90", "120", *OCT, tags={"user:team": "vision"}), row("-10.5", "-10.5", "0", *OCT, charge="Credit")],
        tmp_path)
    put(s3, f"{prefix}/BILLING_PERIOD=2026-11/part-0.parquet",
        [row("40", "30", "50", *NOV, tags={"team": "nlp"}), row("2", "2", "2", *NOV, service="Amazon S3", category="Storage")],
        tmp_path, FOCUS_13)
    s3.put_object(Bucket="bills", Key=f"{prefix}/ml-bill-Manifest.json", Body=b"{}")  # not a bill: ignored
    src = BillingSource(config(moto_server, "s3://bills/focus/").billing.sources[0], config(moto_server, "s3://bills/focus/"))

    m = poll(src)
    assert src.last_read == 2
    assert billed(m, "2026-10") == 90.0  # the credit included: the invoice
    assert value(m, "mlops_cloud_cost", bill="aws", month="2026-10", provider="AWS", service="Amazon EC2",
                 cost_basis="list") == 120.0
    assert billed(m, "2026-11") == 40.0 and billed(m, "2026-11", "Amazon S3") == 2.0
    assert value(m, "mlops_cloud_cost_by_tag", bill="aws", month="2026-11", tag="team", value="nlp",
                 cost_basis="effective") == 30.0

    m = poll(src)  # nothing changed on S3: nothing downloaded again
    assert src.last_read == 0 and billed(m, "2026-10") == 90.0

    # AWS rewrites an open month's files: the new ETag is read, the old figures replaced, not added
    put(s3, f"{prefix}/BILLING_PERIOD=2026-11/part-0.parquet", [row("70", "60", "80", *NOV, tags={"team": "nlp"})],
        tmp_path, FOCUS_13)
    m = poll(src)
    assert src.last_read == 1
    assert billed(m, "2026-11") == 70.0 and ("mlops_cloud_cost", (
        ("bill", "aws"), ("cost_basis", "billed"), ("month", "2026-11"), ("provider", "AWS"), ("service", "Amazon S3"))) not in m

    s3.delete_object(Bucket="bills", Key=f"{prefix}/BILLING_PERIOD=2026-10/part-0.csv.gz")
    m = poll(src)
    assert not any(name == "mlops_cloud_cost" and ("month", "2026-10") in labels for name, labels in m)


def test_a_glob_in_the_key_picks_the_objects(s3, moto_server, tmp_path):
    put(s3, "a/2026-11/bill.csv", [row("5", "5", "5", *NOV)], tmp_path)
    put(s3, "b/2026-11/bill.csv", [row("7", "7", "7", *NOV)], tmp_path)
    cfg = config(moto_server, "s3://bills/*/2026-11/*.csv")
    m = poll(BillingSource(cfg.billing.sources[0], cfg))
    assert billed(m, "2026-11") == 12.0
    cfg = config(moto_server, "s3://bills/a/*")
    assert billed(poll(BillingSource(cfg.billing.sources[0], cfg)), "2026-11") == 5.0


def test_a_broken_object_is_named_and_the_last_good_figures_stay(s3, moto_server, tmp_path):
    put(s3, "focus/good.csv", [row("5", "5", "5", *NOV)], tmp_path)
    cfg = config(moto_server, "s3://bills/focus/")
    src = BillingSource(cfg.billing.sources[0], cfg)
    store = SnapshotStore()
    poller = Poller([src], store)
    assert poller.poll_once(src)
    buf = io.BytesIO()
    with gzip.open(buf, "wt") as out:
        out.write("BilledCost,ServiceName\n1,EC2\n")
    s3.put_object(Bucket="bills", Key="focus/broken.csv.gz", Body=buf.getvalue())
    assert not poller.poll_once(src)
    _, states = store.states()
    assert "s3://bills/focus/broken.csv.gz: not a FOCUS export: no EffectiveCost column" in states[0].last_error
    assert billed(samples(render(states[0].families)), "2026-11") == 5.0


def test_s3_failures_are_clear_and_never_show_the_secret(s3, moto_server, tmp_path):
    cfg = config(moto_server, "s3://no-such-bucket/focus/")
    with pytest.raises(RuntimeError, match=r"s3://no-such-bucket/focus/: cannot list: NoSuchBucket") as caught:
        BillingSource(cfg.billing.sources[0], cfg).poll()
    assert "moto-secret-key-do-not-log" not in str(caught.value)


def test_the_exporter_reads_an_s3_bill_with_credentials_from_the_aws_chain(s3, moto_server, tmp_path):
    """End to end through the CLI: no credentials in the config, the endpoint from AWS_ENDPOINT_URL."""
    put(s3, "focus/bill.csv.gz", [row("12.25", "11", "13", *NOV, tags={"user:team": "vision"})], tmp_path)
    (tmp_path / "exporter.yml").write_text(
        "mlflow: {tracking_uri: 'http://127.0.0.1:1'}\n"
        "registry: {enabled: false}\n"
        "allocation: {tags: [team], tag_aliases: {team: [team, 'user:team']}}\n"
        "billing: {sources: [{name: aws, focus: 's3://bills/focus/'}]}\n")
    env = child_env() | {"AWS_ENDPOINT_URL": moto_server, "AWS_ACCESS_KEY_ID": "testing",
                         "AWS_SECRET_ACCESS_KEY": "moto-secret-key-do-not-log", "AWS_DEFAULT_REGION": "us-east-1"}
    done = subprocess.run([EXPORTER, "once", "--config", str(tmp_path / "exporter.yml")], env=env,
                          capture_output=True, text=True, timeout=120)
    m = samples(done.stdout)
    assert value(m, "mlops_cloud_cost_by_tag", bill="aws", month="2026-11", tag="team", value="vision",
                 cost_basis="billed") == 12.25
    assert value(m, "mlops_source_up", source="billing:aws") == 1.0
    assert "moto-secret-key-do-not-log" not in done.stdout + done.stderr
