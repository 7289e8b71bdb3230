"""FOCUS bill rows and files written to the spec (1.2 and 1.3 column sets, CSV, gzip CSV, Parquet), for
the billing tests."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

FOCUS_12 = ["BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "BillingCurrency", "ChargeCategory",
            "ChargePeriodStart", "ChargePeriodEnd", "ProviderName", "PublisherName", "ServiceName", "ServiceCategory",
            "Tags", "x_Discounts"]
FOCUS_13 = [c if c != "ProviderName" else "ServiceProviderName" for c in FOCUS_12]
FOCUS_13_SPLIT = [*FOCUS_13, "AllocatedMethodId", "AllocatedResourceId", "AllocatedTags"]  # split cost allocation


def row(billed, effective, listed, start, end, provider="AWS", service="Amazon EC2", category="Compute", tags=None,
        charge="Usage", allocated=None):
    return {"AllocatedTags": "NULL" if allocated is None else json.dumps(allocated),
            "AllocatedMethodId": "NULL" if allocated is None else "cpu-memory", "AllocatedResourceId": "NULL",
            "BilledCost": billed, "EffectiveCost": effective, "ListCost": listed, "ContractedCost": listed,
            "BillingCurrency": "USD", "ChargeCategory": charge, "ChargePeriodStart": start, "ChargePeriodEnd": end,
            "ProviderName": provider, "ServiceProviderName": provider, "PublisherName": provider, "ServiceName": service,
            "ServiceCategory": category, "Tags": "NULL" if tags is None else json.dumps(tags), "x_Discounts": "NULL"}


def write_csv(path: Path, rows: list[dict], columns=FOCUS_12, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open(path, "wt", newline="") if gz else open(path, "w", newline="")
    with opener as out:
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path: Path, rows: list[dict], columns=FOCUS_13) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    data = {c: [r[c] for r in rows] for c in columns}
    for c in ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost"):
        data[c] = [None if v in ("", "NULL", "null") else float(v) for v in data[c]]  # Parquet nulls
    pq.write_table(pa.table(data), path)
    return path
