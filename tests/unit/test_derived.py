"""The derived stage (derived.py) and the snapshot store that runs it: figures of several sources'
facts, absent until every input is in, never mixing months. Hand-built facts and stand-in sources,
each with its own clock; no server."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from conftest import samples, value
from mlops_kpi_exporter.cli import build_registry, build_store
from mlops_kpi_exporter.config import config_from_dict
from mlops_kpi_exporter.facts import GenaiFacts, LedgerFacts
from mlops_kpi_exporter.metrics.catalogue import family
from mlops_kpi_exporter.poller import Poller
from mlops_kpi_exporter.snapshot import slot
from prometheus_client.exposition import generate_latest

NANO = 10**9
CONFIG = config_from_dict({
    "mlflow": {"tracking_uri": "http://127.0.0.1:9"},
    "traces": {"enabled": True},
    "budgets": [{"name": "assistant", "experiments": "assistant", "monthly": 100, "include": ["compute", "genai"]},
                {"name": "compute", "experiments": "*", "monthly": 500}],
})


def ms(day: int, hour: int = 0, minute: int = 0, second: int = 0, month: int = 11) -> int:
    return int(datetime(2026, month, day, hour, minute, second, tzinfo=timezone.utc).timestamp() * 1000)


def ledger(as_of_ms: int, month: str, nano: int) -> LedgerFacts:
    return LedgerFacts(as_of_ms=as_of_ms, experiments={"1": "assistant"}, month=month, month_to_date={"1": nano})


def genai(as_of_ms: int, **months: int) -> GenaiFacts:
    return GenaiFacts(as_of_ms=as_of_ms, month_cost={"assistant": {m.replace("_", "-"): n for m, n in months.items()}})


class Stub:
    """A source that hands the facts it is given, and a family with the budgets' slot after it."""

    interval, retry_backoff = 60.0, 1.0

    def __init__(self, name: str, facts=None):
        self.name, self.next_facts = name, facts
        mine = family("mlops_mlflow_runs_tracked")
        mine.add_metric([], 1)
        self.families = [mine, slot("budgets")] if name == "mlflow" else []

    def poll(self):
        return self.families, "ok"

    def facts(self):
        return self.next_facts

    def check(self):
        return "ok"


class Exporter:
    def __init__(self, *sources):
        self.sources = {s.name: s for s in sources}
        self.store = build_store(CONFIG, list(sources))
        self.poller = Poller(list(sources), self.store)
        self.registry = build_registry(self.store, CONFIG)

    def poll(self, name: str, facts) -> dict:
        self.sources[name].next_facts = facts
        assert self.poller.poll_once(self.sources[name])
        return self.page()

    def text(self) -> str:
        return generate_latest(self.registry).decode()

    def page(self) -> dict:
        return samples(self.text())


def budget(m: dict, name: str = "assistant", figure: str = "mlops_budget_cost_month_to_date") -> float | None:
    return m.get((figure, (("budget", name),)))


def test_a_budget_over_compute_and_genai_is_absent_until_both_are_in_then_whole():
    exporter = Exporter(Stub("mlflow"), Stub("traces"))
    m = exporter.page()
    assert budget(m) is None and budget(m, "compute") is None
    assert value(m, "mlops_derived_input_pending", figure="budgets", source="mlflow") == 1
    m = exporter.poll("mlflow", ledger(ms(20, 12), "2026-11", 20 * NANO))
    # the compute-only budget has all it needs; the other waits for the slow traces source, shown nowhere as 20
    assert budget(m, "compute") == 20 and budget(m) is None
    assert ("mlops_budget_monthly", (("budget", "assistant"),)) not in m
    assert value(m, "mlops_derived_input_pending", figure="budgets", source="traces") == 1
    m = exporter.poll("traces", genai(ms(20, 11), **{"2026_11": 3 * NANO}))
    assert budget(m) == 23 and budget(m, "compute") == 20
    assert value(m, "mlops_derived_input_pending", figure="budgets", source="traces") == 0
    # the derived families take the slot the MLflow source marked, in the order of a poll
    names = [line.split()[2] for line in exporter.text().splitlines() if line.startswith("# TYPE")]
    assert names.index("mlops_mlflow_runs_tracked") + 1 == names.index("mlops_budget_monthly")


