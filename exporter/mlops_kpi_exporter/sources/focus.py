"""The FOCUS reader: exports (FinOps Open Cost and Usage Specification 1.0 to 1.3) of AWS, Azure and
Google Cloud, as files on disk or objects on S3, read into FileTotals (bill.py).

Costs are summed by month of ChargePeriodStart (UTC), provider, service and service category, and by
the value of each allocation tag, in integer nano-units (exact: a month's BilledCost equals the
invoice, credits and adjustments included). Memory follows the number of groups, never the number of
rows: CSV is streamed, Parquet read a batch at a time, a few columns. What tells that a file changed
(its Stamp) is its size and mtime on disk, its size and ETag on S3.
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import glob
import gzip
import io
import logging
import os
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from decimal import localcontext
from pathlib import Path

from mlops_kpi_exporter import extras
from mlops_kpi_exporter.bill import COMPUTE_CATEGORIES, EXACT, MISSING, Costs, FileTotals, add_costs, exact, parse_tags
from mlops_kpi_exporter.config.billing import tag_keys
from mlops_kpi_exporter.runs import UNTAGGED
from mlops_kpi_exporter.sources import focus_columnar

COST_COLUMNS = ("BilledCost", "EffectiveCost", "ListCost")  # in the order of bill.BASES
REQUIRED = (*COST_COLUMNS, "ChargePeriodStart", "ChargePeriodEnd", "ServiceName")
PROVIDER_COLUMNS = ("ServiceProviderName", "ProviderName")  # 1.3 renamed it; 1.0-1.2 have the second
OPTIONAL = ("ServiceCategory", "Tags", "ChargeCategory", "BillingCurrency", "AllocatedTags")  # AllocatedTags: 1.3
SUFFIXES = (".csv", ".csv.gz", ".parquet")

log = logging.getLogger(__name__)


class NotFocus(ValueError):
    """A file that is not a FOCUS export; the message names the file and what is wrong."""


def _utc(text: object) -> datetime | None:
    """A FOCUS timestamp, with or without a zone (none means UTC), as an aware UTC datetime."""
    if isinstance(text, datetime):
        moment = text
    elif text is None or (isinstance(text, str) and text.strip() in MISSING):
        return None
    else:
        moment = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


class FocusReader:
    """Reads FOCUS files into FileTotals, grouping tags by the allocation tags (after aliases)."""

    def __init__(self, tags: tuple[str, ...], aliases: dict[str, list[str]], currency: str = "USD",
                 join_tags: tuple[str, ...] = ()):
        self.currency = currency  # the bill's amounts are summed as they are: never across currencies
        self.tags = tags
        self.keys = {tag: tag_keys(tag, aliases) for tag in tags}
        self.join_keys = [tag_keys(tag, aliases) for tag in join_tags]  # billing.run_join, in rule order

    def settings(self) -> dict:
        """What the totals of a file depend on besides the file: totals read under other settings
        (another config) are not those of this reader."""
        return {"currency": self.currency, "keys": self.keys, "join_keys": self.join_keys}

    def read(self, path: Path, name: str | None = None) -> FileTotals:
        """The totals of one file; `name` (default the path) is how errors name it, e.g. an s3:// URL.
        With the `bills` extra, DuckDB groups the file as it reads it (focus_columnar.py); a file it
        calls irregular, and every file without the extra, is read row by row here."""
        name = name or str(path)
        if focus_columnar.available():
            try:
                return focus_columnar.totals(self, path, name)
            except (focus_columnar.Irregular, NotFocus) as exc:  # the row reader names what is wrong exactly
                log.info("%s: read row by row (%s)", name, exc)
        totals = FileTotals()
        rows = self._parquet_rows(path, name) if name.endswith(".parquet") else self._csv_rows(path, name)
        with localcontext(EXACT):  # exact sums of the rows' amounts, each group rounded once at the end
            for number, row in enumerate(rows, start=2):
                try:
                    self._add_row(totals, row)
                except (ValueError, TypeError) as exc:
                    raise NotFocus(f"{name}: row {number}: {exc}") from None
        return totals.in_nano()

    def _add_row(self, totals: FileTotals, row: dict) -> None:
        start, end = _utc(row.get("ChargePeriodStart")), _utc(row.get("ChargePeriodEnd"))
        if start is None:
            raise ValueError("ChargePeriodStart is empty")
        month = f"{start.year:04d}-{start.month:02d}"
        provider = next((str(row[c]).strip() for c in PROVIDER_COLUMNS if row.get(c) not in (None, *MISSING)), "unknown")
        service = str(row.get("ServiceName") or "").strip() or "unknown"
        if service in MISSING:
            service = "unknown"
        category = str(row.get("ServiceCategory") or "").strip()
        category = "Other" if category in MISSING else category
        billed_in = str(row.get("BillingCurrency") or "").strip()
        if billed_in not in MISSING and billed_in != self.currency:
            raise ValueError(f"BillingCurrency {billed_in}, not pricing.currency {self.currency}")
        costs = [exact(row.get(column)) for column in COST_COLUMNS]
        add_costs(totals.costs, (month, provider, service, category), costs)
        tags = parse_tags(row.get("Tags"))
        compute = category in COMPUTE_CATEGORIES
        charge = str(row.get("ChargeCategory") or "").strip()
        if compute and charge in ("Usage", *MISSING):
            add_costs(totals.compute_usage, (month, provider), costs)
        for tag, keys in self.keys.items():
            value = next((tags[k] for k in keys if k in tags), UNTAGGED)[:100]
            add_costs(totals.by_tag, (month, tag, value, compute), costs)
        if end is not None:
            totals.last_charge[provider] = max(totals.last_charge.get(provider, 0.0), end.timestamp())
            if self.join_keys:
                self.join_one(totals, row, tags, provider, month, int(start.timestamp() * 1000),
                              int(end.timestamp() * 1000), costs)
        totals.rows += 1

    def join_one(self, totals: FileTotals, row: dict, tags: dict[str, str], provider: str, month: str,
                 start_ms: int, end_ms: int, costs: Costs) -> None:
        """The first run_join rule whose bill tag the row carries (split cost allocation's
        AllocatedTags first: the pod's labels on its share of a node) takes the row."""
        allocated = parse_tags(row.get("AllocatedTags"))
        for index, keys in enumerate(self.join_keys):
            value = next((found[k] for found in (allocated, tags) for k in keys if found.get(k)), None)
            if value is not None and value != "true":
                add_costs(totals.joined, (index, value[:250], provider, month, start_ms, end_ms), costs)
                return

    @staticmethod
    def check_columns(name: str, columns: list[str]) -> None:
        for column in REQUIRED:
            if column not in columns:
                raise NotFocus(f"{name}: not a FOCUS export: no {column} column")
        if not any(c in columns for c in PROVIDER_COLUMNS):
            raise NotFocus(f"{name}: not a FOCUS export: no ProviderName (or ServiceProviderName) column")

    def _csv_rows(self, path: Path, name: str):
        raw = gzip.open(path, "rb") if name.endswith(".gz") else open(path, "rb")
        with raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
            reader = csv.DictReader(text)
            self.check_columns(name, list(reader.fieldnames or []))
            yield from reader

    def _parquet_rows(self, path: Path, name: str):
        """A Parquet file's rows, as DuckDB types them (Decimal, float, datetime, str, a MAP as a dict),
        a batch at a time: memory follows the batch, not the file."""
        extras.require("parquet", f"{name}: reading a Parquet FOCUS export", ("duckdb",))
        import duckdb

        try:
            columns = list(focus_columnar.columns_of(path, name))
        except focus_columnar.Irregular as exc:
            raise NotFocus(f"{name}: not a Parquet file: {str(exc)[:120]}") from None
        self.check_columns(name, columns)
        wanted = [c for c in (*REQUIRED, *PROVIDER_COLUMNS, *OPTIONAL) if c in columns]
        with focus_columnar.connect() as con:
            try:
                cursor = con.execute(f"SELECT {', '.join(focus_columnar.quoted(c) for c in wanted)} "
                                     f"FROM {focus_columnar.source_sql(path, name)}")
                while batch := cursor.fetchmany(50_000):
                    for values in batch:
                        yield dict(zip(wanted, values))
            except duckdb.Error as exc:
                raise NotFocus(f"{name}: unreadable Parquet: {str(exc)[:120]}") from None


Stamp = tuple  # what tells that a file changed: (size, mtime) on disk, (size, ETag) on S3


class LocalFiles:
    """FOCUS files on disk: a folder (recursive), a file or a glob."""

    def __init__(self, where: str):
        self.where = where

    def list(self) -> list[tuple[str, Stamp]]:
        path = Path(self.where)
        if path.is_dir():
            found = [p for p in path.rglob("*") if p.is_file()]
        elif path.is_file():
            found = [path]
        else:
            found = [Path(p) for p in glob.glob(self.where, recursive=True) if os.path.isfile(p)]
        out = []
        for p in sorted(p for p in found if p.name.endswith(SUFFIXES)):
            stat = p.stat()
            out.append((str(p), (stat.st_size, stat.st_mtime_ns)))
        return out

    @contextlib.contextmanager
    def opened(self, name: str) -> Iterator[Path]:
        yield Path(name)


class S3Objects:
    """FOCUS files on S3: `s3://bucket/prefix/` (every object under it), one object, or a key with a
    glob (`s3://bucket/exports/*/data/**`). An object is downloaded to a temporary file to be read
    (Parquet needs to seek) and the file removed at once."""

    def __init__(self, url: str, access, what: str):
        from mlops_kpi_exporter.sources import aws

        self.url = url
        self.bucket, _, self.key = url[len("s3://"):].partition("/")
        cut = min((i for i, c in enumerate(self.key) if c in "*?["), default=len(self.key))
        self.prefix = self.key[:cut]
        self.pattern = self.key if cut < len(self.key) else None
        self.client = aws.client("s3", access, what)
        self.describe = aws.describe_error

    def list(self) -> list[tuple[str, Stamp]]:
        out = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                for item in page.get("Contents", []):
                    key = item["Key"]
                    if not key.endswith(SUFFIXES) or (self.pattern and not fnmatch.fnmatchcase(key, self.pattern)):
                        continue
                    out.append((f"s3://{self.bucket}/{key}", (item.get("Size"), item.get("ETag"))))
        except Exception as exc:  # botocore's ClientError, EndpointConnectionError, NoCredentialsError
            raise RuntimeError(f"{self.url}: cannot list: {self.describe(exc)}") from None
        return sorted(out)

    @contextlib.contextmanager
    def opened(self, name: str) -> Iterator[Path]:
        key = name[len(f"s3://{self.bucket}/"):]
        suffix = next(s for s in SUFFIXES if key.endswith(s))
        with tempfile.TemporaryDirectory(prefix="mlops-bill-") as folder:
            path = Path(folder) / f"object{suffix}"
            try:
                self.client.download_file(self.bucket, key, str(path))
            except Exception as exc:  # noqa: BLE001 - reported with the object's name
                raise RuntimeError(f"{name}: cannot download: {self.describe(exc)}") from None
            yield path

