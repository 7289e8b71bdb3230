"""The traces source: GenAI spend (LLM tokens, cost, latency) from the MLflow 3 traces of the
watched experiments.

Where the figures come from (MLflow 3.17):
- A trace's info (no spans) carries its state, start (`request_time`), latency (`execution_duration`),
  token usage (metadata `mlflow.trace.tokenUsage`, summed by MLflow from its LLM spans), MLflow's
  recorded cost (`mlflow.trace.cost`, USD) and its user and session (`mlflow.trace.user`,
  `mlflow.trace.session`). It does not name the model: only spans do (`mlflow.llm.model`, beside
  each call's `mlflow.chat.tokenUsage` and `mlflow.llm.cost`), and the server's aggregation
  (`traces/metrics`) has no token figures per model (its SPANS view sums cost by model, its TRACES
  view tokens by trace name). So the spans of a trace that recorded tokens or a cost are read once,
  when it has ended, in batches (`traces/batchGet`), and reduced to one entry per LLM call.
- What is kept is sums per experiment (metrics/genai.py `ExperimentSpend`), never the traces: plus
  the traces still IN_PROGRESS and those that ended within the look-back window (`recent`), so that
  the next poll neither misses nor counts one twice.

Each poll reads only what can have changed: traces that ended since the last poll (less
`mlflow.watermark_overlap`), the traces IN_PROGRESS, and those we knew in progress that left that
state. Every `traces.resync_interval` the books are reconciled with MLflow (deleted traces, traces
written late): `incremental` recounts every experiment from scratch; `aggregate` asks the server's
aggregation per experiment (traces by state and their tokens, up to the look-back window) and
recounts only the experiments that differ; `auto` is `aggregate` when the server answers, else
`incremental`. A recount is built aside and swapped in whole.

A trace's cost is per LLM call: MLflow's recorded cost, else its tokens x the config's price of its
model, else the shipped catalog's (data/token_prices.yaml), else unpriced (tokens counted, no cost).
"""

from __future__ import annotations

import bisect
import json
import logging
import re
import time
import zoneinfo
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from importlib import resources
from typing import Any

import yaml
from mlflow.exceptions import MlflowException
from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter.config import Config, TracesConfig
from mlops_kpi_exporter.facts import GenaiFacts
from mlops_kpi_exporter.metrics import OTHER
from mlops_kpi_exporter.metrics.genai import NANO, ExperimentSpend, GenaiView, families
from mlops_kpi_exporter.mlflow_client import MlflowConnection, MlflowReader, is_data_error, paged
from mlops_kpi_exporter.sources.run_sync import RunSync

log = logging.getLogger(__name__)

# MLflow's keys (mlflow/tracing/constant.py: TraceMetadataKey, SpanAttributeKey, TokenUsageKey, CostKey).
TOKEN_USAGE, TRACE_COST = "mlflow.trace.tokenUsage", "mlflow.trace.cost"
TRACE_USER, TRACE_SESSION = "mlflow.trace.user", "mlflow.trace.session"
SPAN_USAGE, SPAN_COST, SPAN_MODEL = "mlflow.chat.tokenUsage", "mlflow.llm.cost", "mlflow.llm.model"
SPANS_LOCATION, TRACKING_STORE = "mlflow.trace.spansLocation", "TRACKING_STORE"
INPUT, OUTPUT, TOTAL = "input_tokens", "output_tokens", "total_tokens"
CACHE_READ, CACHE_CREATION = "cache_read_input_tokens", "cache_creation_input_tokens"

UNKNOWN = "unknown"  # the model of an LLM call that names none; a trace with no user or session
SEARCH_PAGE = 500  # the largest page search_traces gives
SPAN_BATCH = 50  # traces per traces/batchGet request (their ids go in the query string)
EXPERIMENT_CHUNK = 100  # experiment ids per search_traces call
MAX_TOKENS = 10**12  # per LLM call: more is not a token count (and would overflow the exact sums)
MAX_COST = 1_000_000.0  # per LLM call, in USD: more is a unit mistake
MAX_LABEL = 120  # characters of a model, user or session name kept in a label
KEEP_FACTOR = 50  # distinct models (users, sessions) kept per experiment: this x the label limit
LOGGED_SKIPS = 10_000  # trace ids remembered so that a skip is logged once, not at every recount
_PROVIDER = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*:(?!/)(.+)$")  # "openai:gpt-4o" (a provider prefix)


