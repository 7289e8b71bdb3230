"""The demo's cloud bill: FOCUS files of what its runs cost on AWS, Google Cloud and Azure, made from
the exporter's own run facts, so that `make demo` shows the bill beside the estimates."""

from __future__ import annotations

import csv
import gzip
import json
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import yaml

from mlops_kpi_exporter.config import Config
from mlops_kpi_exporter.ledger import RunLedger
from mlops_kpi_exporter.mlflow_client import paged
from mlops_kpi_exporter.runs import MS_PER_HOUR as HOUR_MS
from mlops_kpi_exporter.runs import facts_of
from mlops_kpi_exporter.resolved import run_rules

# The demo's cloud bill, one FOCUS export per cloud as each delivers it: AWS Data Exports (gzip CSV,
# FOCUS 1.2, tags as user:key), Google's FOCUS view exported as Parquet (FOCUS 1.3 columns), Azure
# Cost Management (CSV, FOCUS 1.0, tags capitalised).
BILLS = ("aws", "gcp", "azure")
DAY_MS = 24 * HOUR_MS
BILL_STYLE = {  # provider name, compute service, storage service, tag key prefix or case, file name
    "aws": ("AWS", "Amazon Elastic Compute Cloud", "Amazon Simple Storage Service", "user:{}"),
    "gcp": ("Google Cloud", "Compute Engine", "Cloud Storage", "{}"),
    "azure": ("Microsoft", "Virtual Machines", "Storage", "{}"),
}
BILLED, EFFECTIVE = 0.80, 0.72  # what the demo's company pays of the list price: discounts, then commitments
# Resources the launcher tags with the MLflow run id (AWS and Google; the Azure one does not: its
# spend stays unattributed), and one shared cluster of four m5.2xlarge, up five hours three days
# ago, hosting three runs (minutes after it came up) with gaps between them: idle cost.
RUN_ID_TAG = "mlflow_run_id"
CLUSTER_ID, CLUSTER_TAG, CLUSTER_NODES, CLUSTER_HOURS = "0601-demo-cluster", "ClusterId", 4, 5
CLUSTER_RUNS = ((15, 75), (105, 150), (180, 240))


def cluster_window(now_ms: int) -> tuple[int, int]:
    """When the demo's shared cluster was up: from the hour three days before now, five hours."""
    up = (now_ms - 3 * DAY_MS) // HOUR_MS * HOUR_MS
    return up, up + CLUSTER_HOURS * HOUR_MS


