"""GenAI spend from MLflow 3 traces, against a real `mlflow server`: traces written through MLflow's
tracing API (`mlflow.start_span`, LLM spans with token usage and model attributes), no network.

The server here is one of this module's own, started with `MLFLOW_MODEL_CATALOG_URI=""`: MLflow 3.17
prices LLM spans on the server as it stores them (SqlAlchemyStore, for every non-Databricks backend),
from its bundled model catalog, and first tries to download a fresher one from GitHub for a span that
names its provider. The empty URI turns that download off (the bundled catalog still prices), so
nothing leaves 127.0.0.1. Telemetry is off too.

Figures worked out by hand (USD per million tokens: gpt-4o 2.50 in / 1.25 cached / 10.00 out,
gpt-4o-mini 0.15 / 0.60, claude-sonnet-4-5 3.00 in / 0.30 cache read / 3.75 cache write / 15.00 out,
all as MLflow's bundled catalog and ours have them; my-finetune from the config: 0.50 / 0.25 / 1.50):
  chat  T1 alice  gpt-4o       1000 in (200 cached), 500 out  MLflow: 800x2.5 + 200x1.25 + 500x10 = 0.00725
        T2 bob    my-finetune  2000 in, 1000 out              config: 2000x0.5 + 1000x1.5      = 0.0025
        T3 ERROR  gpt-4o-mini  10 in, 5 out                   MLflow: 10x0.15 + 5x0.6          = 0.0000045
        T4        mystery-llm  300 in, 100 out                unpriced: tokens counted, no cost
        T5 alice  gpt-4o-mini  100 in, 50 out                 MLflow: 100x0.15 + 50x0.6        = 0.000045
                  my-finetune  1000 in (400 cached), 0 out    config: 600x0.5 + 400x0.25       = 0.0004
  rag   R1        gateway:/gpt-4o-mini 1000 in, 1000 out      MLflow skips gateway:/ models; our catalog:
                                                              1000x0.15 + 1000x0.6             = 0.00075
        R2        claude-sonnet-4-5 2000 in (1000 read, 500 written), 100 out
                                                              MLflow: 500x3 + 1000x0.3 + 500x3.75 + 100x15 = 0.005175
"""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timezone

import pytest

from conftest import InProcess, MlflowServer, connected, offline, render, samples, value
from mlops_kpi_exporter.config import config_from_dict
from mlops_kpi_exporter.runs import NANO
from mlops_kpi_exporter.sources.traces import TraceSource

FINETUNE = {"input": 0.50, "cached_input": 0.25, "output": 1.50}
HOUR = 3600.0
MS_NS = 1_000_000
# Every trace is written at a fixed moment mid-month and every source polls a minute later, so the
# month-to-date figures (and budgets) never depend on the day the tests run.
WRITTEN_AT = datetime(2025, 6, 15, 12, tzinfo=timezone.utc).timestamp()
POLLED_AT = WRITTEN_AT + 60


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A `mlflow server` of this module's own, started offline (see the module's docstring)."""
    import mlflow

    with offline():
        srv = MlflowServer(tmp_path_factory.mktemp("mlflow-traces")).start()
        mlflow.set_tracking_uri(srv.url)
        try:
            yield srv
        finally:
            mlflow.set_tracking_uri(None)
            srv.kill()


def usage(inp: int, out: int, cached: int | None = None, written: int | None = None) -> dict:
    u = {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out}
    if cached is not None:
        u["cache_read_input_tokens"] = cached
    if written is not None:
        u["cache_creation_input_tokens"] = written
    return u


def trace(experiment: str, *calls, user: str | None = None, error: bool = False, at: float = WRITTEN_AT) -> str:
    """One trace started at `at` (seconds): an AGENT root span with one LLM span per (model, provider, usage)
    call, each a millisecond long."""
    import mlflow

    mlflow.set_experiment(experiment)
    start_ns = int(at * 1e9)
    metadata = {"mlflow.trace.user": user, "mlflow.trace.session": f"s-{user}"} if user else None
    root = mlflow.start_span_no_context("agent", span_type="AGENT", metadata=metadata, start_time_ns=start_ns)
    for i, (model, provider, tokens) in enumerate(calls):
        attributes = {"mlflow.chat.tokenUsage": tokens, "mlflow.llm.model": model}
        if provider:
            attributes["mlflow.llm.provider"] = provider
        span = mlflow.start_span_no_context("llm", span_type="LLM", parent_span=root, attributes=attributes,
                                            start_time_ns=start_ns + i * MS_NS)
        span.end(end_time_ns=start_ns + (i + 1) * MS_NS)
    root.end(status="ERROR" if error else "OK", end_time_ns=start_ns + (len(calls) + 1) * MS_NS)
    return root.trace_id


def seed(prefix: str) -> dict[str, str]:
    chat, rag = f"{prefix}-chat", f"{prefix}-rag"
    ids = {
        "T1": trace(chat, ("gpt-4o", "openai", usage(1000, 500, cached=200)), user="alice"),
        "T2": trace(chat, ("my-finetune", "openai", usage(2000, 1000)), user="bob"),
        "T3": trace(chat, ("gpt-4o-mini", "openai", usage(10, 5)), error=True),
        "T4": trace(chat, ("mystery-llm", None, usage(300, 100))),
        "T5": trace(chat, ("gpt-4o-mini", "openai", usage(100, 50)), ("my-finetune", None, usage(1000, 0, cached=400)),
                    user="alice"),
        "R1": trace(rag, ("gateway:/gpt-4o-mini", None, usage(1000, 1000))),
        "R2": trace(rag, ("claude-sonnet-4-5", "anthropic", usage(2000, 100, cached=1000, written=500))),
    }
    return ids


class Clock:
    """A fixed moment, a minute after the seeded traces, plus a shift: a resync comes due without
    waiting an hour, and the month's figures are the same whatever day the tests run."""

    def __init__(self):
        self.shift = 0.0

    def __call__(self) -> float:
        return POLLED_AT + self.shift


