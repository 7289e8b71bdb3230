"""What the catalogue declares of a metric (MetricSpec), and the notes its help texts share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

POLLED_NOTE = "Computed by a background poll, not at scrape time."
RUN = ("experiment", "run_id", "run_name", "status")  # the labels of every per-run series
RUN_SERIES_NOTE = "Running runs and the most recently ended ones, at most runs.max_run_series. {polled}"
UPSTREAM_NOTE = "Re-counted from the server's own metrics; upstream restarts do not reset it."
Kind = Literal["gauge", "counter", "histogram", "info"]


@dataclass(frozen=True)
class MetricSpec:
    name: str  # as exposed; counters end in _total, info metrics in _info, histograms are the base name
    kind: Kind
    labels: tuple[str, ...]
    help: str  # the HELP text
    meaning: str  # the README's column, in markdown
    area: str  # the metric module (or source) that renders it

    def family(self, **values: str) -> Metric:
        """An empty family of this metric; label values are then given in `labels` order."""
        text = self.help.format(polled=POLLED_NOTE, **values) if "{" in self.help else self.help
        if self.kind == "counter":
            return CounterMetricFamily(self.name.removesuffix("_total"), text, labels=self.labels)
        if self.kind == "info":
            return InfoMetricFamily(self.name.removesuffix("_info"), text, labels=self.labels)
        if self.kind == "histogram":
            return HistogramMetricFamily(self.name, text, labels=self.labels)
        return GaugeMetricFamily(self.name, text, labels=self.labels)


def entry(name: str, kind: Kind, labels: tuple[str, ...], help: str, meaning: str, area: str) -> MetricSpec:  # noqa: A002
    return MetricSpec(name, kind, labels, help, meaning, area)
