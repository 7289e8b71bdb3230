"""Benchmark: the billing source's first read of a FOCUS month (gzip CSV and Parquet) at 1,000,000 and
10,000,000 rows, against pandas reading the same file in the same run, with each one's peak RSS growth,
and a poll when nothing changed. The export has the FinOps Foundation sample's shape (FOCUS 1.0, its 44
columns, amounts with 11 decimals, literal NULL cells, timestamps without a zone, JSON tags), or is
that sample itself repeated (--sample). The billed total is checked against the csv module's exact sum.

    .venv/bin/python bench/bench_billing.py                          # 1,000,000 and 10,000,000 rows
    .venv/bin/python bench/bench_billing.py --rows 200000            # a quick run
    .venv/bin/python bench/bench_billing.py --rows 1000000 --sample focus_sample.csv --section bench_billing_sample

--sample takes FOCUS-1.0/focus_sample.csv of github.com/FinOps-Open-Cost-and-Usage-Spec/FOCUS-Sample-Data
(CC BY 4.0; not shipped here): its 1,000 rows are repeated to the size asked.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import random
import subprocess
import sys
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results import write_section  # noqa: E402

WORK = Path(__file__).parent / ".work" / "billing"
# FOCUS 1.0's columns as the FinOps Foundation sample writes them (the spec's names, in its order)
COLUMNS = ["AvailabilityZone", "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency",
           "BillingPeriodEnd", "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription",
           "ChargeFrequency", "ChargePeriodEnd", "ChargePeriodStart", "CommitmentDiscountCategory",
           "CommitmentDiscountId", "CommitmentDiscountName", "CommitmentDiscountStatus", "CommitmentDiscountType",
           "ConsumedQuantity", "ConsumedUnit", "ContractedCost", "ContractedUnitPrice", "EffectiveCost",
           "InvoiceIssuerName", "ListCost", "ListUnitPrice", "PricingCategory", "PricingQuantity", "PricingUnit",
           "ProviderName", "PublisherName", "RegionId", "RegionName", "ResourceId", "ResourceName", "ResourceType",
           "ServiceCategory", "Id", "ServiceName", "SkuId", "SkuPriceId", "SubAccountId", "SubAccountName", "Tags"]
CATEGORIES = ["Compute", "Storage", "Networking", "Databases", "AI and Machine Learning", "Integration"]
BLOCK = 10_000  # distinct rows, repeated to the size asked (as a month of hourly usage repeats itself)


def _generated_block() -> list[list[str]]:
    rng = random.Random(1)
    rows = []
    for i in range(BLOCK):
        day, hour = 1 + i % 30, i % 24
        start, end = f"2024-09-{day:02d} {hour:02d}:00:00", f"2024-09-{day:02d} {hour:02d}:59:59"
        cost = Decimal(rng.randrange(0, 5 * 10**11)) / 10**11  # 11 decimals, as the sample writes them
        tags = json.dumps({"application": f"app-{i % 50}", "environment": ("dev", "prod")[i % 2],
                           "business_unit": f"unit-{i % 12}", "user:team": f"team-{i % 40}"}) if i % 10 else "NULL"
        row = dict.fromkeys(COLUMNS, "NULL")
        row |= {"BilledCost": f"{cost:.11f}", "EffectiveCost": f"{cost * Decimal('0.9'):.11f}",
                "ListCost": f"{cost * Decimal('1.2'):.11f}", "ContractedCost": f"{cost:.11f}",
                "BillingAccountId": "1234567890", "BillingAccountName": "Bench", "BillingCurrency": "USD",
                "BillingPeriodStart": "2024-09-01 00:00:00", "BillingPeriodEnd": "2024-10-01 00:00:00",
                "ChargeCategory": "Usage" if i % 50 else "Credit", "ChargeDescription": f"usage of sku {i % 300}",
                "ChargeFrequency": "Usage-Based", "ChargePeriodStart": start, "ChargePeriodEnd": end,
                "ConsumedQuantity": f"{rng.uniform(0, 10):.15f}", "ConsumedUnit": "Hours",
                "InvoiceIssuerName": "Provider, Inc.", "ListUnitPrice": "0.0004", "PricingCategory": "Standard",
                "PricingQuantity": "1.00000000000", "PricingUnit": "Hours", "ProviderName": ("AWS", "Azure", "GCP")[i % 3],
                "PublisherName": "Provider, Inc.", "RegionId": f"region-{i % 8}", "RegionName": f"Region {i % 8}",
                "ResourceId": f"arn:bench:resource/{i % 2000:05d}", "ServiceCategory": CATEGORIES[i % len(CATEGORIES)],
                "Id": str(i), "ServiceName": f"Service {i % 60}", "SkuId": f"SKU{i % 300}",
                "SkuPriceId": f"SKU{i % 300}.PRICE", "SubAccountId": str(40_000 + i % 25),
                "SubAccountName": f"account {i % 25}", "Tags": tags}
        rows.append([row[c] for c in COLUMNS])
    return rows


def _sample_block(sample: Path) -> tuple[list[str], list[list[str]]]:
    with open(sample, newline="") as f:
        reader = csv.reader(f)
        return next(reader), list(reader)


def _write_csv(out, header: list[str], block: list[list[str]], rows: int) -> None:
    # every cell quoted but NULL, as the sample writes them
    def line(cells: list[str]) -> str:
        return ",".join(c if c == "NULL" else '"' + c.replace('"', '""') + '"' for c in cells) + "\n"

    lines = [line(r) for r in block]
    out.write(line(header))
    full, rest = divmod(rows, len(lines))
    text = "".join(lines)
    for _ in range(full):
        out.write(text)
    out.write("".join(lines[:rest]))


def make_export(rows: int, sample: Path | None) -> tuple[Path, Path]:
    """The month as gzip CSV and as Parquet (written from the CSV by DuckDB, typed as it infers, in row
    groups of 100,000), kept under bench/.work for the next run of the same shape."""
    import duckdb

    WORK.mkdir(parents=True, exist_ok=True)
    stem = f"focus-{'sample' if sample else 'shaped'}-{rows}"
    csv_path, parquet_path = WORK / f"{stem}.csv.gz", WORK / f"{stem}.parquet"
    if not csv_path.exists():
        header, block = _sample_block(sample) if sample else (COLUMNS, _generated_block())
        part = csv_path.with_suffix(".part")
        with gzip.open(part, "wt", newline="") as out:
            _write_csv(out, header, block, rows)
        part.rename(csv_path)
    if not parquet_path.exists():
        con = duckdb.connect()
        con.execute("SET enable_progress_bar = false")
        con.execute(f"COPY (SELECT * FROM read_csv('{csv_path}', header = true, nullstr = 'NULL')) TO "
                    f"'{parquet_path}' (FORMAT parquet, ROW_GROUP_SIZE 100000)")
    return csv_path, parquet_path


def csv_module_total(path: Path) -> Decimal:
    """BilledCost summed exactly by the csv module and Decimal: the truth the reader is held to."""
    total = Decimal(0)
    with gzip.open(path, "rt", newline="") as f:
        reader = csv.reader(f)
        column = next(reader).index("BilledCost")
        for row in reader:
            if row[column] not in ("", "NULL"):
                total += Decimal(row[column])
    return total


PEAK = """
def peak_mib():  # VmHWM: this process's own peak RSS (ru_maxrss would carry the parent's over exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

