"""Model servers' own metrics, normalized: each server's documented names mapped to one set
(PRESETS), pages parsed and filtered (Samples), and counters re-counted from per-series deltas
(CounterTracker, Traffic): an upstream restart (a counter going down) adds the new value, as
Prometheus does, so the exported counters only rise and never show negative or huge rates.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from mlops_kpi_exporter.config import CustomMapping, MetricSelector


INFER_ROUTES = "~.*/(infer|invocations)"  # MLServer's V2 infer routes (per model, per version) and MLflow's


def _sel(name: str, scale: float = 1.0, divide_by: str | None = None, **labels: str) -> MetricSelector:
    return MetricSelector(name=name, labels=labels, scale=scale, divide_by=divide_by)


# Each server's metric names mapped to one normalized set, one meaning per figure (see README,
# "Presets"): requests are predictions (health, readiness, metrics and docs routes left out wherever
# the server labels routes), errors are server faults (5xx), client errors are rejected requests (4xx).
PRESETS: dict[str, CustomMapping] = {
    "mlflow": CustomMapping(),  # MLflow's scoring server has no /metrics: probe it
    "bentoml": CustomMapping(  # BentoML 1.4: every route of the service, health checks included
        route_label="endpoint",
        requests=[_sel("bentoml_service_request_total")],
        errors=[_sel("bentoml_service_request_total", http_response_code="~5..")],
        client_errors=[_sel("bentoml_service_request_total", http_response_code="~4..")],
        latency_histogram=_sel("bentoml_service_request_duration_seconds"),
        identified_by=["bentoml_service_request_in_progress"],
    ),
    "mlserver": CustomMapping(  # MLServer 1.7 (MLflow's and KServe's V2 runtime): its REST server's infer routes
        route_label="path",
        requests=[_sel("rest_server_requests_total", path=INFER_ROUTES)],
        errors=[_sel("rest_server_requests_total", path=INFER_ROUTES, status_code="~5..")],
        client_errors=[_sel("rest_server_requests_total", path=INFER_ROUTES, status_code="~4..")],
        latency_histogram=_sel("rest_server_request_duration_seconds", path=INFER_ROUTES),
        identified_by=["parallel_request_queue", "rest_server_requests_in_progress"],  # before any request
    ),
    "torchserve": CustomMapping(  # TorchServe 0.12: every prediction request, whatever its outcome
        requests=[_sel("ts_inference_requests_total")],
        # server-wide: no model label (see Traffic, per model), and every API's (a 404 anywhere too)
        errors=[_sel("Requests5XX")],
        client_errors=[_sel("Requests4XX")],
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
    "kserve": CustomMapping(  # KServe 0.21: predict() calls and the time inside predict() only, no
        # HTTP-level series: a request refused before predict() (not JSON: 400) is in no figure, one that
        # predict() raises on is a request (its status is nowhere), so errors are not exported
        requests=[_sel("request_predict_seconds_count")],
        latency_histogram=_sel("request_predict_seconds"),
        identified_by=["request_predict_seconds"],  # its families show, without samples, before any request
    ),
    "vllm": CustomMapping(
        requests=[_sel("vllm:request_success_total"), _sel("http_requests_total", status="5xx")],
        errors=[_sel("http_requests_total", status="5xx")],
        client_errors=[_sel("http_requests_total", status="4xx")],
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
    """An upstream page's samples, indexed by sample name, filtered by the endpoint's labels.

    With `only` (metrics_labels, e.g. {model: churn} on a shared server), a series with another value
    is left out; a series without the label at all is server-wide: kept for gauges (GPU, CPU), but
    never counted as this endpoint's traffic (every model of the server would count it again)."""

    def __init__(self, text: str, only: dict[str, str]):
        self.by_name: dict[str, list[tuple[dict[str, str], float]]] = {}
        self.server_wide: set[str] = set()  # sample names seen only without the metrics_labels keys
        self.names: set[str] = set()  # every family and sample name on the page, with or without samples
        per_model: set[str] = set()
        for family in text_string_to_metric_families(text):
            self.names.add(family.name)
            for sample in family.samples:
                self.names.add(sample.name)
                if only:
                    if not _label_matches(sample.labels, {k: v for k, v in only.items() if k in sample.labels}):
                        continue
                    if any(k in sample.labels for k in only):
                        per_model.add(sample.name)
                    else:
                        self.server_wide.add(sample.name)
                self.by_name.setdefault(sample.name, []).append((sample.labels, sample.value))
        self.server_wide -= per_model
        self.filtered = bool(only)

    def has(self, name: str) -> bool:
        """Whether the page shows the name at all (a family without samples yet counts: an idle server)."""
        base = name.removesuffix("_total")
        return any(n in self.names for n in (name, base, base + "_total"))

    def _rows(self, name: str) -> tuple[str, list[tuple[dict[str, str], float]]]:
        # prometheus-client's parser names every counter sample `..._total`, even where the server
        # wrote `nv_inference_request_success` or `Requests5XX`: look the name up both ways.
        if name in self.by_name:
            return name, self.by_name[name]
        return name + "_total", self.by_name.get(name + "_total", [])

    def select(self, selector: MetricSelector, name: str | None = None) -> list[tuple[dict[str, str], float]]:
        _, rows = self._rows(name or selector.name)
        return [(labels, v * selector.scale) for labels, v in rows
                if _label_matches(labels, selector.labels) and math.isfinite(v)]

    def is_server_wide(self, selector: MetricSelector) -> bool:
        """A counter of the whole server, on a page filtered to one model: not this endpoint's own."""
        return self.filtered and self._rows(selector.name)[0] in self.server_wide


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