def write_bill(db: Path, config: Config, now_ms: int) -> int:
    """FOCUS files of what the demo's runs cost on each cloud, from the exporter's own run facts (a run on
    its parent's machine is on the bill once, as its parent), plus what no run shows: storage, a credit,
    an untagged notebook. The bill lags a day, as real ones do. Returns the rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mlflow.tracking import MlflowClient

    rules = run_rules(config)
    client = MlflowClient(tracking_uri=f"sqlite:///{db.resolve()}")
    ledger = RunLedger((1.0,), (1.0,))
    for exp in paged(client.search_experiments, max_results=1000):
        for run in paged(client.search_runs, experiment_ids=[exp.experiment_id], max_results=1000):
            ledger.upsert(facts_of(rules, run, now_ms))
    catalog = yaml.safe_load(resources.files("mlops_kpi_exporter").joinpath("data/pricing_catalog.yaml").read_text())
    cloud_of = {name.lower(): cloud for cloud, machines in catalog["providers"].items() for name in machines}
    billed_until = now_ms - DAY_MS  # bills arrive a day late
    rows: dict[str, list[dict]] = {cloud: [] for cloud in BILLS}
    for run in sorted(ledger.runs.values(), key=lambda r: r.run_id):
        cloud = cloud_of.get((run.instance_type or "").lower())
        end = run.end_ms if run.end_ms is not None else now_ms
        on_cluster = any(run.join_values)  # billed as the cluster's machines, below
        if cloud is None or run.run_id in ledger.within or run.start_ms >= billed_until or on_cluster:
            continue
        end = min(end, billed_until)
        listed = run.hourly * (end - run.start_ms) / HOUR_MS
        provider, service, _, key = BILL_STYLE[cloud]
        tags = {key.format(tag if cloud != "azure" else tag.capitalize()): value
                for tag, value in zip(("team", "project"), run.allocation) if value != "untagged"}
        if cloud != "azure":
            tags[key.format(RUN_ID_TAG)] = run.run_id
        rows[cloud].append(_bill_row(run.start_ms, end, provider, service, "Compute", listed, tags))
    up, down = cluster_window(now_ms)
    provider, service, _, key = BILL_STYLE["aws"]
    for hour in range(up, min(down, billed_until), HOUR_MS):  # hourly rows, as AWS bills them
        rows["aws"].append(_bill_row(hour, hour + HOUR_MS, provider, service, "Compute", 0.384 * CLUSTER_NODES, {
            key.format(CLUSTER_TAG): CLUSTER_ID, key.format("team"): "demand", key.format("project"): "supply-chain"}))
    first_month = now_ms - 35 * DAY_MS
    for cloud in BILLS:  # what no run shows, once a month: storage, a credit, an untagged notebook
        provider, _, storage, key = BILL_STYLE[cloud]
        for month_start in sorted({_month_start(first_month), _month_start(billed_until)}):
            day = month_start + DAY_MS
            rows[cloud] += [
                _bill_row(day, day + DAY_MS, provider, storage, "Storage", 40.0, {key.format("team"): "platform"}),
                _bill_row(day, day + DAY_MS, provider, BILL_STYLE[cloud][1], "Compute", 30.0, {}),
                _bill_row(day, day + DAY_MS, provider, BILL_STYLE[cloud][1], "Compute", -15.0, {}, "Credit"),
            ]
        if cloud == "aws":  # a GPU box tagged with a run id this MLflow does not hold (another team's)
            rows[cloud].append(_bill_row(billed_until - 2 * HOUR_MS, billed_until - HOUR_MS, provider, BILL_STYLE[cloud][1],
                                         "Compute", 3.06, {key.format(RUN_ID_TAG): "f" * 32}))
    folder = db.parent / "bill"
    for cloud in BILLS:
        (folder / cloud).mkdir(parents=True, exist_ok=True)
        data = rows[cloud]
        for row in data:
            row["Tags"] = json.dumps(row["Tags"]) if row["Tags"] else "NULL"
        if cloud == "aws":
            with gzip.open(folder / cloud / "focus-export.csv.gz", "wt", newline="") as out:
                _write_csv(out, data, [c for c in FOCUS_COLUMNS if c != "ServiceProviderName"])
        elif cloud == "gcp":
            columns = [c for c in FOCUS_COLUMNS if c != "ProviderName"]
            table = {c: [r[c] for r in data] for c in columns}
            pq.write_table(pa.table(table), folder / cloud / "focus-view.parquet")
        else:
            with open(folder / cloud / "focus-cost.csv", "w", newline="") as out:
                _write_csv(out, data, [c for c in FOCUS_COLUMNS if c != "ServiceProviderName"])
    return sum(len(r) for r in rows.values())


FOCUS_COLUMNS = ["BilledCost", "EffectiveCost", "ListCost", "BillingCurrency", "ChargeCategory", "ChargePeriodStart",
                 "ChargePeriodEnd", "ProviderName", "ServiceProviderName", "ServiceName", "ServiceCategory", "Tags"]


def _month_start(ms: int) -> int:
    day = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return int(day.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp() * 1000)


def _bill_row(start_ms: int, end_ms: int, provider: str, service: str, category: str, listed: float, tags: dict,
              charge: str = "Usage") -> dict:
    def stamp(ms: int) -> str:
        return datetime.fromtimestamp(ms // 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    credit = charge == "Credit"
    return {"BilledCost": round(listed if credit else listed * BILLED, 6),
            "EffectiveCost": round(listed if credit else listed * EFFECTIVE, 6),
            "ListCost": 0.0 if credit else round(listed, 6), "BillingCurrency": "USD", "ChargeCategory": charge,
            "ChargePeriodStart": stamp(start_ms), "ChargePeriodEnd": stamp(end_ms), "ProviderName": provider,
            "ServiceProviderName": provider, "ServiceName": service, "ServiceCategory": category, "Tags": tags}


def _write_csv(out, rows: list[dict], columns: list[str]) -> None:
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


