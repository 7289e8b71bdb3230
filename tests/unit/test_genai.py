"""GenAI spend from traces, the pure parts: token semantics, pricing rules, the LLM calls of a span
tree, bad data as counted skips, bounded labels, the config, and a server without the traces API."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from types import SimpleNamespace

import pytest

from conftest import render, samples, value
from mlops_kpi_exporter.config import ConfigError, config_from_dict
from mlops_kpi_exporter.metrics import OTHER
from mlops_kpi_exporter.bad_data import BadData
from mlops_kpi_exporter.genai_books import KEEP_FACTOR, ExperimentSpend, Rules, fold
from mlops_kpi_exporter.metrics.genai import GenaiView, families
from mlops_kpi_exporter.sources.traces import TraceSource
from mlops_kpi_exporter.token_pricing import TokenPricer, load_token_catalog, model_names
from mlops_kpi_exporter.trace_facts import Unit, Usage, facts_of, parse_cost, parse_usage, units_from_spans

NOW_MS = 1_794_744_000_000  # 2026-11-15 12:00 UTC


def config(**traces):
    return config_from_dict({"mlflow": {"tracking_uri": "http://127.0.0.1:1"}, "traces": traces})


def pricer(currency: str = "USD", **traces) -> TokenPricer:
    return TokenPricer(config(**traces).traces, currency)


def span(span_id, parent=None, model=None, usage=None, cost=None):
    attrs = {}
    if model is not None:
        attrs["mlflow.llm.model"] = model
    if usage is not None:
        attrs["mlflow.chat.tokenUsage"] = usage
    if cost is not None:
        attrs["mlflow.llm.cost"] = cost
    return SimpleNamespace(span_id=span_id, parent_id=parent, attributes=attrs)


def info(state="OK", metadata=None, request=NOW_MS - 60_000, duration=1500, trace_id="tr-1", exp="1"):
    return SimpleNamespace(trace_id=trace_id, experiment_id=exp, state=state, request_time=request,
                           execution_duration=duration, trace_metadata=metadata or {},
                           tags={"mlflow.trace.spansLocation": "TRACKING_STORE"})


# -- tokens ------------------------------------------------------------------------------------------
def test_cached_tokens_are_part_of_mlflow_input_and_counted_once():
    u = parse_usage({"input_tokens": 1000, "output_tokens": 50, "cache_read_input_tokens": 300,
                     "cache_creation_input_tokens": 200})
    assert (u.input, u.cached_input, u.cache_creation_input, u.output) == (500, 300, 200, 50)
    assert u.total == 1050  # input (cached ones included) + output, as MLflow's total_tokens
    assert dict(u.items()) == {"input": 500, "output": 50, "cached_input": 300, "cache_creation_input": 200}
    plain = parse_usage('{"input_tokens": 10, "output_tokens": 5}')  # metadata: a JSON string
    assert dict(plain.items()) == {"input": 10, "output": 5}  # cache types only where recorded
    # An integration that reports input without its cached part: clamped at 0, as MLflow's own pricing.
    assert parse_usage({"input_tokens": 100, "cache_read_input_tokens": 400}).input == 0


@pytest.mark.parametrize("raw", [
    "{not json", '["a list"]', {"input_tokens": -5}, {"input_tokens": "many"}, {"output_tokens": 1.5},
    {"input_tokens": True}, {"input_tokens": 10**13}, {"input_tokens": 1, "cache_read_input_tokens": -1},
])
def test_bad_token_usage_is_a_reason(raw):
    with pytest.raises(BadData) as err:
        parse_usage(raw)
    assert err.value.reason == "invalid_token_usage"


@pytest.mark.parametrize("raw", ["{", {"total_cost": "abc"}, {"total_cost": -1.0}, {"total_cost": float("nan")},
                                 {"total_cost": float("inf")}, {"input_cost": "x"}, {"total_cost": 1e9}])
def test_bad_cost_is_a_reason(raw):
    with pytest.raises(BadData) as err:
        parse_cost(raw)
    assert err.value.reason == "invalid_cost"


def test_cost_in_exact_nano_units():
    assert parse_cost('{"input_cost": 0.0022500000000000003, "output_cost": 0.005, "total_cost": 0.00725}') == 7_250_000
    assert parse_cost({"input_cost": 0.001, "output_cost": 0.002}) == 3_000_000  # no total: the parts
    assert parse_cost(None) is None and parse_cost({}) is None


# -- prices ------------------------------------------------------------------------------------------
def test_cached_tokens_priced_at_the_cached_rate_not_also_at_the_input_rate():
    p = pricer()
    gpt4o = Usage(input=800, output=500, cached_input=200, recorded=frozenset({"cached_input"}))
    cost, source = p.price(Unit("gpt-4o", gpt4o))
    # 800 x 2.50 + 200 x 1.25 + 500 x 10.00 per million = 0.00725 (not 1000 x 2.50 + 200 x 1.25 + ...)
    assert (cost, source) == (7_250_000, "catalog")
    written = Usage(input=500, output=100, cached_input=1000, cache_creation_input=500)
    assert p.price(Unit("claude-sonnet-4-5", written)) == (5_175_000, "catalog")  # 1500 + 300 + 1875 + 1500 micro


def test_config_beats_catalog_and_mlflow_cost_beats_both():
    p = pricer(token_prices={"GPT-4o": {"input": 1.0, "output": 2.0}})
    u = Usage(input=1_000_000, output=1_000_000, cached_input=1_000_000)
    assert p.price(Unit("gpt-4o", u)) == (4 * 10**9, "config")  # case-insensitive; no cached price: the input price
    assert p.price(Unit("gpt-4o", u, mlflow_cost_nano=123)) == (123, "mlflow")
    assert p.price(Unit("gpt-4o-mini", Usage(input=1_000_000))) == (150_000_000, "catalog")
    assert p.price(Unit("mystery", u)) == (None, "unpriced")


def test_model_names_match_without_a_provider_prefix():
    assert model_names("openai:/gpt-4o") == ["openai:/gpt-4o", "gpt-4o"]
    assert model_names("gateway:/gpt-4o-mini")[-1] == "gpt-4o-mini"
    assert model_names("openai:gpt-4o") == ["openai:gpt-4o", "gpt-4o"]
    assert model_names("anthropic.claude-3-sonnet-20240229-v1:0") == ["anthropic.claude-3-sonnet-20240229-v1:0"]
    p = pricer()
    for name in ("openai/gpt-4o", "openai:/gpt-4o", "OpenAI:GPT-4O", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5"):
        assert p.price_of(name) is not None, name
    assert p.price_of("ft:gpt-4o-mini-2024-07-18:org::abc") is None  # a fine-tune is priced differently


def test_another_currency_uses_only_the_config_prices():
    """MLflow's costs and the catalog are USD: in EUR they are not used, never converted."""
    p = pricer("EUR", token_prices={"my-model": {"input": 1.0, "output": 1.0}})
    assert p.catalog is None
    assert p.price(Unit("gpt-4o", Usage(input=10), mlflow_cost_nano=500)) == (None, "unpriced")
    assert p.price(Unit("my-model", Usage(input=1_000_000))) == (10**9, "config")
    assert pricer(use_catalog=False).price(Unit("gpt-4o", Usage(input=1))) == (None, "unpriced")