def source(url: str, prefix: str, clock=None, concurrency: int = 2, **traces) -> TraceSource:
    cfg = config_from_dict({
        "mlflow": {"tracking_uri": url, "experiments": [f"{prefix}-*"], "timeout": "10s", "concurrency": concurrency},
        "traces": {"token_prices": {"my-finetune": FINETUNE}, **traces},
    })
    return TraceSource(*connected(cfg), clock=clock or Clock())


def genai(parsed: dict) -> dict:
    """The GenAI samples, less the resync time (which differs between two sources by construction)."""
    return {k: v for k, v in parsed.items()
            if k[0].startswith("mlops_genai_") and k[0] != "mlops_genai_last_resync_timestamp_seconds"}


def poll(src: TraceSource) -> tuple[dict, str]:
    families, summary = src.poll()
    return samples(render(families)), summary


def test_exact_figures_both_modes_and_a_restart(server, prefix):
    seed(prefix)
    chat, rag = f"{prefix}-chat", f"{prefix}-rag"
    agg = source(server.url, prefix, mode="aggregate", breakdown="user")
    m, summary = poll(agg)
    assert summary.startswith("aggregate: first poll") and "7 traces" in summary, summary

    assert value(m, "mlops_genai_traces", experiment=chat, status="OK") == 4
    assert value(m, "mlops_genai_traces", experiment=chat, status="ERROR") == 1
    assert value(m, "mlops_genai_traces", experiment=chat, status="IN_PROGRESS") == 0
    assert value(m, "mlops_genai_traces", experiment=rag, status="OK") == 2
    tokens = {(dict(k[1])["experiment"], dict(k[1])["model"], dict(k[1])["token_type"]): v
              for k, v in m.items() if k[0] == "mlops_genai_tokens"}
    assert tokens == {
        (chat, "gpt-4o", "input"): 800, (chat, "gpt-4o", "cached_input"): 200, (chat, "gpt-4o", "output"): 500,
        (chat, "my-finetune", "input"): 2600, (chat, "my-finetune", "cached_input"): 400,
        (chat, "my-finetune", "output"): 1000,
        (chat, "gpt-4o-mini", "input"): 110, (chat, "gpt-4o-mini", "output"): 55,
        (chat, "mystery-llm", "input"): 300, (chat, "mystery-llm", "output"): 100,
        (rag, "gateway:/gpt-4o-mini", "input"): 1000, (rag, "gateway:/gpt-4o-mini", "output"): 1000,
        (rag, "claude-sonnet-4-5", "input"): 500, (rag, "claude-sonnet-4-5", "cached_input"): 1000,
        (rag, "claude-sonnet-4-5", "cache_creation_input"): 500, (rag, "claude-sonnet-4-5", "output"): 100,
    }
    cost = {(dict(k[1])["experiment"], dict(k[1])["model"]): v for k, v in m.items() if k[0] == "mlops_genai_cost"}
    assert cost == pytest.approx({
        (chat, "gpt-4o"): 0.00725, (chat, "my-finetune"): 0.0029, (chat, "gpt-4o-mini"): 0.0000495,
        (chat, "mystery-llm"): 0.0, (rag, "gateway:/gpt-4o-mini"): 0.00075, (rag, "claude-sonnet-4-5"): 0.005175,
    }, abs=1e-12)
    sources = {(dict(k[1])["model"], dict(k[1])["price_source"]): v
               for k, v in m.items() if k[0] == "mlops_genai_tokens_by_price_source"}
    assert sources == {("gpt-4o", "mlflow"): 1500, ("my-finetune", "config"): 4000, ("gpt-4o-mini", "mlflow"): 165,
                       ("mystery-llm", "unpriced"): 400, ("gateway:/gpt-4o-mini", "catalog"): 2000,
                       ("claude-sonnet-4-5", "mlflow"): 2100}
    assert value(m, "mlops_genai_cost_month_to_date", experiment=chat) == pytest.approx(0.0101995, abs=1e-12)
    assert value(m, "mlops_genai_cost_month_to_date", experiment=rag) == pytest.approx(0.005925, abs=1e-12)
    assert value(m, "mlops_genai_cost_by_user", experiment=chat, user="alice") == pytest.approx(0.007695, abs=1e-12)
    assert value(m, "mlops_genai_cost_by_user", experiment=chat, user="bob") == pytest.approx(0.0025, abs=1e-12)
    assert value(m, "mlops_genai_cost_by_user", experiment=chat, user="unknown") == pytest.approx(0.0000045, abs=1e-12)
    assert value(m, "mlops_genai_trace_duration_seconds_count", experiment=chat) == 5
    assert value(m, "mlops_genai_trace_duration_seconds_bucket", experiment=chat, le="+Inf") == 5
    assert value(m, "mlops_genai_traces_skipped", reason="invalid_token_usage") == 0

    # The other mode, on the same store, gives the same figures; so does a restart (a new source).
    inc = source(server.url, prefix, mode="incremental", breakdown="user")
    m_inc, summary = poll(inc)
    assert summary.startswith("incremental: first poll"), summary
    assert genai(m_inc) == genai(m)
    m_restart, _ = poll(source(server.url, prefix, mode="aggregate", breakdown="user"))
    assert genai(m_restart) == genai(m)
    # Polls with nothing new change nothing: the look-back window never counts a trace twice.
    m_again, summary = poll(agg)
    assert summary.startswith("aggregate: 0 new traces"), summary
    assert genai(m_again) == genai(m)

    # What budgets and the report read: the month to date, and a period read afresh.
    facts = agg.facts()
    month = datetime.fromtimestamp(POLLED_AT, timezone.utc).strftime("%Y-%m")
    assert {name: nano / NANO for name, nano in facts.cost_in(month).items()} == pytest.approx(
        {chat: 0.0101995, rag: 0.005925}, abs=1e-12)
    assert facts.as_of_ms == int(POLLED_AT * 1000)
    now_ms = int(POLLED_AT * 1000)
    names, spend = agg.spend_between(now_ms - 3_600_000, now_ms + 60_000)
    by_name = {names[e]: s for e, s in spend.items()}
    assert sum(by_name[chat].traces.values()) == 5 and sum(by_name[chat].cost.values()) == 10_199_500
    _, none = agg.spend_between(now_ms - 7_200_000, now_ms - 3_600_000)
    assert all(s.empty() for s in none.values())


