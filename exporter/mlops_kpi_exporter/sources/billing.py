"""The cloud bill: FOCUS exports (FinOps Open Cost and Usage Specification 1.0 to 1.3) of AWS, Azure
and Google Cloud, read beside MLflow's estimates.

Costs are summed by month of ChargePeriodStart (UTC), provider, service and service category, and by
the value of each allocation tag, in integer nano-units (exact: a month's BilledCost equals the
invoice, credits and adjustments included). Files are local (a folder, a file, a glob) or objects
on S3 (`s3://bucket/prefix/`, through boto3). They are read incrementally: one already read and
unchanged (size and mtime; on S3 size and ETag) is not read again, and the figures are the sum over
the files there now, so a restated month (a file rewritten) replaces the old figures. Memory follows the number of
groups, never the number of rows: CSV is streamed, Parquet read a batch at a time, a few columns.
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import glob
import gzip
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path

from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter import extras
from mlops_kpi_exporter.bill_share import SharedBills
from mlops_kpi_exporter.config import Config, ConfigError
from mlops_kpi_exporter.config.billing import BillingSource as BillingSourceConfig
from mlops_kpi_exporter.config.billing import tag_keys
from mlops_kpi_exporter.metrics import billing as billing_metrics
from mlops_kpi_exporter.runs import NANO, UNTAGGED

log = logging.getLogger(__name__)

BASES = ("billed", "effective", "list")
COST_COLUMNS = ("BilledCost", "EffectiveCost", "ListCost")
REQUIRED = (*COST_COLUMNS, "ChargePeriodStart", "ChargePeriodEnd", "ServiceName")
PROVIDER_COLUMNS = ("ServiceProviderName", "ProviderName")  # 1.3 renamed it; 1.0-1.2 have the second
OPTIONAL = ("ServiceCategory", "Tags", "ChargeCategory", "BillingCurrency", "AllocatedTags")  # AllocatedTags: 1.3
COMPUTE_CATEGORIES = {"Compute", "AI and Machine Learning"}  # what MLflow's run estimates price
SUFFIXES = (".csv", ".csv.gz", ".parquet")
MISSING = {"", "NULL", "null"}
Costs = list[int]  # nano, in the order of BASES


class NotFocus(ValueError):
    """A file that is not a FOCUS export; the message names the file and what is wrong."""


def _nano(text: object) -> int:
    if text is None or (isinstance(text, str) and text.strip() in MISSING):
        return 0
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise ValueError(f"not a number: {str(text)[:40]!r}") from None
    if not value.is_finite():
        raise ValueError(f"not a finite number: {text!r}")
    return int((value * NANO).to_integral_value())


def _utc(text: object) -> datetime | None:
    """A FOCUS timestamp, with or without a zone (none means UTC), as an aware UTC datetime."""
    if isinstance(text, datetime):
        moment = text
    elif text is None or (isinstance(text, str) and text.strip() in MISSING):
        return None
    else:
        moment = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _tags(text: object) -> dict[str, str]:
    if text is None or (isinstance(text, str) and text.strip() in MISSING):
        return {}
    try:
        data = json.loads(text) if isinstance(text, str) else dict(text)
    except (ValueError, TypeError):
        return {}
    if not isinstance(data, dict):
        return {}
    # a tag with no value is the boolean true; keys may carry odd spacing
    return {str(k).strip(): ("true" if v is True else str(v).strip()) for k, v in data.items() if v not in (None, "")}


@dataclass
class FileTotals:
    """What one file adds to the bill."""

    costs: dict[tuple[str, str, str, str], Costs] = field(default_factory=dict)  # (month, provider, service, category)
    by_tag: dict[tuple[str, str, str, bool], Costs] = field(default_factory=dict)  # (month, tag, value, compute)
    last_charge: dict[str, float] = field(default_factory=dict)  # provider -> end of the latest charge period
    # compute usage only (no credits, adjustments, taxes): what prices compare against list, for calibration
    compute_usage: dict[tuple[str, str], Costs] = field(default_factory=dict)  # (month, provider)
    # rows a billing.run_join rule matches: (rule index, key, provider, month, charge start ms, end ms)
    joined: dict[tuple[int, str, str, str, int, int], Costs] = field(default_factory=dict)
    rows: int = 0


def add_costs(table: dict, key: tuple, costs: Costs) -> None:
    """Add a row's costs (one per basis) to the group `key` of `table`."""
    current = table.get(key)
    if current is None:
        table[key] = list(costs)
    else:
        for i, value in enumerate(costs):
            current[i] += value


