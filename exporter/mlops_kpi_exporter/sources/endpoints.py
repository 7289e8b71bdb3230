"""Model-serving endpoints: synthetic probes, the servers' own metrics, and the cost of serving.

Each endpoint is a source of its own, polled on its own interval with its own timeouts, so a slow
endpoint never delays another or the MLflow poll. A probe is a real request; its outcome is data
(`mlops_endpoint_up`, `mlops_endpoint_probes_total{outcome}`), not a source failure.

The server's own metrics are read and re-counted by `upstream`; `metrics.serving` renders them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests
from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter.config import Config, EndpointConfig, redact_uri
from mlops_kpi_exporter.metrics import serving
from mlops_kpi_exporter.pricing import Pricer
from mlops_kpi_exporter.sources.upstream import PRESETS, Samples, Traffic, fits

log = logging.getLogger(__name__)

PROBE_OUTCOMES = ("success", "http_error", "timeout", "connection_error", "bad_response")
# a metrics page read but with none of the preset's request or latency series: the wrong preset, or
# a metric renamed upstream; never shown as an idle service
SCRAPE_OUTCOMES = (*PROBE_OUTCOMES, "unmatched")
REDIRECTS = (301, 302, 303, 307, 308)
PROBE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_PROBE_BODY = 1 << 20  # bytes read from a probe reply
MAX_METRICS_BODY = 20 << 20  # bytes read from a metrics page


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


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port or {"http": 80, "https": 443}.get(parts.scheme)


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
        self.scrapes = {outcome: 0 for outcome in SCRAPE_OUTCOMES}
        self.metrics_up: bool | None = None
        self.scrape_state = ""  # what the last read found, logged when it changes
        self.server_wide_told: tuple[str, ...] = ()
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
        return serving.families(self.readings()), "; ".join(parts)

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
        detail = ""
        try:
            response = self._get_metrics(url)
            with response:
                body = _read_limited(response, MAX_METRICS_BODY)
            if response.status_code != 200:
                outcome, detail = "http_error", f"HTTP {response.status_code} from {redact_uri(response.url)}"
            elif "html" in response.headers.get("Content-Type", "").lower() or body.lstrip()[:1] == b"<":
                outcome, detail = "bad_response", "an HTML page, not metrics"  # a login page, a proxy's error page
            else:
                samples = Samples(body.decode("utf-8", "replace"), self.endpoint.metrics_labels)
                if fits(samples, self.mapping):
                    self.traffic.update(samples, self.mapping, time.monotonic())
                    outcome = "success"
                else:
                    outcome = "unmatched"
                    detail = (f"none of the {self.endpoint.preset} preset's series ("
                              f"{', '.join(self.mapping.request_series()[:4])}) is on the page: the wrong preset, or "
                              "a metric renamed upstream")
        except (requests.RequestException, ValueError, UnicodeError) as exc:
            outcome, detail = classify(exc), f"{type(exc).__name__}"
        self.scrapes[outcome] += 1
        self.metrics_up = outcome == "success"
        self._tell(outcome, detail, url)
        return outcome if not detail else f"{outcome} ({detail})"

    def _get_metrics(self, url: str) -> requests.Response:
        """GET the page as written; one redirect to the same origin is followed (a mount that answers
        /metrics with 307 to /metrics/), never one to another host."""
        timeout = (self.endpoint.metrics_timeout, self.endpoint.metrics_timeout)
        response = self.session.get(url, timeout=timeout, stream=True, allow_redirects=False,
                                    headers={"Accept": "text/plain"})
        target = response.headers.get("Location") if response.status_code in REDIRECTS else None
        if target:
            target = urljoin(url, target)
            if _origin(target) == _origin(url):
                response.close()
                response = self.session.get(target, timeout=timeout, stream=True, allow_redirects=False,
                                            headers={"Accept": "text/plain"})
        return response

    def _tell(self, outcome: str, detail: str, url: str) -> None:
        """A read that fails is logged when what it finds changes, naming why and the URL (never each poll)."""
        state = f"{outcome} {detail}"
        if state != self.scrape_state and (outcome != "success" or self.scrape_state):
            if outcome == "success":
                log.info("metrics of %s (%s) are read again", self.endpoint.name, redact_uri(url))
            else:
                log.warning("metrics of %s (%s): %s%s", self.endpoint.name, redact_uri(url), outcome,
                            f": {detail}" if detail else "")
        self.scrape_state = state if outcome != "success" else ""
        if outcome == "success" and self.traffic.server_wide != self.server_wide_told:
            self.server_wide_told = self.traffic.server_wide
            if self.traffic.server_wide:
                log.warning("metrics of %s: %s carry no %s label, so they count every model of the server: not "
                            "shown as this endpoint's", self.endpoint.name, ", ".join(self.traffic.server_wide),
                            "/".join(self.endpoint.metrics_labels))

    def readings(self) -> EndpointReadings:
        endpoint = self.endpoint
        return EndpointReadings(
            name=endpoint.name, currency=self.currency,
            probe_up=self.probe_up if endpoint.probe is not None else None,
            probes=dict(self.probes), probe_bounds=PROBE_BUCKETS, probe_buckets=tuple(self.probe_buckets),
            probe_sum=self.probe_sum, hourly_cost=self.hourly_cost, capacity_rps=endpoint.capacity_rps,
            metrics_up=self.metrics_up if endpoint.metrics_url is not None else None,
            scrapes=dict(self.scrapes), traffic=self.traffic,
        )


@dataclass(frozen=True)
class EndpointReadings:
    """What one endpoint's poll hands the serving metrics; None: never probed (or read) yet."""

    name: str
    currency: str
    probe_up: bool | None
    probes: dict[str, int]
    probe_bounds: tuple[float, ...]
    probe_buckets: tuple[int, ...]
    probe_sum: float
    hourly_cost: float | None
    capacity_rps: float | None
    metrics_up: bool | None
    scrapes: dict[str, int]
    traffic: Traffic