def test_new_traces_once_in_progress_followed_deleted_at_resync(server, prefix):
    from mlflow import MlflowClient
    from mlflow.entities import TraceInfo, TraceLocation, TraceState

    ids = seed(prefix)
    chat = f"{prefix}-chat"
    clock = Clock()
    agg = source(server.url, prefix, clock=clock, mode="aggregate")
    inc = source(server.url, prefix, clock=clock, mode="incremental")
    for src in (agg, inc):
        m, _ = poll(src)
        assert value(m, "mlops_genai_traces", experiment=chat, status="OK") == 4

    trace(chat, ("gpt-4o", "openai", usage(1000, 0)), at=clock())  # 1000 x 2.50 = 0.0025 more for gpt-4o
    clock.shift = 60.0
    for src in (agg, inc):
        for _ in range(2):  # the second poll finds it again in its look-back window: still counted once
            m, summary = poll(src)
            assert value(m, "mlops_genai_traces", experiment=chat, status="OK") == 5
            assert value(m, "mlops_genai_cost", experiment=chat, model="gpt-4o") == pytest.approx(0.00975, abs=1e-12)
            assert value(m, "mlops_genai_tokens", experiment=chat, model="gpt-4o", token_type="input") == 1800

    client = MlflowClient(server.url)
    exp_id = client.get_experiment_by_name(chat).experiment_id
    running = f"tr-{uuid.uuid4().hex}"  # a trace still running: its spans have not all arrived
    client._tracing_client.store.start_trace(TraceInfo(
        trace_id=running, trace_location=TraceLocation.from_experiment_id(exp_id),
        request_time=int(clock() * 1000) - 1000, state=TraceState.IN_PROGRESS))
    for src in (agg, inc):
        m, _ = poll(src)
        assert value(m, "mlops_genai_traces", experiment=chat, status="IN_PROGRESS") == 1

    client.delete_traces(exp_id, trace_ids=[ids["T2"], running])  # bob's my-finetune trace, and the running one
    for src in (agg, inc):
        m, summary = poll(src)  # no resync yet: only the running trace leaves (it is followed by id)
        assert value(m, "mlops_genai_traces", experiment=chat, status="IN_PROGRESS") == 0
        assert value(m, "mlops_genai_traces", experiment=chat, status="OK") == 5
        assert "resync" not in summary, summary

    clock.shift = 2 * HOUR  # past traces.resync_interval (1h)
    for src, expected in ((agg, "2 experiments checked against the server, 1 recounted"), (inc, "2 recounted")):
        m, summary = poll(src)
        assert expected in summary, summary
        assert value(m, "mlops_genai_traces", experiment=chat, status="OK") == 4
        assert value(m, "mlops_genai_cost", experiment=chat, model="my-finetune") == pytest.approx(0.0004, abs=1e-12)
        assert value(m, "mlops_genai_tokens", experiment=chat, model="my-finetune", token_type="input") == 600
    assert genai(poll(agg)[0]) == genai(poll(inc)[0])
    clock.shift = 4 * HOUR  # the next resync: the aggregate check now agrees, nothing is recounted
    _, summary = poll(agg)
    assert "2 experiments checked against the server, 0 recounted" in summary, summary