class FocusReader:
    """Reads FOCUS files into FileTotals, grouping tags by the allocation tags (after aliases)."""

    def __init__(self, tags: tuple[str, ...], aliases: dict[str, list[str]], currency: str = "USD",
                 join_tags: tuple[str, ...] = ()):
        self.currency = currency  # the bill's amounts are summed as they are: never across currencies
        self.tags = tags
        self.keys = {tag: tag_keys(tag, aliases) for tag in tags}
        self.join_keys = [tag_keys(tag, aliases) for tag in join_tags]  # billing.run_join, in rule order

    def read(self, path: Path, name: str | None = None) -> FileTotals:
        """The totals of one file; `name` (default the path) is how errors name it, e.g. an s3:// URL."""
        name = name or str(path)
        totals = FileTotals()
        rows = self._parquet_rows(path, name) if name.endswith(".parquet") else self._csv_rows(path, name)
        for number, row in enumerate(rows, start=2):
            try:
                self._add_row(totals, row)
            except (ValueError, TypeError) as exc:
                raise NotFocus(f"{name}: row {number}: {exc}") from None
        return totals

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
        costs = [_nano(row.get(column)) for column in COST_COLUMNS]
        add_costs(totals.costs, (month, provider, service, category), costs)
        tags = _tags(row.get("Tags"))
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
                self._join_row(totals, row, tags, provider, month, start, end, costs)
        totals.rows += 1

    def _join_row(self, totals: FileTotals, row: dict, tags: dict[str, str], provider: str, month: str,
                  start: datetime, end: datetime, costs: Costs) -> None:
        """The first run_join rule whose bill tag the row carries (split cost allocation's
        AllocatedTags first: the pod's labels on its share of a node) takes the row."""
        allocated = _tags(row.get("AllocatedTags"))
        for index, keys in enumerate(self.join_keys):
            value = next((found[k] for found in (allocated, tags) for k in keys if found.get(k)), None)
            if value is not None and value != "true":
                key = (index, value[:250], provider, month, int(start.timestamp() * 1000), int(end.timestamp() * 1000))
                add_costs(totals.joined, key, costs)
                return

    @staticmethod
    def _check_columns(name: str, columns: list[str]) -> None:
        for column in REQUIRED:
            if column not in columns:
                raise NotFocus(f"{name}: not a FOCUS export: no {column} column")
        if not any(c in columns for c in PROVIDER_COLUMNS):
            raise NotFocus(f"{name}: not a FOCUS export: no ProviderName (or ServiceProviderName) column")

    def _csv_rows(self, path: Path, name: str):
        raw = gzip.open(path, "rb") if name.endswith(".gz") else open(path, "rb")
        with raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
            reader = csv.DictReader(text)
            self._check_columns(name, list(reader.fieldnames or []))
            yield from reader

    def _parquet_rows(self, path: Path, name: str):
        extras.require("parquet", f"{name}: reading a Parquet FOCUS export", ("pyarrow",))
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow's ArrowInvalid: not a Parquet file at all
            raise NotFocus(f"{name}: not a Parquet file: {str(exc)[:120]}") from None
        columns = table.schema_arrow.names
        self._check_columns(name, columns)
        wanted = [c for c in (*REQUIRED, *PROVIDER_COLUMNS, *OPTIONAL) if c in columns]
        for batch in table.iter_batches(batch_size=50_000, columns=wanted):
            data = batch.to_pydict()
            for i in range(batch.num_rows):
                yield {c: data[c][i] for c in wanted}


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


@dataclass
class Bill:
    """The sum over a source's files: what the metric module renders."""

    name: str
    currency: str
    months: int
    max_services: int
    max_values: int
    tags: tuple[str, ...]
    costs: dict[tuple[str, str, str, str], Costs] = field(default_factory=dict)
    by_tag: dict[tuple[str, str, str, bool], Costs] = field(default_factory=dict)
    last_charge: dict[str, float] = field(default_factory=dict)
    compute_usage: dict[tuple[str, str], Costs] = field(default_factory=dict)
    joined: dict[tuple[int, str, str, str, int, int], Costs] = field(default_factory=dict)
    files: int = 0
    rows: int = 0

    def add(self, part: FileTotals) -> None:
        for key, costs in part.joined.items():
            add_costs(self.joined, key, costs)
        for key, costs in part.costs.items():
            add_costs(self.costs, key, costs)
        for key, costs in part.compute_usage.items():
            add_costs(self.compute_usage, key, costs)
        for key, costs in part.by_tag.items():
            add_costs(self.by_tag, key, costs)
        for provider, end in part.last_charge.items():
            self.last_charge[provider] = max(self.last_charge.get(provider, 0.0), end)
        self.files += 1
        self.rows += part.rows

    def shown_months(self) -> list[str]:
        return sorted({month for month, *_ in self.costs})[-self.months:]