CHILD = PEAK + """
import sys, tempfile, time
from mlops_kpi_exporter.config import config_from_dict
from mlops_kpi_exporter.sources import focus_columnar
from mlops_kpi_exporter.sources.billing import BillingSource
if sys.argv[2] == "rows":  # the row reader, as without the `bills` extra
    focus_columnar.available = lambda: False
before = peak_mib()
config = config_from_dict({"mlflow": {"tracking_uri": "http://127.0.0.1:1"}, "state_dir": tempfile.mkdtemp(),
    "allocation": {"tags": ["team", "project"], "tag_aliases": {"team": ["team", "user:team"]}},
    "billing": {"sources": [{"name": "b", "focus": sys.argv[1]}]}})
source = BillingSource(config.billing.sources[0], config)
started = time.perf_counter(); source.poll(); first = time.perf_counter() - started
started = time.perf_counter(); source.poll(); again = time.perf_counter() - started
billed = sum(costs[0] for costs in source.facts().costs.values())  # nano-units
print(first, again, peak_mib() - before, billed)
"""

PANDAS = PEAK + """
import sys, time
import pandas as pd
columns = sys.argv[2].split(",") if sys.argv[2] != "all" else None
before = peak_mib()
started = time.perf_counter()
if sys.argv[3] == "whole":
    frame = pd.read_csv(sys.argv[1], usecols=columns)
    frame.groupby(["ServiceName"])["BilledCost"].sum()
else:  # in chunks of a million rows, as a careful pandas user reads a file larger than memory
    for frame in pd.read_csv(sys.argv[1], usecols=columns, chunksize=1_000_000):
        frame.groupby(["ServiceName"])["BilledCost"].sum()
print(time.perf_counter() - started, peak_mib() - before)
"""
# what the reader reads of a file (sources/focus_columnar.py): the pandas run given the same columns
READ = "BilledCost,EffectiveCost,ListCost,BillingCurrency,ChargeCategory,ChargePeriodStart,ChargePeriodEnd," \
       "ProviderName,ServiceName,ServiceCategory,Tags"