def test_bad_token_counts_are_a_counted_skip(server, prefix):
    chat = f"{prefix}-chat"
    trace(chat, ("mystery-llm", None, {"input_tokens": -5, "output_tokens": 3, "total_tokens": -2}))
    # Not a number: MLflow itself cannot sum it, so the trace records no token usage at all; its spans
    # are not read (only traces that record tokens or a cost are) and it counts as a trace of no tokens.
    trace(chat, ("mystery-llm", None, {"input_tokens": "many", "output_tokens": 3}))
    trace(chat, ("gpt-4o-mini", "openai", usage(100, 50)))
    clock = Clock()
    src = source(server.url, prefix, clock=clock, mode="aggregate")
    m, summary = poll(src)
    assert "1 skipped" in summary, summary
    assert value(m, "mlops_genai_traces_skipped", reason="invalid_token_usage") == 1
    assert value(m, "mlops_genai_traces", experiment=chat, status="OK") == 2
    assert value(m, "mlops_genai_cost", experiment=chat, model="gpt-4o-mini") == pytest.approx(0.000045, abs=1e-12)
    assert not any(k[0] == "mlops_genai_tokens" and dict(k[1])["model"] != "gpt-4o-mini" for k in m)
    clock.shift = 2 * HOUR  # skipped traces are in the books' counts: the check agrees, no recount every hour
    _, summary = poll(src)
    assert "0 recounted" in summary, summary


def test_no_traces_renders_nothing(server, prefix):
    from mlflow import MlflowClient

    MlflowClient(server.url).create_experiment(f"{prefix}-empty")
    families, summary = source(server.url, prefix).poll()
    assert families == [] and "0 traces" in summary, summary