class BillingSource:
    """One configured export, polled on its own slow interval; a file that is not FOCUS fails the poll
    (named in the error) and the last good figures stay."""

    def __init__(self, source: BillingSourceConfig, config: Config):
        if source.focus is None:
            raise ConfigError(f"billing.sources[{source.name}]: only FOCUS files are read here")
        self.where = source.focus
        self.files = (S3Objects(source.focus, source.s3, f"billing.sources[{source.name}]")
                      if source.focus.startswith("s3://") else LocalFiles(source.focus))
        self.name = f"billing:{source.name}"
        self.label = source.name
        self.interval = config.billing.poll_interval
        self.retry_backoff = min(300.0, config.billing.poll_interval)
        self.config = config
        self.reader = FocusReader(tuple(config.allocation.tags), dict(config.allocation.tag_aliases),
                                  config.pricing.currency, tuple(r.bill_tag for r in config.billing.run_join))
        self.cache: dict[str, tuple[Stamp, FileTotals]] = {}  # file -> (stamp, totals)
        self.last_read = 0
        self.last_bill: Bill | None = None  # of the latest good poll

    def check(self) -> str:
        if isinstance(self.files, S3Objects):
            return f"FOCUS objects under {self.where} (listed at the first poll)"
        files = self.files.list()
        parquet = [name for name, _ in files if name.endswith(".parquet")]
        if parquet:  # said now, not at the first poll
            extras.require("parquet", f"{parquet[0]}: reading a Parquet FOCUS export", ("pyarrow",))
        return f"{len(files)} FOCUS files under {self.where}"

    def poll(self) -> tuple[list[Metric], str]:
        bill = self.last_bill = self.read()
        return billing_metrics.families(bill), (
            f"{bill.files} files ({self.last_read} read anew), {bill.rows:,} rows, months {', '.join(bill.shown_months())}")

    def read(self) -> Bill:
        fresh: dict[str, tuple[Stamp, FileTotals]] = {}
        self.last_read = 0
        for name, stamp in self.files.list():
            cached = self.cache.get(name)
            if cached is None or cached[0] != stamp:
                with self.files.opened(name) as path:
                    fresh[name] = (stamp, self.reader.read(path, name))  # NotFocus: the poll fails, the cache stays
                self.last_read += 1
            else:
                fresh[name] = cached
        self.cache = fresh  # files that went are forgotten: their months are restated by the files there now
        billing = self.config.billing
        bill = Bill(self.label, self.config.pricing.currency, billing.months, billing.max_services,
                    self.config.allocation.max_values, tuple(self.config.allocation.tags))
        for _, totals in sorted(fresh.items()):
            bill.add(totals[1])
        return bill


class Sharing:
    """A billing source that, after each good read, hands its bill to the MLflow source (SharedBills);
    with export off (a shard other than the first) it exports nothing of its own."""

    def __init__(self, source, shared: SharedBills, export: bool = True):
        self.source, self.shared, self.export = source, shared, export
        self.name, self.label = source.name, source.label
        self.interval, self.retry_backoff = source.interval, source.retry_backoff

    def check(self) -> str:
        return self.source.check()

    def read(self) -> Bill:
        return self.source.read()

    def poll(self) -> tuple[list[Metric], str]:
        families, summary = self.source.poll()
        self.shared.update(self.source.last_bill)
        return (families if self.export else []), summary


def bill_sources(config: Config, shared: SharedBills | None = None, export: bool = True) -> list:
    """One source per configured bill: FOCUS files (local or s3://) or AWS Cost Explorer; each hands
    its bill to the MLflow source when `shared` (calibration, run join). Not exporting (a shard other
    than the first), only FOCUS bills are read: Cost Explorer calls are billed and carry no run join."""
    out = []
    for source in config.billing.sources:
        if source.cost_explorer is not None and not export:
            continue
        if source.cost_explorer is not None:
            from mlops_kpi_exporter.sources.cost_explorer import CostExplorerSource

            reader = CostExplorerSource(source, config)
        else:
            reader = BillingSource(source, config)
        out.append(reader if shared is None else Sharing(reader, shared, export))
    return out