class BadTraceData(ValueError):
    """A trace whose data cannot be counted; `reason` becomes the skip counter's label."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason = reason


# -- one trace, reduced ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Usage:
    """Tokens of one LLM call, disjoint: `input` excludes the cached ones (MLflow's input_tokens
    includes cache reads and writes, as its own pricing assumes)."""

    input: int = 0
    output: int = 0
    cached_input: int = 0  # read from the prompt cache
    cache_creation_input: int = 0  # written to the prompt cache
    recorded: frozenset[str] = frozenset()  # the cache types the call recorded (shown even when 0)

    @property
    def total(self) -> int:
        return self.input + self.output + self.cached_input + self.cache_creation_input

    def items(self) -> Iterator[tuple[str, int]]:
        yield "input", self.input
        yield "output", self.output
        for kind in ("cached_input", "cache_creation_input"):
            if kind in self.recorded:
                yield kind, getattr(self, kind)


@dataclass(frozen=True)
class Unit:
    """One LLM call (or a span that sums several, as rollup autologgers write them)."""

    model: str
    usage: Usage
    mlflow_cost_nano: int | None = None  # MLflow's recorded cost, in nano-USD


@dataclass(frozen=True)
class TraceFacts:
    trace_id: str
    experiment_id: str
    status: str  # OK | ERROR
    request_ms: int
    duration_ms: int | None
    user: str
    session: str
    units: tuple[Unit, ...]


def _decoded(raw: Any, reason: str) -> dict[str, Any]:
    if isinstance(raw, (str, bytes)):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise BadTraceData(reason, f"not JSON: {str(raw)[:60]!r}") from None
    if not isinstance(raw, dict):
        raise BadTraceData(reason, f"not a JSON object: {str(raw)[:60]!r}")
    return raw


def _tokens(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadTraceData("invalid_token_usage", f"not a number of tokens: {str(value)[:40]!r}")
    if isinstance(value, float) and not value.is_integer():
        raise BadTraceData("invalid_token_usage", f"not a whole number of tokens: {value!r}")
    if not 0 <= value <= MAX_TOKENS:
        raise BadTraceData("invalid_token_usage", f"not a number of tokens from 0 to {MAX_TOKENS:g}: {value!r}")
    return int(value)


def parse_usage(raw: Any) -> Usage:
    """MLflow's token usage (a span's `mlflow.chat.tokenUsage` or the trace's metadata), as disjoint counts.

    MLflow's `input_tokens` includes the cache reads and writes (MLflow's cost_per_token prices
    `input - cache_read - cache_creation` at the input rate); the rest is clamped at 0, as MLflow does,
    for integrations that report input without the cached part."""
    data = _decoded(raw, "invalid_token_usage")
    inp, out = _tokens(data.get(INPUT, 0)), _tokens(data.get(OUTPUT, 0))
    recorded, read, created = set(), 0, 0
    if data.get(CACHE_READ) is not None:
        read = _tokens(data[CACHE_READ])
        recorded.add("cached_input")
    if data.get(CACHE_CREATION) is not None:
        created = _tokens(data[CACHE_CREATION])
        recorded.add("cache_creation_input")
    return Usage(max(inp - read - created, 0), out, read, created, frozenset(recorded))


def _money(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadTraceData("invalid_cost", f"not a number: {str(value)[:40]!r}")
    if not 0 <= value <= MAX_COST:  # NaN and infinities fail this too
        raise BadTraceData("invalid_cost", f"not a cost from 0 to {MAX_COST:g}: {value!r}")
    return Decimal(repr(float(value)))


def parse_cost(raw: Any) -> int | None:
    """MLflow's recorded cost (`mlflow.llm.cost` or `mlflow.trace.cost`, USD) in nano-USD; None when absent."""
    if raw is None:
        return None
    data = _decoded(raw, "invalid_cost")
    if data.get("total_cost") is not None:
        total = _money(data["total_cost"])
    elif data.get("input_cost") is not None or data.get("output_cost") is not None:
        total = _money(data.get("input_cost") or 0) + _money(data.get("output_cost") or 0)
    else:
        return None
    return int((total * NANO).to_integral_value(ROUND_HALF_EVEN))


def _attributes(span: Any) -> Mapping[str, Any]:
    attrs = getattr(span, "attributes", None)
    return attrs if isinstance(attrs, Mapping) else {}


def _model(attrs: Mapping[str, Any]) -> str | None:
    value = attrs.get(SPAN_MODEL)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def units_from_spans(spans: Sequence[Any]) -> list[Unit]:
    """A trace's LLM calls, as MLflow sums its token usage: a span with usage counts, its descendants'
    usage does not (rollup autologgers set the sum on a parent and the parts on its children).

    A counted span's model is its own `mlflow.llm.model`, else the one model its descendants name,
    else `unknown`; its cost is its own `mlflow.llm.cost`, else the sum of its descendants' (the
    top-most ones). A span with a cost and no usage anywhere in or around it counts as a call of no
    tokens."""
    by_id = {getattr(s, "span_id", None): s for s in spans}
    children: dict[Any, list[Any]] = defaultdict(list)
    roots = []
    for span in spans:
        parent = getattr(span, "parent_id", None)
        if parent is not None and parent in by_id and parent != span.span_id:
            children[parent].append(span)
        else:
            roots.append(span)
    order, seen, stack = [], set(), list(roots)
    while stack:  # iterative: deep agent traces must not hit Python's recursion limit
        span = stack.pop()
        if id(span) in seen:
            continue
        seen.add(id(span))
        order.append(span)
        stack.extend(children[span.span_id])
    own_cost = {id(s): parse_cost(_attributes(s).get(SPAN_COST)) for s in order}
    below_models: dict[int, set[str]] = {}
    below_usage: dict[int, bool] = {}
    below_cost: dict[int, int | None] = {}
    for span in reversed(order):  # children before their parents
        models: set[str] = set()
        usage, cost = False, None
        for child in children[span.span_id]:
            if id(child) not in below_models:
                continue  # a cycle's back edge
            attrs = _attributes(child)
            if (model := _model(attrs)) is not None:
                models.add(model)
            models |= below_models[id(child)]
            usage = usage or attrs.get(SPAN_USAGE) is not None or below_usage[id(child)]
            part = own_cost[id(child)] if own_cost[id(child)] is not None else below_cost[id(child)]
            if part is not None:
                cost = (cost or 0) + part
        below_models[id(span)], below_usage[id(span)], below_cost[id(span)] = models, usage, cost
    units: list[Unit] = []
    walk = [(span, False) for span in roots]
    while walk:
        span, covered = walk.pop()
        if id(span) not in below_models:
            continue
        attrs = _attributes(span)
        below = below_models[id(span)]
        model = _model(attrs) or (next(iter(below)) if len(below) == 1 else UNKNOWN)
        if not covered and attrs.get(SPAN_USAGE) is not None:
            cost = own_cost[id(span)] if own_cost[id(span)] is not None else below_cost[id(span)]
            units.append(Unit(model, parse_usage(attrs[SPAN_USAGE]), cost))
            covered = True
        elif not covered and own_cost[id(span)] is not None and not below_usage[id(span)]:
            units.append(Unit(model, Usage(), own_cost[id(span)]))
            covered = True
        walk.extend((child, covered) for child in children[span.span_id])
    return units