def test_a_budget_that_includes_genai_counts_the_traces_spend(server, prefix):
    """budgets[].include: [compute, genai]: the budget's month to date adds the experiments' GenAI cost."""
    from mlops_kpi_exporter.cli import prepare

    seed(prefix)
    cfg = config_from_dict({
        "mlflow": {"tracking_uri": server.url, "experiments": [f"{prefix}-*"], "timeout": "10s"},
        "traces": {"token_prices": {"my-finetune": FINETUNE}},
        "registry": {"enabled": False},
        "budgets": [{"name": "chat-all", "experiments": [f"{prefix}-chat"], "monthly": 1, "include": ["compute", "genai"]},
                    {"name": "chat-genai", "experiments": [f"{prefix}-chat"], "monthly": 1, "include": ["genai"]},
                    {"name": "chat-compute", "experiments": [f"{prefix}-chat"], "monthly": 1}],
    })
    mlflow, sources = prepare(cfg)
    mlflow.apply()
    by_name = {s.name: s for s in sources}
    by_name["traces"].clock = by_name["mlflow"].clock = Clock()  # both read the month of the same moment
    exporter = InProcess(cfg, [by_name["mlflow"], by_name["traces"]])
    m = exporter.poll(by_name["mlflow"])  # compute is in, GenAI is not: the budgets over GenAI are absent
    assert value(m, "mlops_budget_cost_month_to_date", budget="chat-compute") == 0.0
    assert ("mlops_budget_cost_month_to_date", (("budget", "chat-all"),)) not in m
    assert value(m, "mlops_derived_input_pending", figure="budgets", source="traces") == 1
    m = exporter.poll(by_name["traces"])
    assert value(m, "mlops_budget_cost_month_to_date", budget="chat-all") == pytest.approx(0.0101995, abs=1e-12)
    assert value(m, "mlops_budget_cost_month_to_date", budget="chat-genai") == pytest.approx(0.0101995, abs=1e-12)
    assert value(m, "mlops_budget_cost_month_to_date", budget="chat-compute") == 0.0  # no runs: no compute
    with pytest.raises(Exception, match="a budget includes genai, but traces.enabled is false"):
        config_from_dict({"mlflow": {"tracking_uri": server.url}, "traces": {"enabled": False},
                          "budgets": [{"name": "b", "experiments": ["*"], "monthly": 1, "include": ["genai"]}]})


def test_the_report_shows_genai_spend_by_experiment_and_model(server, prefix):
    import io
    import json

    from mlops_kpi_exporter.report import Period, write_report

    seed(prefix)
    cfg = config_from_dict({
        "mlflow": {"tracking_uri": server.url, "experiments": [f"{prefix}-*"], "timeout": "10s"},
        "traces": {"token_prices": {"my-finetune": FINETUNE}},
    })
    now = int(POLLED_AT * 1000)
    out = io.StringIO()
    write_report(cfg, connected(cfg)[1], Period(now - 3_600_000, now + 60_000), "json", out, now)
    data = json.loads(out.getvalue())
    genai = data["genai"]
    by = {(r["experiment"], r["model"]): r for r in genai["by_model"]}
    assert by[(f"{prefix}-chat", "gpt-4o")]["cost"] == pytest.approx(0.00725, abs=1e-12)
    assert by[(f"{prefix}-chat", "my-finetune")]["cost"] == pytest.approx(0.0029, abs=1e-12)
    assert by[(f"{prefix}-chat", "mystery-llm")]["unpriced_tokens"] == 400
    assert genai["total"] == pytest.approx(0.0101995 + 0.005925, abs=1e-9)
    assert genai["traces"][f"{prefix}-chat"] == {"OK": 4, "ERROR": 1}
    assert any("mystery-llm have no price" in s for s in data["what_to_look_at"])
    page = io.StringIO()
    write_report(cfg, connected(cfg)[1], Period(now - 3_600_000, now + 60_000), "html", page, now)
    assert "GenAI spend" in page.getvalue() and "my-finetune" in page.getvalue()


# -- span batches read several at once ------------------------------------------------------------
@pytest.fixture
def small_reads(monkeypatch):
    """Search pages and chunks of 3 traces, span batches of 2: a dozen traces make several of each."""
    from mlops_kpi_exporter.sources import trace_store, traces

    monkeypatch.setattr(trace_store, "SPAN_BATCH", 2)
    monkeypatch.setattr(trace_store, "SEARCH_PAGE", 3)
    monkeypatch.setattr(traces, "SEARCH_PAGE", 3)


def seed_three(prefix: str) -> dict[str, str]:
    """seed()'s chat and rag, and ops: three gpt-4o-mini calls (60 in, 6 out in all) and a trace with no
    LLM call, whose metadata records neither tokens nor a cost."""
    ops = f"{prefix}-ops"
    ids = seed(prefix) | {f"O{i}": trace(ops, ("gpt-4o-mini", "openai", usage(10 * i, i))) for i in (1, 2, 3)}
    ids["quiet"] = trace(ops)
    return ids


