"""Model-serving endpoints: synthetic probes, the servers' own metrics, and the cost of serving.

Each endpoint is a source of its own, polled on its own interval with its own timeouts, so a slow
endpoint never delays another or the MLflow poll. A probe is a real request; its outcome is data
(`mlops_endpoint_up`, `mlops_endpoint_probes_total{outcome}`), not a source failure.

Upstream traffic counters are re-counted here from per-series deltas: an upstream restart (a
counter going down) adds the new value, as Prometheus does, so the exported counters only rise and
never show negative or huge rates. When the server's metrics cannot be read, the traffic series are
dropped until they can: a stale value is never presented as fresh.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import requests
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from mlops_kpi_exporter.config import Config, CustomMapping, EndpointConfig, MetricSelector, redact_uri
from mlops_kpi_exporter.pricing import Pricer

log = logging.getLogger(__name__)

PROBE_OUTCOMES = ("success", "http_error", "timeout", "connection_error", "bad_response")
PROBE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_PROBE_BODY = 1 << 20  # bytes read from a probe reply
MAX_METRICS_BODY = 20 << 20  # bytes read from a metrics page


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


def classify(exc: BaseException) -> str:
    if isinstance(exc, requests.Timeout):
        return "timeout"
    if isinstance(exc, requests.ConnectionError):
        return "connection_error"
    return "bad_response"


def _read_limited(response: requests.Response, limit: int) -> bytes:
    body = b""
    for chunk in response.iter_content(65536):
        body += chunk
        if len(body) > limit:
            raise ValueError(f"reply larger than {limit} bytes")
    return body


class EndpointSource:
    def __init__(self, endpoint: EndpointConfig, config: Config, pricer: Pricer | None = None):
        self.endpoint = endpoint
        self.name = f"endpoint:{endpoint.name}"
        self.interval = endpoint.poll_interval
        self.retry_backoff = endpoint.poll_interval  # a poll only fails on a bug: no fast retries
        self.currency = config.pricing.currency
        self.mapping = endpoint.custom if endpoint.preset == "custom" else PRESETS[endpoint.preset]
        self.hourly_cost = self._hourly_cost(endpoint, pricer)
        self.session = requests.Session()
        self.session.trust_env = False  # endpoints are reached directly, never through a proxy
        if endpoint.ca_bundle is not None:
            self.session.verify = str(endpoint.ca_bundle)  # certificates are always verified
        self.probes = {outcome: 0 for outcome in PROBE_OUTCOMES}
        self.probe_buckets = [0] * (len(PROBE_BUCKETS) + 1)
        self.probe_sum = 0.0
        self.probe_up: bool | None = None
        self.scrapes = {outcome: 0 for outcome in PROBE_OUTCOMES}
        self.metrics_up: bool | None = None
        self.traffic = Traffic()
        body = None
        if endpoint.probe is not None and endpoint.probe.body_file is not None:
            body = endpoint.probe.body_file.read_bytes()
        elif endpoint.probe is not None and endpoint.probe.body is not None:
            body = json.dumps(endpoint.probe.body).encode()
        self.probe_body = body

    @staticmethod
    def _hourly_cost(endpoint: EndpointConfig, pricer: Pricer | None) -> float | None:
        if endpoint.hourly_cost is not None:
            return endpoint.hourly_cost * endpoint.replicas
        if endpoint.instance_type is not None and pricer is not None:
            found = pricer.price_of(endpoint.instance_type)
            if found is None:
                from mlops_kpi_exporter.config import ConfigError

                raise ConfigError(
                    f"endpoints[{endpoint.name}].instance_type: {endpoint.instance_type!r} is neither in "
                    "pricing.instances nor in the catalog"
                )
            return found[0] * endpoint.replicas
        return None

    def _headers(self) -> dict[str, str]:
        import os

        probe = self.endpoint.probe
        assert probe is not None
        headers = dict(probe.headers)
        # The config refused unset variables; one that vanished since is left out, never sent empty.
        headers.update({h: os.environ[var] for h, var in probe.headers_env.items() if os.environ.get(var)})
        if self.probe_body is not None:
            headers.setdefault("Content-Type", "application/json")
        return headers

    def check(self) -> str:
        """One poll; unlike a scheduled poll, a failed probe or metrics read fails the check."""
        _, summary = self.poll()
        if self.probe_up is False or self.metrics_up is False:
            raise RuntimeError(f"{redact_uri(self.endpoint.url)}: {summary}")
        return f"{redact_uri(self.endpoint.url)}: {summary}"

    def poll(self) -> tuple[list[Metric], str]:
        parts = []
        if self.endpoint.probe is not None:
            outcome, seconds = self._probe()
            parts.append(f"probe {outcome} in {seconds * 1000:.0f} ms")
        if self.endpoint.metrics_url is not None:
            parts.append(f"metrics {self._scrape()}")
        return self.families(), "; ".join(parts)

    def _probe(self) -> tuple[str, float]:
        probe = self.endpoint.probe
        assert probe is not None
        started = time.monotonic()
        try:
            response = self.session.request(
                probe.method, self.endpoint.url + probe.path, data=self.probe_body, headers=self._headers(),
                timeout=(probe.timeout, probe.timeout), stream=True, allow_redirects=False,
            )
            with response:
                body = _read_limited(response, MAX_PROBE_BODY)
            if response.status_code != probe.expect_status:
                outcome = "http_error"
            elif probe.expect_body_contains is not None and probe.expect_body_contains.encode() not in body:
                outcome = "bad_response"
            else:
                outcome = "success"
        except (requests.RequestException, ValueError) as exc:
            outcome = classify(exc)
        seconds = time.monotonic() - started
        self.probes[outcome] += 1
        self.probe_buckets[sum(1 for b in PROBE_BUCKETS if b < seconds)] += 1
        self.probe_sum += seconds
        self.probe_up = outcome == "success"
        if outcome != "success":
            log.info("probe of %s: %s", self.endpoint.name, outcome)
        return outcome, seconds

    def _scrape(self) -> str:
        url = self.endpoint.metrics_url
        assert url is not None
        try:
            response = self.session.get(url, timeout=(self.endpoint.metrics_timeout, self.endpoint.metrics_timeout),
                                        stream=True, allow_redirects=False, headers={"Accept": "text/plain"})
            with response:
                body = _read_limited(response, MAX_METRICS_BODY)
            if response.status_code != 200:
                outcome = "http_error"
            elif "html" in response.headers.get("Content-Type", "").lower() or body.lstrip()[:1] == b"<":
                outcome = "bad_response"  # a login page or a proxy's error page, not metrics
            else:
                self.traffic.update(Samples(body.decode("utf-8", "replace"), self.endpoint.metrics_labels),
                                    self.mapping, time.monotonic())
                outcome = "success"
        except (requests.RequestException, ValueError, UnicodeError) as exc:
            outcome = classify(exc)
        self.scrapes[outcome] += 1
        self.metrics_up = outcome == "success"
        if outcome != "success":
            log.info("metrics of %s (%s): %s", self.endpoint.name, redact_uri(url), outcome)
        return outcome

    # -- metrics ---------------------------------------------------------------------------------
    def families(self) -> list[Metric]:
        name = self.endpoint.name
        out: list[Metric] = []
        if self.endpoint.probe is not None and self.probe_up is not None:
            up = GaugeMetricFamily("mlops_endpoint_up", "1 when the endpoint's last synthetic probe succeeded.",
                                   labels=["endpoint"])
            up.add_metric([name], 1 if self.probe_up else 0)
            probes = CounterMetricFamily("mlops_endpoint_probes", "Synthetic probes by outcome.",
                                         labels=["endpoint", "outcome"])
            for outcome, n in self.probes.items():
                probes.add_metric([name, outcome], n)
            duration = HistogramMetricFamily("mlops_endpoint_probe_duration_seconds",
                                             "Wall time of synthetic probes, whatever their outcome.", labels=["endpoint"])
            cumulative, running = [], 0
            for bound, n in zip((*PROBE_BUCKETS, math.inf), self.probe_buckets):
                running += n
                cumulative.append(("+Inf" if bound == math.inf else str(bound), running))
            duration.add_metric([name], cumulative, self.probe_sum)
            out += [up, probes, duration]
        if self.hourly_cost is not None:
            cost = GaugeMetricFamily("mlops_endpoint_hourly_cost",
                                     f"Hourly cost in {self.currency} of the endpoint's machines (all replicas).",
                                     labels=["endpoint"])
            cost.add_metric([name], self.hourly_cost)
            out.append(cost)
        if self.endpoint.capacity_rps is not None:
            capacity = GaugeMetricFamily("mlops_endpoint_capacity_rps", "Requests per second the deployment is sized for.",
                                         labels=["endpoint"])
            capacity.add_metric([name], self.endpoint.capacity_rps)
            out.append(capacity)
        if self.endpoint.metrics_url is not None and self.metrics_up is not None:
            out += self._traffic_families(name)
        return out

    def _traffic_families(self, name: str) -> list[Metric]:
        up = GaugeMetricFamily("mlops_endpoint_metrics_up", "1 when the server's own metrics were read at the last poll.",
                               labels=["endpoint"])
        up.add_metric([name], 1 if self.metrics_up else 0)
        scrapes = CounterMetricFamily("mlops_endpoint_metrics_scrapes", "Reads of the server's own metrics by outcome.",
                                      labels=["endpoint", "outcome"])
        for outcome, n in self.scrapes.items():
            scrapes.add_metric([name, outcome], n)
        out: list[Metric] = [up, scrapes]
        if not self.metrics_up:
            return out  # no stale traffic figures presented as fresh
        t = self.traffic
        note = "Re-counted from the server's own metrics; upstream restarts do not reset it."
        reqs = CounterMetricFamily("mlops_endpoint_requests", f"Requests served. {note}", labels=["endpoint"])
        reqs.add_metric([name], t.requests.total)
        out.append(reqs)
        if t.has_errors:
            errs = CounterMetricFamily("mlops_endpoint_errors", f"Requests that failed (server errors). {note}",
                                       labels=["endpoint"])
            errs.add_metric([name], t.errors.total)
            out.append(errs)
        if t.has_latency:
            latency = HistogramMetricFamily(
                "mlops_endpoint_request_duration_seconds",
                f"Request latency as the server reports it; servers that give only a sum and a count have just "
                f"the +Inf bucket (use _sum/_count for the mean). {note}", labels=["endpoint"])
            buckets = [(_bound(b), tracker.total) for b, tracker in sorted(t.buckets.items()) if b != math.inf]
            buckets.append(("+Inf", t.buckets[math.inf].total if math.inf in t.buckets else t.latency_count.total))
            latency.add_metric([name], buckets, t.latency_sum.total)
            out.append(latency)
        utilization = GaugeMetricFamily(
            "mlops_endpoint_utilization_ratio",
            "Utilization 0-1 by resource: what the server reports (gpu, cpu, memory, kv_cache), and capacity = "
            "throughput over the last poll / capacity_rps.", labels=["endpoint", "resource"])
        values = dict(t.utilization)
        if self.endpoint.capacity_rps and t.throughput is not None:
            values["capacity"] = t.throughput / self.endpoint.capacity_rps
        for resource, value in sorted(values.items()):
            utilization.add_metric([name, resource], value)
        out.append(utilization)
        return out


def _bound(bound: float) -> str:
    return str(int(bound)) if bound == int(bound) else repr(bound)
