"""Model servers' own metrics, normalized: each server's documented names mapped to one set
(PRESETS), pages parsed and filtered (Samples), and counters re-counted from per-series deltas
(CounterTracker, Traffic): an upstream restart (a counter going down) adds the new value, as
Prometheus does, so the exported counters only rise and never show negative or huge rates.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from mlops_kpi_exporter.config import CustomMapping, MetricSelector


def _sel(name: str, scale: float = 1.0, divide_by: str | None = None, **labels: str) -> MetricSelector:
    return MetricSelector(name=name, labels=labels, scale=scale, divide_by=divide_by)


# Each server's documented metric names mapped to one normalized set (see README, "Presets").
PRESETS: dict[str, CustomMapping] = {
    "mlflow": CustomMapping(),  # MLflow's scoring server has no /metrics: probe it
    "bentoml": CustomMapping(
        requests=[_sel("bentoml_service_request_total")],
        errors=[_sel("bentoml_service_request_total", http_response_code="!~2..")],
        latency_histogram=_sel("bentoml_service_request_duration_seconds"),
    ),
    "torchserve": CustomMapping(
        requests=[_sel("ts_inference_requests_total")],
        errors=[_sel("Requests5XX")],
        latency_sum=_sel("ts_inference_latency_microseconds", scale=1e-6),
        latency_count=_sel("ts_inference_requests_total"),
        utilization={"cpu": _sel("CPUUtilization", 0.01), "gpu": _sel("GPUUtilization", 0.01),
                     "memory": _sel("MemoryUtilization", 0.01)},
    ),
    "triton": CustomMapping(
        requests=[_sel("nv_inference_request_success"), _sel("nv_inference_request_failure")],
        errors=[_sel("nv_inference_request_failure")],
        latency_sum=_sel("nv_inference_request_duration_us", scale=1e-6),
        latency_count=_sel("nv_inference_request_success"),
        utilization={"gpu": _sel("nv_gpu_utilization"), "cpu": _sel("nv_cpu_utilization"),
                     "memory": _sel("nv_gpu_memory_used_bytes", divide_by="nv_gpu_memory_total_bytes")},
    ),
    "kserve": CustomMapping(
        requests=[_sel("request_predict_seconds_count")],
        latency_histogram=_sel("request_predict_seconds"),
    ),
    "vllm": CustomMapping(
        requests=[_sel("vllm:request_success_total"), _sel("http_requests_total", status="5xx")],
        errors=[_sel("http_requests_total", status="5xx")],
        latency_histogram=_sel("vllm:e2e_request_latency_seconds"),
        utilization={"kv_cache": _sel("vllm:kv_cache_usage_perc")},
    ),
}

Labels = tuple[tuple[str, str], ...]


def _label_matches(labels: dict[str, str], wanted: dict[str, str]) -> bool:
    for key, pattern in wanted.items():
        actual = labels.get(key, "")
        if pattern.startswith("!~"):
            if re.fullmatch(pattern[2:], actual):
                return False
        elif pattern.startswith("~"):
            if not re.fullmatch(pattern[1:], actual):
                return False
        elif actual != pattern:
            return False
    return True


class Samples:
    """An upstream page's samples, indexed by sample name, filtered by the endpoint's labels."""

    def __init__(self, text: str, only: dict[str, str]):
        self.by_name: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                # metrics_labels picks one model's series; server-wide series (GPU, CPU) lack the label and stay
                if only and not _label_matches(sample.labels, {k: v for k, v in only.items() if k in sample.labels}):
                    continue
                self.by_name.setdefault(sample.name, []).append((sample.labels, sample.value))

    def select(self, selector: MetricSelector, name: str | None = None) -> list[tuple[dict[str, str], float]]:
        name = name or selector.name
        # prometheus-client's parser names every counter sample `..._total`, even where the server
        # wrote `nv_inference_request_success` or `Requests5XX`: look the name up both ways.
        rows = self.by_name.get(name) or self.by_name.get(name + "_total", [])
        return [(labels, v * selector.scale) for labels, v in rows
                if _label_matches(labels, selector.labels) and math.isfinite(v)]


@dataclass
class CounterTracker:
    """A counter re-counted from upstream series: rises by each series' delta; a reset adds anew."""

    total: float = 0.0
    last: dict[Labels, float] = field(default_factory=dict)

    def update(self, current: dict[Labels, float]) -> None:
        for key, value in current.items():
            before = self.last.get(key)
            if before is None or value < before:  # a new series, or the server restarted
                self.total += value
            else:
                self.total += value - before
        self.last = dict(current)