class BatchGets:
    """Wraps a source's batch_spans: the requests in flight (their peak) and the trace ids asked for. The
    first calls wait until `fill` of them are in flight at once (an event, not a sleep), so a pool that
    can overlap them must; a batch holding `fail_on` fails as a server error would."""

    def __init__(self, src: TraceSource, fill: int = 1, fail_on: str | None = None):
        self.batch_spans, self.fill, self.fail_on = src.trace_store.batch_spans, fill, fail_on
        self.lock, self.full = threading.Lock(), threading.Event()
        self.in_flight = self.peak = 0
        self.asked: list[str] = []
        src.trace_store.batch_spans = self

    def __call__(self, trace_ids: list[str]) -> dict:
        from mlflow.exceptions import MlflowException

        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            self.asked += trace_ids
            if self.in_flight >= self.fill:
                self.full.set()
        try:
            self.full.wait(timeout=30)  # the peak assertion fails if the pool never filled
            if self.fail_on in trace_ids:
                raise MlflowException("batchGet failed", error_code="INTERNAL_ERROR")
            return self.batch_spans(trace_ids)
        finally:
            with self.lock:
                self.in_flight -= 1


def test_span_batches_in_flight_at_once_give_the_same_figures(server, prefix, small_reads):
    """mlflow.concurrency 1 and 4: at most that many traces/batchGet requests at once (and that many
    reached), every trace that recorded tokens read once, the quiet one never, the same figures."""
    from mlflow import MlflowClient

    ids = seed_three(prefix)
    chat, ops = f"{prefix}-chat", f"{prefix}-ops"
    quiet = MlflowClient(server.url).get_trace(ids["quiet"]).info.trace_metadata
    assert "mlflow.trace.tokenUsage" not in quiet and "mlflow.trace.cost" not in quiet, quiet
    figures = {}
    for concurrency in (1, 4):
        src = source(server.url, prefix, concurrency=concurrency, mode="aggregate")
        batch_gets = BatchGets(src, fill=concurrency)
        m, summary = poll(src)
        assert batch_gets.peak == concurrency, (concurrency, batch_gets.peak)
        assert sorted(batch_gets.asked) == sorted(t for name, t in ids.items() if name != "quiet")
        assert "11 traces" in summary and "spans of 10 traces read" in summary, summary
        assert value(m, "mlops_genai_traces", experiment=ops, status="OK") == 4
        assert value(m, "mlops_genai_tokens", experiment=ops, model="gpt-4o-mini", token_type="input") == 60
        assert value(m, "mlops_genai_tokens", experiment=ops, model="gpt-4o-mini", token_type="output") == 6
        assert value(m, "mlops_genai_cost", experiment=chat, model="gpt-4o") == pytest.approx(0.00725, abs=1e-12)
        figures[concurrency] = genai(m)
    assert figures[1] == figures[4]


def test_a_failed_span_batch_fails_the_poll_and_keeps_the_last_figures(server, prefix, small_reads):
    """A batch failing after two chunks of new traces were folded: the poll fails, /metrics keeps the last
    good figures; the next poll counts every new trace once, as a fresh source does."""
    seed_three(prefix)
    chat = f"{prefix}-chat"
    src = source(server.url, prefix, concurrency=4, mode="aggregate")
    exporter = InProcess(src.config, [src])
    before = genai(exporter.poll())
    # seven new traces, a second apart: the search finds them in this order, in chunks of 3, 3 and 1
    late = [trace(chat, ("gpt-4o-mini", "openai", usage(100 + k, 10)), at=WRITTEN_AT + 1 + k) for k in range(7)]
    batch_gets = BatchGets(src, fail_on=late[-1])
    assert not exporter.poller.poll_once(src)
    failed = exporter.samples()
    assert value(failed, "mlops_source_up", source="traces") == 0
    assert genai(failed) == before
    assert set(late) <= set(batch_gets.asked)
    assert [t in src.recent for t in late] == [True] * 6 + [False]  # two chunks folded, the failed one not at all

    batch_gets.fail_on = None
    after = genai(exporter.poll())
    fresh = source(server.url, prefix, mode="aggregate")
    assert after == genai(InProcess(fresh.config, [fresh]).poll())
    assert value(exporter.samples(), "mlops_genai_traces", experiment=chat, status="OK") == 4 + 7
    assert genai(exporter.poll()) == after  # found again in the look-back window: still counted once
