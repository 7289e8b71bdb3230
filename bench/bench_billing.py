"""Benchmark: reading a 1,000,000-row FOCUS export (gzip CSV and Parquet), and a poll when nothing
changed. Memory must follow the number of groups, not rows: the figure to watch is the RSS growth
while reading, against the size of the file. The baseline, in the same run: pandas reading the same
CSV whole (what a naive reader does), its RSS growth and time.

    .venv/bin/python bench/bench_billing.py                 # 1,000,000 rows
    .venv/bin/python bench/bench_billing.py --rows 100000   # a quick run
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results import write_section  # noqa: E402

WORK = Path(__file__).parent / ".work" / "billing"
COLUMNS = ["BilledCost", "EffectiveCost", "ListCost", "BillingCurrency", "ChargeCategory", "ChargePeriodStart",
           "ChargePeriodEnd", "ProviderName", "ServiceName", "ServiceCategory", "Tags", "x_Operation"]
SERVICES = [f"Service {i}" for i in range(60)]


def make_export(rows: int) -> tuple[Path, Path]:
    """One export of `rows` rows over three months, 60 services, 40 teams, as gzip CSV and Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    WORK.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    csv_path, parquet_path = WORK / "focus.csv.gz", WORK / "focus.parquet"
    data = {c: [] for c in COLUMNS}
    with gzip.open(csv_path, "wt", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        for i in range(rows):
            day = 1 + i % 28
            month = 9 + i % 3
            cost = round(rng.uniform(0, 5), 6)
            row = [cost, round(cost * 0.9, 6), round(cost * 1.2, 6), "USD", "Usage",
                   f"2026-{month:02d}-{day:02d}T00:00:00Z", f"2026-{month:02d}-{day:02d}T01:00:00Z", "AWS",
                   SERVICES[i % 60], "Compute" if i % 3 else "Storage",
                   json.dumps({"user:team": f"team-{i % 40}", "project": f"p{i % 7}"}) if i % 10 else "NULL", "RunInstances"]
            writer.writerow(row)
            if rows <= 2_000_000:
                for column, value in zip(COLUMNS, row):
                    data[column].append(value)
    pq.write_table(pa.table(data), parquet_path, row_group_size=100_000)  # as exports are written: in row groups
    return csv_path, parquet_path


PEAK = """
def peak_mib():  # VmHWM: this process's own peak RSS (ru_maxrss would carry the parent's over exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

CHILD = PEAK + """
import sys, tempfile, time
from pathlib import Path
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
print(first, again, peak_mib() - before)
"""

NAIVE = PEAK + """
import sys, time
import pandas as pd
before = peak_mib()
started = time.perf_counter()
frame = pd.read_csv(sys.argv[1])
frame.groupby(["ServiceName"])["BilledCost"].sum()
print(time.perf_counter() - started, peak_mib() - before)
"""


def measure(code: str, path: Path, *args: str) -> list[float]:
    out = subprocess.run([sys.executable, "-c", code, str(path), *args], capture_output=True, text=True, check=True)
    return [float(x) for x in out.stdout.split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    csv_path, parquet_path = make_export(args.rows)
    lines = []
    naive_s, naive_mb = measure(NAIVE, csv_path)
    for kind, path in (("gzip CSV", csv_path), ("Parquet", parquet_path)):
        for reader, label in (("columns", "columnar (`bills` extra)"), ("rows", "row by row")):
            first, again, grown = measure(CHILD, path, reader)
            lines.append(f"| {kind}, {label} | {path.stat().st_size / 2**20:.0f} MiB | {first:.2f} s | "
                         f"{first / naive_s:.1f}x | {again * 1000:.0f} ms | +{grown:.0f} MiB |")
    text = (
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {os.cpu_count()} cores, Python {platform.python_version()}.\n"
        f"Command: `.venv/bin/python bench/bench_billing.py --rows {args.rows}`\n\n"
        f"| {args.rows:,}-row FOCUS export, reader | file | first poll (reads it all) | / pandas | poll, nothing "
        "changed | RSS growth while reading |\n|---|---:|---:|---:|---:|---:|\n" + "\n".join(lines) + "\n"
        f"| baseline: pandas reads the CSV whole | | {naive_s:.2f} s | 1.0x | | +{naive_mb:.0f} MiB |\n"
    )
    print(text)
    if not args.no_write:
        write_section("bench_billing", text)


if __name__ == "__main__":
    main()