def test_a_reload_starts_absent_and_never_shows_compute_alone():
    first = Exporter(Stub("mlflow"), Stub("traces"))
    first.poll("mlflow", ledger(ms(20, 12), "2026-11", 20 * NANO))
    first.poll("traces", genai(ms(20, 12), **{"2026_11": 3 * NANO}))
    again = Exporter(Stub("mlflow"), Stub("traces"))  # SIGHUP: new sources, a new store
    shown = [budget(again.page()), budget(again.poll("mlflow", ledger(ms(20, 12, 1), "2026-11", 20 * NANO))),
             budget(again.poll("traces", genai(ms(20, 12, 1), **{"2026_11": 3 * NANO})))]
    assert shown == [None, None, 23]


def test_a_failing_input_keeps_its_last_facts():
    exporter = Exporter(Stub("mlflow"), Stub("traces"))
    exporter.poll("mlflow", ledger(ms(20, 12), "2026-11", 20 * NANO))
    exporter.poll("traces", genai(ms(20, 12), **{"2026_11": 3 * NANO}))

    def broken():
        raise RuntimeError("MLflow is down")

    exporter.sources["traces"].poll = broken
    assert not exporter.poller.poll_once(exporter.sources["traces"])
    m = exporter.poll("mlflow", ledger(ms(20, 12, 1), "2026-11", 21 * NANO))
    assert budget(m) == 24 and value(m, "mlops_source_up", source="traces") == 0


def test_the_month_turns_in_every_figure_at_once_with_a_slow_traces_source():
    exporter = Exporter(Stub("mlflow"), Stub("traces"))
    exporter.poll("mlflow", ledger(ms(30, 23, 55), "2026-11", 40 * NANO))
    m = exporter.poll("traces", genai(ms(30, 23, 58), **{"2026_11": 300 * NANO}))
    assert budget(m) == 340
    # 00:00:30 on the 1st: the MLflow source has turned the month, the traces source (last read at 23:58) has
    # not. November's 300 of GenAI spend must not count as December's: nothing of December is known from it yet.
    m = exporter.poll("mlflow", ledger(ms(1, 0, 0, 30, month=12), "2026-12", NANO // 100))
    assert budget(m) == pytest.approx(0.01)
    # the forecast counts the first day as a whole day: 0.01 x 31, not November's spend stretched x31
    assert budget(m, figure="mlops_budget_cost_forecast_month") == pytest.approx(0.01 * 31)
    m = exporter.poll("traces", genai(ms(1, 0, 1, month=12), **{"2026_11": 301 * NANO, "2026_12": NANO}))
    assert budget(m) == pytest.approx(1.01)


def test_the_month_turns_with_the_traces_source_first():
    exporter = Exporter(Stub("mlflow"), Stub("traces"))
    exporter.poll("mlflow", ledger(ms(30, 23, 59, 50), "2026-11", 40 * NANO))
    m = exporter.poll("traces", genai(ms(1, 0, 0, 10, month=12), **{"2026_11": 300 * NANO, "2026_12": 2 * NANO}))
    # December by the newest input; the compute facts are still November's, so none of them count in it
    assert budget(m) == 2
    # a budget over compute alone stays in the MLflow source's month until it polls again
    assert budget(m, "compute") == 40


def test_the_derived_stage_is_pure():
    from mlops_kpi_exporter.derived import Plan, derive

    plan = Plan.of(CONFIG, ["mlflow", "traces"])
    facts = {"mlflow": ledger(ms(20, 12), "2026-11", 20 * NANO), "traces": genai(ms(20, 12), **{"2026_11": NANO})}
    once, twice = derive(plan, facts), derive(plan, dict(facts))
    assert [generate_text(f) for f in once.slots["budgets"]] == [generate_text(f) for f in twice.slots["budgets"]]
    assert plan.inputs() == {"budgets": ("mlflow", "traces")}


def generate_text(metric) -> list:
    return [(s.name, tuple(sorted(s.labels.items())), s.value) for s in metric.samples]


def test_the_landing_page_names_what_a_joined_figure_waits_for():
    from prometheus_client.registry import CollectorRegistry

    from mlops_kpi_exporter.server import ExporterApp

    exporter = Exporter(Stub("mlflow"), Stub("traces"))
    exporter.poll("mlflow", ledger(ms(20, 12), "2026-11", 20 * NANO))
    page = ExporterApp(CollectorRegistry(), exporter.store, "t", {})._landing()
    assert "budgets figures: waiting for the first good poll of traces" in page and "of mlflow" not in page
    exporter.poll("traces", genai(ms(20, 12)))
    assert "waiting for" not in ExporterApp(CollectorRegistry(), exporter.store, "t", {})._landing()