@dataclass(frozen=True)
class SpanLite:
    """The three things read of a span: its id, its parent's, its attributes (decoded)."""

    span_id: str
    parent_id: str | None
    attributes: Mapping[str, Any]

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> SpanLite:
        """A span of a traces/batchGet reply: OTLP JSON, attributes as AnyValue."""
        attrs = {str(a.get("key")): _any_value(a.get("value")) for a in raw.get("attributes") or []
                 if isinstance(a, Mapping)}
        return cls(str(raw.get("span_id") or ""), raw.get("parent_span_id") or None, attrs)


UNDECODABLE = "<undecodable attribute>"  # parses as no JSON: usage or cost holding it is a counted skip


def _any_value(value: Any) -> Any:
    """An OTLP AnyValue from JSON, as MLflow decodes it (tracing/utils/otlp.py _decode_otel_proto_anyvalue)."""
    if not isinstance(value, Mapping) or not value:
        return None
    try:
        if "array_value" in value:
            return [_any_value(v) for v in (value["array_value"] or {}).get("values") or []]
        if "kvlist_value" in value:
            return {str(kv.get("key")): _any_value(kv.get("value"))
                    for kv in (value["kvlist_value"] or {}).get("values") or []}
        if "int_value" in value:
            return int(value["int_value"])  # int64: a JSON string or a number
        if "double_value" in value:
            return float(value["double_value"])  # may be "NaN" or "Infinity"
        if "bool_value" in value:
            return bool(value["bool_value"])
        if "string_value" in value:
            return str(value["string_value"])
    except (TypeError, ValueError, AttributeError):
        return UNDECODABLE
    return None


def state_of(info: Any) -> str:
    state = getattr(info, "state", None)
    return str(getattr(state, "value", state) or "")


def end_ms(info: Any) -> int:
    return int(info.request_time or 0) + int(info.execution_duration or 0)


def needs_spans(info: Any) -> bool:
    """Only a trace that recorded tokens or a cost has LLM calls to attribute to a model."""
    meta = info.trace_metadata or {}
    return TOKEN_USAGE in meta or TRACE_COST in meta


def recorded_total_tokens(info: Any) -> int:
    """The trace's total_tokens as MLflow recorded it (what the server's aggregation sums), else 0."""
    try:
        value = json.loads((info.trace_metadata or {}).get(TOKEN_USAGE) or "{}").get(TOTAL, 0)
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
    except (ValueError, AttributeError, TypeError, OverflowError):
        return 0


def facts_of(info: Any, spans: Sequence[Any] | None) -> TraceFacts:
    """An ended trace's facts; raises BadTraceData for data that cannot be counted. `spans` None:
    not read or unreadable: the trace's own token usage and cost count, under model `unknown`."""
    status = state_of(info)
    if status not in ("OK", "ERROR"):
        raise BadTraceData("unknown_status", f"state {status!r}")
    request = info.request_time
    if isinstance(request, bool) or not isinstance(request, int) or request <= 0:
        raise BadTraceData("invalid_time", f"request_time {request!r}")
    duration = info.execution_duration
    if duration is not None and (isinstance(duration, bool) or not isinstance(duration, int) or duration < 0):
        raise BadTraceData("invalid_time", f"execution_duration {duration!r}")
    meta = info.trace_metadata or {}
    usage = parse_usage(meta[TOKEN_USAGE]) if meta.get(TOKEN_USAGE) is not None else None
    cost = parse_cost(meta.get(TRACE_COST))
    units = units_from_spans(spans) if spans else []
    if not units and (usage is not None or cost is not None):
        units = [Unit(UNKNOWN, usage or Usage(), cost)]
    return TraceFacts(
        trace_id=str(info.trace_id), experiment_id=str(info.experiment_id), status=status, request_ms=request,
        duration_ms=duration, user=str(meta.get(TRACE_USER) or ""), session=str(meta.get(TRACE_SESSION) or ""),
        units=tuple(units),
    )


# -- token prices ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenPrice:
    """Per million tokens, as exact decimals."""

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None

    @classmethod
    def of(cls, raw: Any) -> TokenPrice:
        get = raw.get if isinstance(raw, dict) else lambda key: getattr(raw, key, None)

        def dec(key: str) -> Decimal | None:
            value = get(key)
            return None if value is None else Decimal(str(value))

        return cls(dec("input") or Decimal(0), dec("output") or Decimal(0), dec("cached_input"), dec("cache_write"))

    def cost_nano(self, usage: Usage) -> int:
        """Exact: tokens x price per million, in nano-units (x 1e9 / 1e6 = x 1000), rounded once."""
        cached = self.input if self.cached_input is None else self.cached_input
        written = self.input if self.cache_write is None else self.cache_write
        total = (usage.input * self.input + usage.output * self.output + usage.cached_input * cached
                 + usage.cache_creation_input * written)
        return int((total * 1000).to_integral_value(ROUND_HALF_EVEN))