def test_the_catalog_says_where_its_prices_come_from():
    catalog = load_token_catalog()
    assert catalog.currency == "USD" and catalog.source and catalog.as_of
    assert catalog.prices["gpt-4o"].cached_input == Decimal("1.25")
    assert catalog.prices["claude-haiku-4-5"] is catalog.prices["claude-haiku-4-5-20251001"]  # an alias
    assert all(p.input >= 0 and p.output >= 0 for p in catalog.prices.values())


# -- the LLM calls of a trace -------------------------------------------------------------------------
def test_rollup_spans_count_once_and_name_their_model():
    spans = [
        span("root"),
        # a rollup parent (pydantic-ai, dspy): the sum on the parent, the parts on its children
        span("agent", "root", usage={"input_tokens": 30, "output_tokens": 3}),
        span("call1", "agent", model="gpt-4o", usage={"input_tokens": 10, "output_tokens": 1}, cost={"total_cost": 0.1}),
        span("call2", "agent", model="gpt-4o", usage={"input_tokens": 20, "output_tokens": 2}, cost={"total_cost": 0.2}),
        span("other", "root", model="claude-haiku-4-5", usage={"input_tokens": 5, "output_tokens": 5}),
        span("mixed", "root", usage={"input_tokens": 7, "output_tokens": 0}),
        span("m1", "mixed", model="a"), span("m2", "mixed", model="b"),
        span("billed", "root", cost={"total_cost": 0.5}),  # a cost with no tokens anywhere near
    ]
    units = sorted(units_from_spans(spans), key=lambda u: (u.model, u.usage.input))
    assert [(u.model, u.usage.input, u.usage.output, u.mlflow_cost_nano) for u in units] == [
        ("claude-haiku-4-5", 5, 5, None),
        ("gpt-4o", 30, 3, 300_000_000),  # the parent's tokens, its children's model and summed cost
        ("unknown", 0, 0, 500_000_000),
        ("unknown", 7, 0, None),  # its descendants name two models: not guessed
    ]