def fits(samples: Samples, mapping: CustomMapping) -> bool:
    """Whether the page has any of the mapping's request or latency series (a mapping without any,
    mlflow's, fits every page). A page that matches nothing is a wrong preset or a renamed metric."""
    names = mapping.page_series()
    return not names or any(samples.has(n) for n in names)


@functools.lru_cache(maxsize=64)
def _routes_pattern(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    return re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None


@dataclass
class Traffic:
    """Normalized traffic of one endpoint, accumulated over scrapes."""

    requests: CounterTracker = field(default_factory=CounterTracker)
    errors: CounterTracker = field(default_factory=CounterTracker)
    client_errors: CounterTracker = field(default_factory=CounterTracker)
    latency_sum: CounterTracker = field(default_factory=CounterTracker)
    latency_count: CounterTracker = field(default_factory=CounterTracker)
    buckets: dict[float, CounterTracker] = field(default_factory=dict)
    has_errors: bool = False
    has_client_errors: bool = False
    has_latency: bool = False
    # error counters left out as server-wide (no model label on a page filtered to one model)
    server_wide: tuple[str, ...] = ()
    utilization: dict[str, float] = field(default_factory=dict)
    throughput: float | None = None  # requests per second between the last two scrapes
    _last_at: float | None = None
    _last_requests: float = 0.0

    def update(self, samples: Samples, mapping: CustomMapping, now: float) -> None:
        excluded = _routes_pattern(tuple(mapping.exclude_routes)) if mapping.route_label else None

        def rows(selector: MetricSelector, name: str | None = None) -> list[tuple[dict[str, str], float]]:
            found = samples.select(selector, name)
            if excluded is None:
                return found
            return [(labels, v) for labels, v in found if not excluded.fullmatch(labels.get(mapping.route_label, ""))]

        left_out: list[str] = []

        def counter(selectors: Iterable[MetricSelector]) -> tuple[dict[Labels, float], bool]:
            """The series of the selectors, and whether any selector is this endpoint's own."""
            own = [s for s in selectors if not samples.is_server_wide(s)]
            left_out.extend(s.name for s in selectors if s not in own)
            return {_key(s.name, labels): v for s in own for labels, v in rows(s)}, bool(own)

        found, _ = counter(mapping.requests)
        self.requests.update(found)
        found, self.has_errors = counter(mapping.errors)
        self.errors.update(found)
        found, self.has_client_errors = counter(mapping.client_errors)
        self.client_errors.update(found)
        self.server_wide = tuple(dict.fromkeys(left_out))
        if mapping.latency_histogram is not None:
            self._histogram(rows, mapping.latency_histogram)
        elif mapping.latency_sum is not None and mapping.latency_count is not None:
            self.has_latency = True
            self.latency_sum.update({_key(mapping.latency_sum.name, l): v for l, v in rows(mapping.latency_sum)})
            self.latency_count.update({_key(mapping.latency_count.name, l): v for l, v in rows(mapping.latency_count)})
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

    def _histogram(self, rows, selector: MetricSelector) -> None:
        self.has_latency = True
        per_bound: dict[float, dict[Labels, float]] = {}
        for labels, value in rows(selector, selector.name + "_bucket"):
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
        self.latency_sum.update({_key(selector.name, l): v for l, v in rows(sum_selector)})
        self.latency_count.update({_key(selector.name, l): v for l, v in rows(count_selector)})