def measure(code: str, path: Path, *args: str) -> list[float]:
    out = subprocess.run([sys.executable, "-c", code, str(path), *args], capture_output=True, text=True, check=True)
    return [float(x) for x in out.stdout.split()]


def run(rows: int, sample: Path | None, row_reader: bool) -> list[str]:
    csv_path, parquet_path = make_export(rows, sample)
    truth = csv_module_total(csv_path)
    whole = rows <= 2_000_000  # pandas whole at 10M rows of 44 text columns: tens of GiB
    pandas_s, pandas_mb = measure(PANDAS, csv_path, "all", "whole") if whole else (None, None)
    some_s, some_mb = measure(PANDAS, csv_path, READ, "whole" if whole else "chunks")
    base = pandas_s or some_s
    lines = []
    readers = (("columns", "columnar (`bills` extra)"),) + ((("rows", "row by row"),) if row_reader else ())
    for kind, path in (("gzip CSV", csv_path), ("Parquet", parquet_path)):
        for reader, label in readers:
            first, again, grown, billed = measure(CHILD, path, reader)
            cents = abs(Decimal(int(billed)) / 10**9 - truth)
            lines.append(f"| {rows:,} | {kind}, {label} | {path.stat().st_size / 2**20:.0f} MiB | {first:.2f} s | "
                         f"{first / base:.2f}x | {again * 1000:.0f} ms | +{grown:.0f} MiB | "
                         f"{'yes' if cents < Decimal('0.005') else 'NO'} ({cents:.9f} off) |")
    if pandas_s is not None:
        lines.append(f"| {rows:,} | pandas.read_csv, the whole file | | {pandas_s:.2f} s | 1.00x | | +{pandas_mb:.0f} MiB | |")
    how = "its 11 columns" if whole else "its 11 columns, in chunks of 1,000,000 rows"
    lines.append(f"| {rows:,} | pandas.read_csv, {how} | | {some_s:.2f} s | {some_s / base:.2f}x | | +{some_mb:.0f} MiB | |")
    print("\n".join(lines), flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--sample", type=Path, help="a FOCUS CSV (the FinOps Foundation sample) to repeat")
    parser.add_argument("--row-reader-up-to", type=int, default=1_000_000,
                        help="also time the row reader (no `bills` extra) up to this many rows")
    parser.add_argument("--section", default="bench_billing")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    lines = [line for rows in args.rows for line in run(rows, args.sample, rows <= args.row_reader_up_to)]
    shape = (f"the FinOps Foundation sample ({args.sample.name}) repeated" if args.sample
             else "a FOCUS 1.0 export of the FinOps sample's shape (44 columns)")
    command = " ".join(["`.venv/bin/python bench/bench_billing.py --rows", *map(str, args.rows),
                        *(["--sample", str(args.sample.name)] if args.sample else []),
                        *(["--section", args.section] if args.section != "bench_billing" else [])]) + "`"
    text = (
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{shape}, one month.\nCommand: {command}\n\n"
        "| rows | reader | file | first poll (reads it all) | / pandas | poll, nothing changed | peak RSS growth "
        "| billed total exact to the cent of the csv module's sum |\n|---:|---|---:|---:|---:|---:|---:|---|\n"
        + "\n".join(lines) + "\n"
    )
    print(text)
    if not args.no_write:
        write_section(args.section, text)


if __name__ == "__main__":
    main()
