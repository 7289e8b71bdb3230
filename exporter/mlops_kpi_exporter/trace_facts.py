"""One MLflow trace reduced to the facts GenAI spend needs: its state, times, user and session, and its
LLM calls (model, disjoint token counts, MLflow's recorded cost), after checking its data.

Pure: no I/O and no MLflow client, so that the parsing is tested from hand-built trace infos and
spans. Data that cannot be counted raises BadData, whose reason the skip counter shows; the sync
(sources/traces.py) reads the traces, the books (genai_books.py) fold these facts.

Where the facts come from (MLflow 3.17): a trace's info carries its state, start (`request_time`),
latency (`execution_duration`), token usage (metadata `mlflow.trace.tokenUsage`, summed by MLflow
from its LLM spans), MLflow's recorded cost (`mlflow.trace.cost`, USD) and its user and session. It
does not name the model: only spans do (`mlflow.llm.model`, beside each call's
`mlflow.chat.tokenUsage` and `mlflow.llm.cost`), so the spans are reduced to one entry per LLM call.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from mlops_kpi_exporter.bad_data import BadData

# MLflow's keys (mlflow/tracing/constant.py: TraceMetadataKey, SpanAttributeKey, TokenUsageKey, CostKey).
TOKEN_USAGE, TRACE_COST = "mlflow.trace.tokenUsage", "mlflow.trace.cost"
TRACE_USER, TRACE_SESSION = "mlflow.trace.user", "mlflow.trace.session"
SPAN_USAGE, SPAN_COST, SPAN_MODEL = "mlflow.chat.tokenUsage", "mlflow.llm.cost", "mlflow.llm.model"
INPUT, OUTPUT, TOTAL = "input_tokens", "output_tokens", "total_tokens"
CACHE_READ, CACHE_CREATION = "cache_read_input_tokens", "cache_creation_input_tokens"

NANO = 1_000_000_000  # money is summed in nano-units of the currency, as the run figures
UNKNOWN = "unknown"  # the model of an LLM call that names none; a trace with no user or session
MAX_TOKENS = 10**12  # per LLM call: more is not a token count (and would overflow the exact sums)
MAX_COST = 1_000_000.0  # per LLM call, in USD: more is a unit mistake


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
            raise BadData(reason, f"not JSON: {str(raw)[:60]!r}") from None
    if not isinstance(raw, dict):
        raise BadData(reason, f"not a JSON object: {str(raw)[:60]!r}")
    return raw


def _tokens(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadData("invalid_token_usage", f"not a number of tokens: {str(value)[:40]!r}")
    if isinstance(value, float) and not value.is_integer():
        raise BadData("invalid_token_usage", f"not a whole number of tokens: {value!r}")
    if not 0 <= value <= MAX_TOKENS:
        raise BadData("invalid_token_usage", f"not a number of tokens from 0 to {MAX_TOKENS:g}: {value!r}")
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
        raise BadData("invalid_cost", f"not a number: {str(value)[:40]!r}")
    if not 0 <= value <= MAX_COST:  # NaN and infinities fail this too
        raise BadData("invalid_cost", f"not a cost from 0 to {MAX_COST:g}: {value!r}")
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
    """An ended trace's facts; raises BadData for data that cannot be counted. `spans` None:
    not read or unreadable: the trace's own token usage and cost count, under model `unknown`."""
    status = state_of(info)
    if status not in ("OK", "ERROR"):
        raise BadData("unknown_status", f"state {status!r}")
    request = info.request_time
    if isinstance(request, bool) or not isinstance(request, int) or request <= 0:
        raise BadData("invalid_time", f"request_time {request!r}")
    duration = info.execution_duration
    if duration is not None and (isinstance(duration, bool) or not isinstance(duration, int) or duration < 0):
        raise BadData("invalid_time", f"execution_duration {duration!r}")
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