@dataclass(frozen=True)
class TokenCatalog:
    source: str
    as_of: str
    currency: str
    prices: Mapping[str, TokenPrice]  # model name or alias -> price


def load_token_catalog() -> TokenCatalog:
    """The catalog shipped in the package (data/token_prices.yaml)."""
    text = resources.files("mlops_kpi_exporter").joinpath("data/token_prices.yaml").read_text("utf-8")
    raw = yaml.safe_load(text)
    prices: dict[str, TokenPrice] = {}
    for name, entry in raw["models"].items():
        price = TokenPrice.of(entry)
        for alias in [name, *entry.get("aliases", [])]:
            if str(alias).lower() in {k.lower() for k in prices}:
                raise ValueError(f"token price catalog: {alias} is listed twice")
            prices[str(alias)] = price
    return TokenCatalog(str(raw["source"]), str(raw["as_of"]), str(raw["currency"]), prices)


def model_names(model: str) -> list[str]:
    """The names a model is looked up by, in order: as recorded, then without a provider prefix
    (`openai/gpt-4o`, `openai:/gpt-4o`, `models/gemini-2.5-pro`, `openai:gpt-4o` -> the part after it)."""
    names = [model]
    bare = model.rsplit("/", 1)[-1]
    if bare and bare != model:
        names.append(bare)
    match = _PROVIDER.match(bare)
    if match:
        names.append(match.group(1))
    return names


class TokenPricer:
    """Prices one LLM call. MLflow's recorded cost first (it is in USD: used when pricing.currency is
    USD); else traces.token_prices; else the shipped catalog (USD: used when pricing.currency is USD and
    traces.use_catalog); else unpriced. Names match exactly, then case-insensitively, then without a
    provider prefix; the config wins over the catalog at every step."""

    def __init__(self, traces: TracesConfig, currency: str, catalog: TokenCatalog | None = None):
        self.usd = currency == "USD"
        self.config = {name: TokenPrice.of(price) for name, price in traces.token_prices.items()}
        self.catalog: TokenCatalog | None = None
        if traces.use_catalog and self.usd:
            self.catalog = catalog or load_token_catalog()
            if self.catalog.currency != currency:
                self.catalog = None  # a catalog in another currency is never applied to this one
        self._tables = [("config", self.config, {k.lower(): v for k, v in self.config.items()})]
        if self.catalog is not None:
            prices = dict(self.catalog.prices)
            self._tables.append(("catalog", prices, {k.lower(): v for k, v in prices.items()}))

    def price_of(self, model: str) -> tuple[TokenPrice, str] | None:
        names = model_names(model)
        for source, exact, lower in self._tables:
            for name in names:
                if name in exact:
                    return exact[name], source
                if name.lower() in lower:
                    return lower[name.lower()], source
        return None

    def price(self, unit: Unit) -> tuple[int | None, str]:
        """(cost in nano-units of pricing.currency or None, price source)."""
        if unit.mlflow_cost_nano is not None and self.usd:
            return unit.mlflow_cost_nano, "mlflow"
        found = self.price_of(unit.model)
        if found is None:
            return None, "unpriced"
        return found[0].cost_nano(unit.usage), found[1]


# -- the books ------------------------------------------------------------------------------------
def _label(value: str) -> str:
    return value if len(value) <= MAX_LABEL else value[: MAX_LABEL - 3] + "..."


@dataclass(frozen=True)
class Rules:
    """What turns a trace's facts into sums, from the config."""

    pricer: TokenPricer
    timezone: str
    buckets: tuple[float, ...]  # seconds
    breakdown: str  # none | user | session
    keep_models: int  # distinct model names kept per experiment; later ones count as "other"
    keep_values: int  # distinct users or sessions kept per experiment

    @classmethod
    def of(cls, config: Config) -> Rules:
        cfg = config.traces
        return cls(TokenPricer(cfg, config.pricing.currency), config.runs.timezone, tuple(cfg.duration_buckets),
                   cfg.breakdown, KEEP_FACTOR * cfg.max_models, KEEP_FACTOR * cfg.max_breakdown_values)

    def month(self, ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).astimezone(zoneinfo.ZoneInfo(self.timezone)).strftime("%Y-%m")


def fold(spend: ExperimentSpend, facts: TraceFacts, rules: Rules) -> None:
    """Add one ended trace to its experiment's sums."""
    spend.traces[facts.status] += 1
    if facts.duration_ms is not None:
        if not spend.duration_buckets:
            spend.duration_buckets = [0] * (len(rules.buckets) + 1)
        spend.duration_buckets[bisect.bisect_left(rules.buckets, facts.duration_ms / 1000)] += 1
        spend.duration_sum_ms += facts.duration_ms
    month = rules.month(facts.request_ms)
    known_models = {model for model, _ in spend.tokens} | set(spend.cost)
    for unit in facts.units:
        model = _label(unit.model)
        if model not in known_models and len(known_models) >= rules.keep_models:
            model = OTHER
        known_models.add(model)
        for kind, n in unit.usage.items():
            spend.tokens[(model, kind)] += n
        nano, source = rules.pricer.price(unit)
        if unit.usage.total or nano:
            spend.priced_tokens[(model, source)] += unit.usage.total
        spend.cost[model] += nano or 0
        if nano:
            spend.month_cost[month] += nano
            if rules.breakdown != "none":
                value = _label((facts.user if rules.breakdown == "user" else facts.session) or UNKNOWN)
                if value not in spend.breakdown_cost and len(spend.breakdown_cost) >= rules.keep_values:
                    value = OTHER
                spend.breakdown_cost[value] += nano