def test_a_span_cycle_or_orphan_does_not_hang():
    spans = [span("a", "b", model="m", usage={"input_tokens": 1}), span("b", "a"), span("c", "gone", model="n",
             usage={"input_tokens": 2})]
    assert sorted(u.usage.input for u in units_from_spans(spans)) == [2]


def test_facts_fall_back_to_the_traces_own_totals_under_model_unknown():
    meta = {"mlflow.trace.tokenUsage": '{"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}',
            "mlflow.trace.cost": '{"total_cost": 0.001}', "mlflow.trace.user": "ann"}
    facts = facts_of(info(metadata=meta), spans=None)
    assert facts.user == "ann" and len(facts.units) == 1
    assert (facts.units[0].model, facts.units[0].usage.input, facts.units[0].mlflow_cost_nano) == ("unknown", 10, 10**6)
    assert facts_of(info(), spans=None).units == ()  # no LLM call recorded: a trace of no tokens


@pytest.mark.parametrize("kwargs, reason", [
    ({"metadata": {"mlflow.trace.tokenUsage": "{broken"}}, "invalid_token_usage"),
    ({"metadata": {"mlflow.trace.tokenUsage": '{"input_tokens": -3}'}}, "invalid_token_usage"),
    ({"metadata": {"mlflow.trace.cost": '{"total_cost": "abc"}'}}, "invalid_cost"),
    ({"state": "STATE_UNSPECIFIED"}, "unknown_status"),
    ({"request": None}, "invalid_time"),
    ({"duration": -5}, "invalid_time"),
])
def test_bad_trace_data_is_skipped_with_a_reason(kwargs, reason):
    with pytest.raises(BadData) as err:
        facts_of(info(**kwargs), spans=None)
    assert err.value.reason == reason


def test_bad_span_data_skips_the_trace():
    meta = {"mlflow.trace.tokenUsage": '{"input_tokens": 1}'}
    with pytest.raises(BadData) as err:
        facts_of(info(metadata=meta), [span("s", usage={"input_tokens": 1}, cost={"total_cost": "lots"})])
    assert err.value.reason == "invalid_cost"


# -- sums and bounded labels ------------------------------------------------------------------------
def rules(**traces) -> Rules:
    return Rules.of(config(**traces))