def _key(prefix: str, labels: dict[str, str], drop: str = "") -> Labels:
    return ((" ", prefix), *sorted((k, v) for k, v in labels.items() if k != drop))


@dataclass
class Traffic:
    """Normalized traffic of one endpoint, accumulated over scrapes."""

    requests: CounterTracker = field(default_factory=CounterTracker)
    errors: CounterTracker = field(default_factory=CounterTracker)
    latency_sum: CounterTracker = field(default_factory=CounterTracker)
    latency_count: CounterTracker = field(default_factory=CounterTracker)
    buckets: dict[float, CounterTracker] = field(default_factory=dict)
    has_errors: bool = False
    has_latency: bool = False
    utilization: dict[str, float] = field(default_factory=dict)
    throughput: float | None = None  # requests per second between the last two scrapes
    _last_at: float | None = None
    _last_requests: float = 0.0

    def update(self, samples: Samples, mapping: CustomMapping, now: float) -> None:
        def counter(selectors: Iterable[MetricSelector]) -> dict[Labels, float]:
            return {_key(s.name, labels): v for s in selectors for labels, v in samples.select(s)}

        self.requests.update(counter(mapping.requests))
        self.has_errors = bool(mapping.errors)
        self.errors.update(counter(mapping.errors))
        if mapping.latency_histogram is not None:
            self._histogram(samples, mapping.latency_histogram)
        elif mapping.latency_sum is not None and mapping.latency_count is not None:
            self.has_latency = True
            self.latency_sum.update(counter([mapping.latency_sum]))
            self.latency_count.update(counter([mapping.latency_count]))
        self.utilization = {}
        for resource, selector in mapping.utilization.items():
            values = [v for _, v in samples.select(selector)]
            if selector.divide_by:
                totals = [v for _, v in samples.select(selector, selector.divide_by)]
                if values and sum(totals) > 0:
                    self.utilization[resource] = sum(values) / sum(totals)
            elif values:
                self.utilization[resource] = sum(values) / len(values)  # e.g. the mean over GPUs
        if self._last_at is not None and now > self._last_at:
            self.throughput = (self.requests.total - self._last_requests) / (now - self._last_at)
        self._last_at, self._last_requests = now, self.requests.total

    def _histogram(self, samples: Samples, selector: MetricSelector) -> None:
        self.has_latency = True
        per_bound: dict[float, dict[Labels, float]] = {}
        for labels, value in samples.select(selector, selector.name + "_bucket"):
            try:
                bound = float(labels.get("le", "nan")) * selector.scale
            except ValueError:
                continue
            if not math.isnan(bound):
                per_bound.setdefault(bound, {})[_key(selector.name, labels, drop="le")] = value / selector.scale
        for bound, series in per_bound.items():
            self.buckets.setdefault(bound, CounterTracker()).update(series)
        sum_selector = MetricSelector(name=selector.name + "_sum", labels=selector.labels, scale=selector.scale)
        count_selector = MetricSelector(name=selector.name + "_count", labels=selector.labels)
        self.latency_sum.update({_key(selector.name, l): v for l, v in samples.select(sum_selector)})
        self.latency_count.update({_key(selector.name, l): v for l, v in samples.select(count_selector)})