# -- reading MLflow -------------------------------------------------------------------------------
def is_unsupported(exc: BaseException) -> bool:
    """The server has no such API (an older MLflow): a state to report, not an error to retry."""
    code = getattr(exc, "error_code", "")
    return code in ("ENDPOINT_NOT_FOUND", "NOT_IMPLEMENTED") or type(exc).__name__ == "MlflowNotImplementedException" \
        or isinstance(exc, NotImplementedError)


def _is_gone(exc: BaseException) -> bool:
    """A trace whose spans cannot be loaded (missing or corrupted data, deleted meanwhile)."""
    return getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "BAD_REQUEST",
                                              "INVALID_PARAMETER_VALUE")


@dataclass(frozen=True)
class Recent:
    """A trace counted (or skipped) that ended within the look-back window."""

    experiment_id: str
    end_ms: int
    request_ms: int
    state: str
    total_tokens: int


@dataclass
class PollReport:
    mode: str  # aggregate | incremental: how resyncs reconcile
    first: bool  # the first poll: everything read
    new_traces: int  # ended traces counted (or skipped) this poll
    traces: int  # ended traces counted in the books
    in_progress: int
    skipped: int
    experiments: int
    span_reads: int  # traces whose spans were read
    checked: int = 0  # experiments checked against the server's aggregation
    recounted: int = 0  # experiments recounted from scratch
    resync: bool = False

    def summary(self) -> str:
        head = "first poll, every trace read" if self.first else f"{self.new_traces} new traces"
        text = (f"{self.mode}: {head}; {self.traces} traces ({self.in_progress} in progress, {self.skipped} "
                f"skipped) in {self.experiments} experiments; spans of {self.span_reads} traces read")
        if self.resync and not self.first:
            what = f"{self.checked} experiments checked against the server, " if self.mode == "aggregate" else ""
            text += f"; resync: {what}{self.recounted} recounted"
        elif self.recounted and not self.first:
            text += f"; {self.recounted} new experiments read"
        return text


@dataclass
class _Read:
    """A recount built aside, swapped in whole when complete."""

    spend: dict[str, ExperimentSpend]
    in_progress: dict[str, tuple[str, int]] = field(default_factory=dict)
    recent: dict[str, Recent] = field(default_factory=dict)
    counted: int = 0
    span_reads: int = 0


