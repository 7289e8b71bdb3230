"""Runs each source's poll on its own schedule (APScheduler), never overlapping, with backoff on failure."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, is_dataclass
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Protocol

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter.snapshot import SnapshotStore

log = logging.getLogger(__name__)


class Source(Protocol):
    name: str
    interval: float  # seconds between polls
    retry_backoff: float  # first retry delay after a failed poll; doubles up to `interval`

    def poll(self) -> tuple[list[Metric], str]:
        """One complete poll: metric families and a one-line summary. Raises on failure."""

    def check(self) -> str:
        """Reach the source once; a line for the person running `check`. Raises on failure."""

    # Optional: `facts() -> object | None`, what the derived stage joins (facts.py), read right after
    # each good poll in the same thread.


def describe_error(exc: BaseException) -> str:
    """One line, bounded, for logs, the landing page and stderr (messages carry no credentials)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > 400:
        text = text[:400] + "..."
    return f"{type(exc).__name__}: {text}"


def backoff_delay(source: Source, failures: int) -> float:
    """Delay before retry number `failures`: doubling from retry_backoff, capped at the interval."""
    base = min(source.interval, source.retry_backoff * 2 ** max(0, failures - 1))
    return base * random.uniform(0.8, 1.0)  # jitter so that many exporters do not retry in step


class Poller:
    def __init__(self, sources: Sequence[Source], store: SnapshotStore):
        self.sources = list(sources)
        self.store = store
        self.failures = {s.name: 0 for s in self.sources}
        self._scheduler: BackgroundScheduler | None = None
        for source in self.sources:
            store.register(source.name)

    def poll_once(self, source: Source) -> bool:
        started = time.monotonic()
        try:
            families, summary = source.poll()
        except Exception as exc:  # noqa: BLE001 - any failure of a source is reported, never fatal
            duration = time.monotonic() - started
            self.failures[source.name] += 1
            message = describe_error(exc)
            self.store.failure(source.name, message, duration)
            log.warning(
                "poll failed source=%s duration=%.3fs consecutive_failures=%d error=%s",
                source.name, duration, self.failures[source.name], message,
                extra={"event": "poll", "source": source.name, "ok": False, "duration_seconds": round(duration, 4),
                       "consecutive_failures": self.failures[source.name], "error": message},
            )
            return False
        duration = time.monotonic() - started
        self.failures[source.name] = 0
        facts = source.facts() if hasattr(source, "facts") else None
        self.store.success(source.name, families, duration, summary, facts,
                           workspaces=getattr(source, "workspaces", None) is not None)
        report = getattr(source, "last_report", None)  # the MLflow source's counts, for JSON logs
        log.info("poll ok source=%s duration=%.3fs %s", source.name, duration, summary,
                 extra={"event": "poll", "source": source.name, "ok": True, "duration_seconds": round(duration, 4),
                        "summary": summary, **(asdict(report) if is_dataclass(report) else {})})
        return True

    def start(self) -> None:
        logging.getLogger("apscheduler").setLevel(logging.WARNING)  # per-job chatter; we log each poll
        scheduler = BackgroundScheduler(
            # a thread per source: a slow endpoint must never wait for a free worker behind others
            executors={"default": ThreadPoolExecutor(max_workers=max(4, len(self.sources)))},
            timezone=timezone.utc,
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None},
        )
        now = datetime.now(timezone.utc)
        for source in self.sources:
            scheduler.add_job(
                self._job, "interval", seconds=source.interval, args=[source], id=source.name, next_run_time=now
            )
        scheduler.start()
        self._scheduler = scheduler

    def _job(self, source: Source) -> None:
        if self.poll_once(source) or self._scheduler is None:
            return
        delay = backoff_delay(source, self.failures[source.name])
        if delay < source.interval:
            self._scheduler.modify_job(source.name, next_run_time=datetime.now(timezone.utc) + timedelta(seconds=delay))

    def stop(self, wait: bool = False) -> None:
        """wait: let a poll in flight finish first (bounded by its timeout)."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=wait)
            self._scheduler = None