def trace_with(model: str, tokens: int, user: str = "", cost: int | None = None, status: str = "OK"):
    meta = {"mlflow.trace.tokenUsage": f'{{"input_tokens": {tokens}, "output_tokens": 0}}', "mlflow.trace.user": user}
    return facts_of(info(metadata=meta, state=status), [span("s", model=model, usage={"input_tokens": tokens},
                                                             cost=None if cost is None else {"total_cost": cost})])


def view(spend: dict, **kwargs) -> GenaiView:
    defaults = dict(experiments={"1": "chat"}, in_progress={}, currency="USD", month="2026-11", timezone="UTC",
                    duration_buckets=(1.0, 10.0))
    return GenaiView(spend=spend, **{**defaults, **kwargs})


def test_top_models_keep_their_name_the_rest_is_other_with_the_same_totals():
    r = rules(max_models=3, breakdown="user", max_breakdown_values=2, token_prices={f"m{i}": {"input": i, "output": 0}
                                                                                  for i in range(1, 9)})
    spend = ExperimentSpend()
    for i in range(1, 9):  # m8 costs most
        fold(spend, trace_with(f"m{i}", 1_000_000, user=f"u{i}"), r)
    fold(spend, trace_with("gpt-4o", 10, status="ERROR"), r)
    m = samples(render(families(view({"1": spend}, max_models=3, breakdown="user", max_breakdown_values=2,
                                     duration_buckets=r.buckets))))
    costs = {dict(k[1])["model"]: v for k, v in m.items() if k[0] == "mlops_genai_cost"}
    assert costs == pytest.approx({"m8": 8.0, "m7": 7.0, "m6": 6.0, OTHER: 15.000025})
    tokens = sum(v for k, v in m.items() if k[0] == "mlops_genai_tokens")
    assert tokens == 8_000_010  # nothing lost to the bound
    users = {dict(k[1])["user"]: v for k, v in m.items() if k[0] == "mlops_genai_cost_by_user"}
    assert users == pytest.approx({"u8": 8.0, "u7": 7.0, OTHER: 21.000025})
    assert value(m, "mlops_genai_traces", experiment="chat", status="ERROR") == 1
    assert value(m, "mlops_genai_cost_month_to_date", experiment="chat") == pytest.approx(36.000025)
    assert value(m, "mlops_genai_trace_duration_seconds_bucket", experiment="chat", le="1.0") == 0  # 1.5 s each
    assert value(m, "mlops_genai_trace_duration_seconds_bucket", experiment="chat", le="2.5") == 9
    assert value(m, "mlops_genai_trace_duration_seconds_sum", experiment="chat") == 13.5


def test_distinct_models_held_are_bounded_too():
    r = rules(max_models=1)
    spend = ExperimentSpend()
    for i in range(KEEP_FACTOR + 20):
        fold(spend, trace_with(f"model-{i}", 1), r)
    assert len({model for model, _ in spend.tokens}) == KEEP_FACTOR + 1  # the first ones, then "other"
    assert sum(spend.tokens.values()) == KEEP_FACTOR + 20


def test_nothing_rendered_without_traces_and_skips_shown_with_zeros():
    assert families(view({})) == []
    assert families(view({"1": ExperimentSpend()})) == []
    spend = ExperimentSpend(skipped=Counter(invalid_cost=2), seen=Counter(OK=2))
    m = samples(render(families(view({"1": spend}))))
    assert value(m, "mlops_genai_traces_skipped", reason="invalid_cost") == 2
    assert value(m, "mlops_genai_traces_skipped", reason="unknown_status") == 0
    assert value(m, "mlops_genai_traces", experiment="chat", status="OK") == 0


