"""The FOCUS bill sources: FOCUS exports (sources/focus.py reads them) of AWS, Azure and Google
Cloud, local (a folder, a file, a glob) or on S3, read beside MLflow's estimates; and the assembly of
every configured bill source (FOCUS or AWS Cost Explorer).

Files are read incrementally: one already read and unchanged (size and mtime; on S3 size and ETag) is
not read again, and the figures are the sum over the files there now, so a restated month (a file
rewritten) replaces the old figures. What was read survives restarts and reloads: each file's totals
are kept in the state directory (state.py), so a restart reads only the files that changed.
"""

from __future__ import annotations

import json
import logging

from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter import extras
from mlops_kpi_exporter.bill import Bill, FileTotals
from mlops_kpi_exporter.config import Config, ConfigError
from mlops_kpi_exporter.config.billing import BillingSource as BillingSourceConfig
from mlops_kpi_exporter.metrics import billing as billing_metrics
from mlops_kpi_exporter.sources.focus import FocusReader, LocalFiles, NotFocus, S3Objects, Stamp
from mlops_kpi_exporter.state import StateFile

__all__ = ["BillingSource", "NotFocus", "bill_sources"]

log = logging.getLogger(__name__)
Cache = dict[str, tuple[Stamp, FileTotals]]  # file -> (stamp, its totals)


class BillingSource:
    """One configured export, polled on its own slow interval; a file that is not FOCUS fails the poll
    (named in the error) and the last good figures stay."""

    def __init__(self, source: BillingSourceConfig, config: Config, export: bool = True):
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
        self.export = export  # False: a shard other than the first reads the bill for the derived stage only
        self.state = StateFile(config.state_dir, "focus-files", source.name)
        self.cache: Cache = self.state.load(self._parse_cache) or {}
        self.last_read = 0
        self.last_bill: Bill | None = None  # of the latest good poll

    def check(self) -> str:
        if isinstance(self.files, S3Objects):
            return f"FOCUS objects under {self.where} (listed at the first poll)"
        files = self.files.list()
        parquet = [name for name, _ in files if name.endswith(".parquet")]
        if parquet:  # said now, not at the first poll
            extras.require("parquet", f"{parquet[0]}: reading a Parquet FOCUS export", ("duckdb",))
        return f"{len(files)} FOCUS files under {self.where}"

    def poll(self) -> tuple[list[Metric], str]:
        bill = self.last_bill = self.read()
        return (billing_metrics.families(bill) if self.export else []), (
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
        changed = self.last_read > 0 or fresh.keys() != self.cache.keys()
        self.cache = fresh  # files that went are forgotten: their months are restated by the files there now
        if changed:
            self.state.save(self._cache_json())
        billing = self.config.billing
        bill = Bill(self.label, self.config.pricing.currency, billing.months, billing.max_services,
                    self.config.allocation.max_values, tuple(self.config.allocation.tags))
        for _, totals in sorted(fresh.items()):
            bill.add(totals[1])
        return bill

    def facts(self) -> Bill | None:
        """What the derived stage joins (calibration, the run join); None before a good poll. A Bill
        is never changed once read."""
        return self.last_bill

    # -- the file cache as the state directory keeps it ------------------------------------------------
    def _settings(self) -> object:
        return json.loads(json.dumps(self.reader.settings()))  # as JSON gives it back: lists, not tuples

    def _cache_json(self) -> dict:
        return {"where": self.where, "settings": self._settings(),
                "files": [[name, list(stamp), totals.to_json()] for name, (stamp, totals) in sorted(self.cache.items())]}

    def _parse_cache(self, data: dict) -> Cache | None:
        if data["where"] != self.where or data["settings"] != self._settings():
            log.info("%s: the kept file totals were read under another config: reading every file again", self.name)
            return None
        cache: Cache = {}
        for name, stamp, totals in data["files"]:
            if not isinstance(name, str) or not isinstance(stamp, list):
                raise ValueError(f"a file entry {str(name)[:80]} is not [name, stamp, totals]")
            cache[name] = (tuple(stamp), FileTotals.from_json(totals))
        return cache


def bill_sources(config: Config, export: bool = True) -> list:
    """One source per configured bill: FOCUS files (local or s3://) or AWS Cost Explorer. Not exporting
    (a shard other than the first), only FOCUS bills are read, for the derived stage: Cost Explorer
    calls are billed, and the config refuses calibration from them when sharded."""
    from mlops_kpi_exporter.sources.cost_explorer import CostExplorerSource

    out: list = []
    for source in config.billing.sources:
        if source.cost_explorer is not None:
            if export:
                out.append(CostExplorerSource(source, config))
        else:
            out.append(BillingSource(source, config, export))
    return out