class TraceSource(MlflowReader):
    name = "traces"

    def __init__(self, config: Config, mlflow: MlflowConnection, clock=time.time):
        super().__init__(config, mlflow)
        self.cfg = config.traces
        self.config = config
        self.interval = self.cfg.poll_interval
        self.overlap_ms = int(config.mlflow.watermark_overlap * 1000)
        self.clock = clock
        self.rules = Rules.of(config)
        self.watch = RunSync(config, mlflow, rules=None)  # type: ignore[arg-type] - only its experiment matching
        self.spend: dict[str, ExperimentSpend] | None = None
        self.experiments: dict[str, str] = {}
        self.created: dict[str, Any] = {}
        self.in_progress: dict[str, tuple[str, int]] = {}  # trace id -> (experiment id, request ms)
        self.recent: dict[str, Recent] = {}
        self.watermark_ms: int | None = None
        self.last_resync: float | None = None
        self.aggregation: bool | None = None  # the server answers traces/metrics (None: not asked yet)
        self.unsupported: str = ""  # why the server has no traces API, once seen
        self._logged: dict[str, None] = {}
        self.last_report: PollReport | None = None
        self._facts: GenaiFacts | None = None

    # -- the poller's interface --------------------------------------------------------------------
    def check(self) -> str:
        experiments = self._matching()
        try:
            if experiments:
                self.client.search_traces(locations=sorted(experiments)[:1], max_results=1, include_spans=False)
        except MlflowException as exc:
            if is_unsupported(exc):
                return "this MLflow server has no traces API: nothing to count"
            raise
        mode = self._mode(list(experiments))
        return f"traces API answers; {len(experiments)} watched experiments; mode {mode}"

    def poll(self) -> tuple[list[Metric], str]:
        now = self.clock()
        now_ms = int(now * 1000)
        experiments = self._matching()
        created = {e: self.watch._created.get(e) for e in experiments}  # the runs' matching records them
        try:
            report = self._sync(experiments, created, now, now_ms)
        except MlflowException as exc:
            if not is_unsupported(exc):
                raise
            if not self.unsupported:
                log.warning("MLflow at %s has no traces API (%s): the traces source counts nothing until it has",
                            self.mlflow.uri_for_humans, getattr(exc, "error_code", type(exc).__name__))
            self.unsupported = str(getattr(exc, "error_code", "") or type(exc).__name__)
            self.spend, self.watermark_ms = None, None
            self._facts = GenaiFacts(as_of_ms=now_ms, month_cost={})  # known: no GenAI spend to add
            return [], f"no traces API on this MLflow server ({self.unsupported}): nothing counted"
        self.unsupported = ""
        self.experiments, self.created, self.watermark_ms = experiments, created, now_ms
        floor = now_ms - self.overlap_ms
        self.recent = {tid: r for tid, r in self.recent.items() if r.end_ms >= floor}
        self.last_report = report
        self._facts = GenaiFacts(as_of_ms=now_ms, month_cost={
            experiments.get(e, e): dict(s.month_cost) for e, s in (self.spend or {}).items()})
        return families(self.view(now_ms)), report.summary()

    def facts(self) -> GenaiFacts | None:
        """What the derived stage joins (budgets over GenAI); None before a good poll."""
        return self._facts

    def view(self, now_ms: int) -> GenaiView:
        in_progress = Counter(exp for exp, _ in self.in_progress.values())
        return GenaiView(
            spend=self.spend or {}, experiments=self.experiments, in_progress=in_progress,
            currency=self.config.pricing.currency, month=self.rules.month(now_ms), timezone=self.rules.timezone,
            duration_buckets=self.rules.buckets, max_models=self.cfg.max_models, breakdown=self.cfg.breakdown,
            max_breakdown_values=self.cfg.max_breakdown_values, last_resync=self.last_resync,
        )

    # -- for other parts of the exporter ------------------------------------------------------------
    def spend_between(self, start_ms: int, end_ms: int) -> tuple[dict[str, str], dict[str, ExperimentSpend]]:
        """(experiment id -> name, experiment id -> spend) of the traces started in [start_ms, end_ms) of the
        watched experiments, read afresh (for `report`); the source's own books are left alone."""
        experiments = self._matching()
        window = f"trace.timestamp_ms >= {int(start_ms)} AND trace.timestamp_ms < {int(end_ms)}"
        return experiments, self._recount(sorted(experiments), int(end_ms), window).spend

    # -- syncing -----------------------------------------------------------------------------------
    def _matching(self) -> dict[str, str]:
        return self.watch.matching_experiments()

    def _sync(self, experiments: dict[str, str], created: dict[str, Any], now: float, now_ms: int) -> PollReport:
        first = self.spend is None or self.watermark_ms is None
        due = first or self.last_resync is None or now - self.last_resync >= self.cfg.resync_interval
        mode = self._mode(list(experiments)) if due else ("aggregate" if self.aggregation and self.cfg.mode != "incremental"
                                                           else "incremental")
        new_traces, span_reads, checked = 0, 0, 0
        if first:
            self.spend, self.in_progress, self.recent = {}, {}, {}
            recount = sorted(experiments)
        else:
            assert self.spend is not None
            gone = [e for e in self.spend if e not in experiments or created.get(e) != self.created.get(e)]
            self._forget(gone)
            known = sorted(e for e in experiments if e in self.spend)
            recount = sorted(e for e in experiments if e not in self.spend)  # newly watched (or replaced)
            if due and mode == "incremental":
                recount = sorted(experiments)  # the resync recounts all: no need to read the changes first
            else:
                new_traces, span_reads = self._incremental(known, now_ms)
                if due:
                    checked = len(known)
                    recount = sorted(set(recount) | self._differ(known, now_ms))
        read = self._recount(recount, now_ms) if recount else None
        if read is not None:
            self._forget(recount)
            assert self.spend is not None
            self.spend.update(read.spend)
            self.in_progress.update(read.in_progress)
            self.recent.update(read.recent)
            span_reads += read.span_reads
            if first:
                new_traces = read.counted
        if due:
            self.last_resync = now
        assert self.spend is not None
        return PollReport(
            mode=mode, first=first, new_traces=new_traces,
            traces=sum(sum(s.traces.values()) for s in self.spend.values()), in_progress=len(self.in_progress),
            skipped=sum(sum(s.skipped.values()) for s in self.spend.values()), experiments=len(experiments),
            span_reads=span_reads, checked=checked, recounted=len(recount) if not first else 0, resync=due,
        )

    def _forget(self, experiment_ids: Iterable[str]) -> None:
        ids = set(experiment_ids)
        if not ids:
            return
        for exp_id in ids:
            (self.spend or {}).pop(exp_id, None)
        self.in_progress = {t: v for t, v in self.in_progress.items() if v[0] not in ids}
        self.recent = {t: r for t, r in self.recent.items() if r.experiment_id not in ids}

    def _mode(self, experiment_ids: list[str]) -> str:
        """aggregate or incremental, as configured; auto asks the server once whether it aggregates."""
        if self.cfg.mode == "incremental":
            return "incremental"
        if self.aggregation is None and experiment_ids:
            try:
                self._count_by_state(experiment_ids[0], None)
                self.aggregation = True
            except MlflowException as exc:
                if not is_unsupported(exc):
                    raise
                self.aggregation = False
                level = logging.WARNING if self.cfg.mode == "aggregate" else logging.INFO
                log.log(level, "MLflow at %s does not aggregate traces (traces/metrics: %s): resyncs recount "
                        "every experiment (traces.mode incremental)", self.mlflow.uri_for_humans,
                        getattr(exc, "error_code", type(exc).__name__))
        return "aggregate" if self.aggregation else "incremental"

    def _incremental(self, known: list[str], now_ms: int) -> tuple[int, int]:
        """Fold the traces that ended since the last poll; follow the ones in progress. Each folded
        trace is remembered in `recent` as it is folded, so a poll that fails half-way and is retried
        never counts one twice."""
        assert self.watermark_ms is not None and self.spend is not None
        if not known:
            return 0, 0
        since = self.watermark_ms - self.overlap_ms
        found: dict[str, Any] = {}
        for filter_string in (f"trace.end_time_ms >= {since}", "trace.status = 'IN_PROGRESS'"):
            for info in self._search(known, filter_string):
                found[info.trace_id] = info
        watched = set(known)
        missing = [t for t, (exp, _) in self.in_progress.items() if exp in watched and t not in found]
        if missing:
            fetched = {info.trace_id: info for info in self._trace_infos(missing)}
            for trace_id in missing:
                if trace_id in fetched:
                    found[trace_id] = fetched[trace_id]
                else:
                    self.in_progress.pop(trace_id, None)  # deleted while in progress
        read = _Read(spend=self.spend, in_progress=self.in_progress, recent=self.recent)
        pending: list[Any] = []
        for trace_id, info in found.items():
            if str(info.experiment_id) not in watched or trace_id in self.recent:
                continue
            self._take(info, read, pending)
            if len(pending) >= SEARCH_PAGE:
                self._fold_pending(pending, read, since)
        self._fold_pending(pending, read, since)
        return read.counted, read.span_reads

    def _recount(self, experiment_ids: list[str], now_ms: int, filter_string: str | None = None) -> _Read:
        """Every trace of the experiments (that the filter keeps), read afresh into books of their own."""
        read = _Read(spend={e: ExperimentSpend() for e in experiment_ids})
        seen: set[str] = set()  # pages may overlap when traces are written meanwhile: count each once
        pending: list[Any] = []
        remember_from = now_ms - self.overlap_ms  # what the next poll's look-back will find again
        for info in self._search(experiment_ids, filter_string):
            if info.trace_id in seen:
                continue
            seen.add(info.trace_id)
            self._take(info, read, pending)
            if len(pending) >= SEARCH_PAGE:
                self._fold_pending(pending, read, remember_from)
        self._fold_pending(pending, read, remember_from)
        return read

    def _take(self, info: Any, read: _Read, pending: list[Any]) -> None:
        """Sort one trace info: in progress (followed), or ended (folded with the next batch)."""
        exp_id = str(info.experiment_id)
        if exp_id not in read.spend:
            return
        if state_of(info) == "IN_PROGRESS":
            request = info.request_time if isinstance(info.request_time, int) else 0
            read.in_progress[info.trace_id] = (exp_id, request)
            return
        read.in_progress.pop(info.trace_id, None)
        pending.append(info)

    def _fold_pending(self, pending: list[Any], read: _Read, remember_from: int) -> None:
        """Read the spans of a batch of ended traces and fold them; each is remembered in `recent` (when
        it ended at or after `remember_from`) as it is folded, never before."""
        if not pending:
            return
        wanted = [info for info in pending if state_of(info) in ("OK", "ERROR") and needs_spans(info)]
        spans = self._spans(wanted)
        read.span_reads += len(wanted)
        for info in pending:
            exp_id = str(info.experiment_id)
            spend = read.spend[exp_id]
            state, tokens = state_of(info), recorded_total_tokens(info)
            try:
                fold(spend, facts_of(info, spans.get(info.trace_id)), self.rules)
                read.counted += 1
            except BadTraceData as exc:
                self._skip(spend, info, exc.reason, str(exc))
            except Exception as exc:  # noqa: BLE001 - one odd trace is skipped, never a failed poll
                if not is_data_error(exc):
                    raise
                self._skip(spend, info, "invalid_data", f"{type(exc).__name__}: {exc}")
            spend.seen[state] += 1
            spend.seen_tokens[state] += tokens
            request = info.request_time if isinstance(info.request_time, int) else 0
            if end_ms(info) >= remember_from:
                read.recent[info.trace_id] = Recent(exp_id, end_ms(info), request, state, tokens)
        pending.clear()

    def _skip(self, spend: ExperimentSpend, info: Any, reason: str, detail: str) -> None:
        spend.skipped[reason] += 1
        if info.trace_id not in self._logged:
            self._logged[info.trace_id] = None
            if len(self._logged) > LOGGED_SKIPS:
                self._logged.pop(next(iter(self._logged)))
            level = logging.WARNING if reason == "invalid_data" else logging.INFO
            log.log(level, "skipping trace %s of experiment %s: %s (%s)", info.trace_id, info.experiment_id, reason,
                    detail[:200])

    def _differ(self, known: list[str], now_ms: int) -> set[str]:
        """The experiments whose books differ from the server's aggregation, for traces started before
        the look-back window (the later ones may be written as we ask): by state, and their tokens."""
        cutoff = now_ms - self.overlap_ms
        late: dict[str, Counter[str]] = defaultdict(Counter)
        late_tokens: dict[str, Counter[str]] = defaultdict(Counter)
        for r in self.recent.values():
            if r.request_ms >= cutoff:
                late[r.experiment_id][r.state] += 1
                late_tokens[r.experiment_id][r.state] += r.total_tokens
        running: dict[str, Counter[str]] = defaultdict(Counter)
        for exp_id, request in self.in_progress.values():
            if request < cutoff:
                running[exp_id]["IN_PROGRESS"] += 1
        differ = set()
        assert self.spend is not None
        for exp_id in known:
            spend = self.spend[exp_id]
            mine = +(spend.seen - late[exp_id] + running[exp_id])
            theirs = +self._count_by_state(exp_id, cutoff - 1)
            mine_tokens = +(spend.seen_tokens - late_tokens[exp_id])
            theirs_tokens = Counter()
            for state in sorted(s for s in theirs if s != "IN_PROGRESS"):
                theirs_tokens[state] = self._tokens_of_state(exp_id, state, cutoff - 1)
            if mine != theirs or mine_tokens != +theirs_tokens:
                log.info("traces of experiment %s differ from the server's aggregation (%s, %s tokens; server %s, %s "
                         "tokens): recounting it", self.experiments.get(exp_id, exp_id), dict(mine),
                         dict(mine_tokens), dict(theirs), dict(theirs_tokens))
                differ.add(exp_id)
        return differ

    # -- MLflow calls ------------------------------------------------------------------------------
    @property
    def _store(self) -> Any:
        return self.client._tracing_client.store  # the REST store, or the SQL store of a sqlite:/// URI

    def _search(self, experiment_ids: Sequence[str], filter_string: str | None = None) -> Iterator[Any]:
        """Trace infos (no spans) of the experiments, oldest first, page by page."""
        ids = sorted(experiment_ids)
        for start in range(0, len(ids), EXPERIMENT_CHUNK):
            for trace in paged(self.client.search_traces, locations=ids[start : start + EXPERIMENT_CHUNK],
                               filter_string=filter_string, max_results=SEARCH_PAGE, include_spans=False,
                               order_by=["timestamp_ms ASC", "request_id ASC"]):
                yield trace.info

    def _trace_infos(self, trace_ids: list[str]) -> list[Any]:
        """Trace infos by id; the ones deleted are left out."""
        out = []
        for start in range(0, len(trace_ids), SPAN_BATCH):
            chunk = trace_ids[start : start + SPAN_BATCH]
            try:
                out += self._store.batch_get_trace_infos(chunk)
                continue
            except (AttributeError, MlflowException) as exc:
                if isinstance(exc, MlflowException) and not is_unsupported(exc):
                    raise
            for trace_id in chunk:  # servers before batchGetInfos: one by one
                try:
                    out.append(self.client._tracing_client.get_trace_info(trace_id))
                except MlflowException as exc:
                    if not _is_gone(exc):
                        raise
        return out

    def _spans(self, infos: list[Any]) -> dict[str, list[Any] | None]:
        """Trace id -> its spans; None for a trace whose spans cannot be loaded (its own totals count)."""
        out: dict[str, list[Any] | None] = {}
        in_store = [i.trace_id for i in infos if (i.tags or {}).get(SPANS_LOCATION) == TRACKING_STORE]
        stored = set(in_store)
        for start in range(0, len(in_store), SPAN_BATCH):
            out.update(self._batch_spans(in_store[start : start + SPAN_BATCH]))
        for info in infos:
            if info.trace_id in out or info.trace_id in stored:
                continue
            try:  # older clients wrote spans as an artifact: one request each
                out[info.trace_id] = list(self.client.get_trace(info.trace_id, display=False).data.spans)
            except MlflowException as exc:
                if not _is_gone(exc):
                    raise
                out[info.trace_id] = None
        return out

    def _batch_spans(self, trace_ids: list[str]) -> dict[str, list[Any]]:
        """The spans of traces kept in the tracking store, by trace id. From a server, the reply's JSON is
        read directly (the same request, auth, TLS and timeout as MLflow's client, without its pure-Python
        protobuf parse, which cost half of a full read); a local store (sqlite:///) is asked in-process."""
        store = self._store
        host_creds = getattr(store, "get_host_creds", None)
        if host_creds is None:
            return {t.info.trace_id: list(t.data.spans) for t in store.batch_get_traces(trace_ids)}
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        endpoint = "/api/3.0/mlflow/traces/batchGet"
        response = http_request(host_creds(), endpoint, "GET", params={"trace_ids": trace_ids})
        reply = verify_rest_response(response, endpoint).json()
        out: dict[str, list[Any]] = {}
        for trace in reply.get("traces") or [] if isinstance(reply, dict) else []:
            trace_id = (trace.get("trace_info") or {}).get("trace_id")
            if trace_id:
                out[str(trace_id)] = [SpanLite.of(span) for span in trace.get("spans") or [] if isinstance(span, dict)]
        return out

    def _metric(self, exp_id: str, metric: str, aggregation: str, dimensions: list[str] | None,
                filters: list[str] | None, end_ms: int | None) -> list[Any]:
        from mlflow.entities.trace_metrics import AggregationType, MetricAggregation, MetricViewType

        return list(self._store.query_trace_metrics(
            experiment_ids=[exp_id], view_type=MetricViewType.TRACES, metric_name=metric,
            aggregations=[MetricAggregation(AggregationType(aggregation))], dimensions=dimensions, filters=filters,
            start_time_ms=0 if end_ms is not None else None, end_time_ms=end_ms,
        ))

    def _count_by_state(self, exp_id: str, end_ms: int | None) -> Counter[str]:
        points = self._metric(exp_id, "trace_count", "COUNT", ["trace_status"], None, end_ms)
        return Counter({str(p.dimensions.get("trace_status")): int(p.values.get("COUNT") or 0) for p in points})

    def _tokens_of_state(self, exp_id: str, state: str, end_ms: int) -> int:
        points = self._metric(exp_id, "total_tokens", "SUM", None, [f"trace.status = '{state}'"], end_ms)
        return int(sum(p.values.get("SUM") or 0 for p in points))