# -- the config ------------------------------------------------------------------------------------
@pytest.mark.parametrize("traces, message", [
    ({"poll_interval": "10s"}, "traces.poll_interval: must be at least 30s"),
    ({"poll_interval": "10m", "resync_interval": "5m"}, "resync_interval must not be shorter than poll_interval"),
    ({"mode": "fast"}, "traces.mode"),
    ({"token_prices": {"m": {"input": -1, "output": 1}}}, "traces.token_prices.m.input"),
    ({"token_prices": {"m": {"input": 1}}}, "traces.token_prices.m.output: required key is missing"),
    ({"token_prices": {"M": {"input": 1, "output": 1}, "m": {"input": 2, "output": 2}}}, "differ only in case"),
    ({"duration_buckets": ["2s", "1s"]}, "strictly increasing"),
    ({"breakdown": "team"}, "traces.breakdown"),
    ({"max_models": 0}, "traces.max_models"),
    ({"price": 1}, "traces.price: unknown key"),
])
def test_config_errors_name_the_key(traces, message):
    with pytest.raises(ConfigError) as err:
        config(**traces)
    assert message in str(err.value)


def test_config_defaults():
    cfg = config().traces
    assert (cfg.enabled, cfg.poll_interval, cfg.resync_interval, cfg.mode, cfg.max_models, cfg.breakdown) == (
        True, 300.0, 3600.0, "auto", 10, "none")
    assert config(duration_buckets=["250ms", "1s", "1m"]).traces.duration_buckets == [0.25, 1.0, 60.0]


# -- a server without the traces API ---------------------------------------------------------------
class _Page(list):
    token = None


class FakeClient:
    """Just enough of MlflowClient: one watched experiment; traces and aggregation as given."""

    def __init__(self, search=None, metrics=None):
        self._search, self._metrics = search, metrics
        store = SimpleNamespace(query_trace_metrics=self._query, batch_get_traces=lambda ids: [],
                                batch_get_trace_infos=lambda ids: [])
        self._tracing_client = SimpleNamespace(store=store)

    def search_experiments(self, **kwargs):
        return _Page([SimpleNamespace(experiment_id="1", name="chat", creation_time=1)])

    def search_traces(self, **kwargs):
        if isinstance(self._search, Exception):
            raise self._search
        return _Page(SimpleNamespace(info=i) for i in (self._search or []))

    def _query(self, **kwargs):
        if isinstance(self._metrics, Exception):
            raise self._metrics
        return []


def fake_source(client: FakeClient, **traces) -> TraceSource:
    from mlops_kpi_exporter.mlflow_client import MlflowConnection

    cfg = config(**traces)
    src = TraceSource(cfg, MlflowConnection.from_config(cfg), clock=lambda: NOW_MS / 1000)
    src._client = src.watch._client = client
    return src


def test_a_server_without_the_traces_api_is_a_state_not_an_error(caplog):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import ENDPOINT_NOT_FOUND

    src = fake_source(FakeClient(search=MlflowException("404", error_code=ENDPOINT_NOT_FOUND)))
    for _ in range(3):
        families_, summary = src.poll()
        assert families_ == [] and "no traces API" in summary
    assert sum("has no traces API" in r.getMessage() for r in caplog.records) == 1  # said once
    assert "no traces API" in src.check()


def test_auto_mode_falls_back_to_incremental_without_the_aggregation():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import ENDPOINT_NOT_FOUND

    ended = info(metadata={"mlflow.trace.tokenUsage": '{"input_tokens": 10, "output_tokens": 5}'})
    src = fake_source(FakeClient(search=[ended], metrics=MlflowException("404", error_code=ENDPOINT_NOT_FOUND)))
    families_, summary = src.poll()
    assert summary.startswith("incremental: first poll"), summary
    m = samples(render(families_))
    assert value(m, "mlops_genai_tokens", experiment="chat", model="unknown", token_type="input") == 10
    assert fake_source(FakeClient(search=[ended]), mode="incremental")._mode(["1"]) == "incremental"
    assert fake_source(FakeClient(search=[ended]))._mode(["1"]) == "aggregate"
