"""The run ledger: exact sums whatever the order runs arrive in, bounded series, skip reasons."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlops_kpi_exporter.bad_data import BadData
from mlops_kpi_exporter.config import PricingConfig
from mlops_kpi_exporter.pricing import Pricer
from mlops_kpi_exporter.ledger import RunLedger
from mlops_kpi_exporter.runs import MS_PER_HOUR, NANO, RunRules, make_facts

NOW = 1_800_000_000_000  # a fixed "now" in ms
RULES = RunRules(Pricer(PricingConfig(default_hourly_cost=1.0)), ("estimator",), "UTC")


def facts(run_id="r", exp="1", status="FINISHED", start=NOW - 2 * MS_PER_HOUR, end=NOW - MS_PER_HOUR, tags=None):
    return make_facts(RULES, run_id=run_id, experiment_id=exp, run_name=None, status=status, start_time=start,
                      end_time=end, tags=tags or {}, params={}, now_ms=NOW)


def ledger() -> RunLedger:
    return RunLedger((60.0, 3600.0), (0.5, 1.0))


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"start": None}, "missing_start_time"),
        ({"start": 0}, "missing_start_time"),
        ({"start": "yesterday"}, "missing_start_time"),
        ({"start": float("nan")}, "missing_start_time"),
        ({"end": None}, "missing_end_time"),
        ({"end": NOW - 3 * MS_PER_HOUR}, "end_before_start"),
        ({"start": NOW + 25 * MS_PER_HOUR, "end": NOW + 26 * MS_PER_HOUR}, "start_in_future"),
        ({"status": "RUNNING", "start": NOW * 1000, "end": None}, "start_in_future"),  # microseconds
        ({"end": NOW * 1000}, "end_in_future"),  # time.time_ns() // 1000: past the year 9999
        ({"end": NOW + 25 * MS_PER_HOUR}, "end_in_future"),
        ({"start": 1_700_000_000, "end": 1_700_003_600}, "start_before_2000"),  # seconds, not ms
        ({"start": 946_684_799_999}, "start_before_2000"),
        ({"status": "EXPLODED"}, "unknown_status"),
        ({"tags": {"mlops.hourly_cost": "1e999"}}, "invalid_hourly_cost"),
        ({"tags": {"mlops.hourly_cost": "1e308"}}, "invalid_hourly_cost"),
        ({"tags": {"mlops.hourly_cost": "1000001"}}, "invalid_hourly_cost"),
        ({"tags": {"instance_count": "1e300"}}, "invalid_instance_count"),
        ({"tags": {"instance_count": "100001"}}, "invalid_instance_count"),
    ],
)
def test_impossible_runs_have_a_reason(kwargs, reason):
    with pytest.raises(BadData) as exc:
        facts(**kwargs)
    assert exc.value.reason == reason


def test_times_up_to_a_day_ahead_are_believed():
    """Clock skew between MLflow's clients and the exporter is not bad data."""
    run = facts(start=NOW + 23 * MS_PER_HOUR, end=NOW + 24 * MS_PER_HOUR)
    assert run.cost_nano(NOW) == NANO
    assert facts(status="RUNNING", start=NOW + MS_PER_HOUR, end=None).cost_nano(NOW) == 0


def test_an_unforeseen_error_skips_the_run_as_invalid_data():
    """Whatever else is wrong with a run's data, it is one skipped run, never a failed poll."""
    from types import SimpleNamespace

    from mlops_kpi_exporter.runs import facts_of

    info = SimpleNamespace(run_id="r", experiment_id="1", run_name=None, status="FINISHED",
                           start_time=NOW - MS_PER_HOUR, end_time=NOW)
    good = SimpleNamespace(info=info, data=SimpleNamespace(tags={}, params={}))
    assert facts_of(RULES, good, NOW).cost_nano(NOW) == NANO
    odd = SimpleNamespace(info=info, data=SimpleNamespace(tags={"estimator": object()}, params=None))
    with pytest.raises(BadData) as exc:  # tags whose values are not text: not foreseen anywhere
        facts_of(RULES, SimpleNamespace(info=info, data=SimpleNamespace(tags=42, params={})), NOW)
    assert exc.value.reason == "invalid_data"
    assert facts_of(RULES, odd, NOW).estimator  # a value of any type is made text, not a crash


def test_autologged_estimators_show_their_short_class_name():
    from mlops_kpi_exporter.config import RunsConfig

    rules = RunRules(Pricer(PricingConfig()), tuple(RunsConfig().estimator_keys))
    autolog = {"estimator_name": "LogisticRegression", "estimator_class": "sklearn.linear_model._logistic.LogisticRegression"}
    assert rules.estimator(autolog, {}) == "LogisticRegression"
    assert rules.estimator({"estimator_class": "xgboost.sklearn.XGBClassifier"}, {}) == "XGBClassifier"
    assert rules.estimator({"estimator": "TwoTower", **autolog}, {}) == "TwoTower"  # the run's own word first
    assert rules.estimator({"estimator": "v1.2 model"}, {}) == "v1.2 model"  # only dotted paths are shortened
    assert rules.estimator({}, {}) == "unknown"


def test_running_run_accrues_and_ignores_end_time():
    run = facts(status="RUNNING", end=None, start=NOW - MS_PER_HOUR)
    assert run.cost_nano(NOW) == NANO  # 1/h for one hour
    assert run.cost_nano(NOW + MS_PER_HOUR) == 2 * NANO
    scheduled = facts(status="SCHEDULED", end=None)
    assert scheduled.cost_nano(NOW) == 0


def test_upsert_replace_remove_keep_totals_exact():
    book = ledger()
    book.upsert(facts("a"))
    book.upsert(facts("b", tags={"estimator": "xgb"}))
    assert book.status_totals(NOW)[("1", "FINISHED")].cost_nano == 2 * NANO
    assert not book.upsert(facts("a"))  # same facts again: no change
    book.upsert(facts("a", status="FAILED"))  # late edit: moved between statuses
    totals = book.status_totals(NOW)
    assert totals[("1", "FINISHED")].runs == 1 and totals[("1", "FAILED")].runs == 1
    book.remove("a")
    book.remove("b")
    assert book.status_totals(NOW) == {}
    assert not book.estimators and not book.start_hours and not book.recent_closed
    assert not book.without_system and not book.system_runs
    assert book.duration_hist["1"].count == 0 and book.duration_hist["1"].total == 0


def test_skip_replaces_a_counted_run_and_back():
    book = ledger()
    book.upsert(facts("a"))
    book.skip("a", "1", "end_before_start")
    assert len(book) == 0 and book.skip_counts() == {"end_before_start": 1}
    book.upsert(facts("a"))
    assert len(book) == 1 and not book.skip_counts()


def test_start_hours_leave_the_window():
    book = ledger()
    book.upsert(facts("old", start=NOW - 40 * 24 * MS_PER_HOUR, end=NOW - 40 * 24 * MS_PER_HOUR + 1000))
    book.upsert(facts("new"))
    counts = book.start_hour_counts(NOW, 30 * 24 * MS_PER_HOUR)
    assert sum(counts.values()) == 1
    assert len(book.start_hours) == 1  # the stale hour was pruned
    book.remove("old")  # removing a run whose hour was pruned is harmless
    assert sum(book.start_hour_counts(NOW, 30 * 24 * MS_PER_HOUR).values()) == 1


def test_run_series_prefers_running_then_latest_ended():
    book = ledger()
    for i in range(5):
        book.upsert(facts(f"done{i}", start=NOW - 10 * MS_PER_HOUR, end=NOW - (5 - i) * MS_PER_HOUR))
    book.upsert(facts("live", status="RUNNING", end=None))
    assert [r.run_id for r in book.run_series(3)] == ["live", "done4", "done3"]
    assert book.run_series(0) == []
    assert len(book.run_series(100)) == 6


run_strategy = st.builds(
    dict,
    status=st.sampled_from(["FINISHED", "FAILED", "KILLED", "RUNNING"]),
    start=st.integers(NOW - 60 * 24 * MS_PER_HOUR, NOW),
    length=st.integers(0, 48 * MS_PER_HOUR),
    rate=st.floats(0, 100, allow_nan=False),
    exp=st.sampled_from(["1", "2", "3"]),
)


@given(st.lists(run_strategy, min_size=1, max_size=40), st.randoms())
def test_totals_do_not_depend_on_arrival_order(runs, rnd):
    all_facts = []
    for i, r in enumerate(runs):
        end = None if r["status"] == "RUNNING" else r["start"] + r["length"]
        all_facts.append(facts(f"r{i}", r["exp"], r["status"], r["start"], end, {"mlops.hourly_cost": repr(r["rate"])}))
    one, two = ledger(), ledger()
    for f in all_facts:
        one.upsert(f)
    shuffled = list(all_facts)
    rnd.shuffle(shuffled)
    for f in shuffled:
        two.upsert(facts(f.run_id, "9", "KILLED"))  # a wrong early version, later corrected
        two.upsert(f)
    assert one.status_totals(NOW) == two.status_totals(NOW)
    assert one.estimators == two.estimators and one.start_hours == two.start_hours
    assert {e: h.counts for e, h in one.cost_hist.items() if h.count} == {e: h.counts for e, h in two.cost_hist.items() if h.count}
    expected = sum(f.cost_nano(NOW) for f in all_facts)
    assert sum(t.cost_nano for t in one.status_totals(NOW).values()) == expected


def test_large_ledger_snapshot_does_not_scan_history():
    """Reading totals touches experiments and open runs only (the benchmark measures the time)."""
    book = ledger()
    rng = random.Random(1)
    for i in range(5000):
        start = NOW - rng.randint(1, 1000) * MS_PER_HOUR
        book.upsert(facts(f"r{i}", str(i % 4), "FINISHED", start, start + 1000))
    assert len(book.status_totals(NOW)) == 4
    assert len(book.run_series(10)) == 10


def test_recent_runs_stay_in_order_whatever_the_arrival_order():
    book = ledger()
    ends = [5, 1, 4, 2, 3]  # newest first and shuffled, as pages of a full sync bring them
    for i in ends:
        book.upsert(facts(f"r{i}", start=NOW - 10 * MS_PER_HOUR, end=NOW - (10 - i) * MS_PER_HOUR))
    book.remove("r4")
    book.upsert(facts("r6", start=NOW - 10 * MS_PER_HOUR, end=NOW - 3 * MS_PER_HOUR))
    assert [r.run_id for r in book.run_series(4)] == ["r6", "r5", "r3", "r2"]


# a sequence of ledger changes: (run number, None to remove it, or the hour it ended; -1 for running)
changes_strategy = st.lists(st.tuples(st.integers(0, 15), st.one_of(st.none(), st.integers(-1, 30))), max_size=60)


@given(changes_strategy, st.integers(1, 6), st.integers(1, 8))
def test_the_ledger_keeps_only_the_newest_ended_runs_and_still_shows_the_right_ones(changes, keep, limit):
    """run_series reads from the keep_recent newest ended runs only, not an index of every run: what it
    shows must still be what a full scan of every run picks, through adds, edits and removals."""
    book = RunLedger((60.0,), (1.0,), keep_recent=keep)
    for number, end_hour in changes:
        if end_hour is None:
            book.remove(f"r{number}")
        elif end_hour < 0:
            book.upsert(facts(f"r{number}", status="RUNNING", start=NOW - 40 * MS_PER_HOUR, end=None))
        else:
            book.upsert(facts(f"r{number}", start=NOW - 40 * MS_PER_HOUR, end=NOW - (30 - end_hour) * MS_PER_HOUR))
        assert len(book.recent_closed) <= max(keep, limit)
        running = sorted((r for r in book.runs.values() if r.open), key=lambda r: (r.start_ms, r.run_id), reverse=True)
        ended = sorted((r for r in book.runs.values() if not r.open), key=lambda r: (r.end_ms, r.run_id), reverse=True)
        expected = [r.run_id for r in (running + ended)[:limit]]
        assert [r.run_id for r in book.run_series(limit)] == expected


def test_a_run_within_one_month_holds_its_month_not_a_table_of_months():
    """The common case, a run inside one calendar month, costs the ledger one shared month string; a
    run across a month boundary keeps its split. Both read the same through month_costs."""
    first = 1_801_008_000_000  # 2027-01-26 ... a fixed time; the month boundary found by the rules
    _, month_start, _ = RULES.month_bounds(first)
    inside = facts("in", start=month_start + MS_PER_HOUR, end=month_start + 3 * MS_PER_HOUR)
    across = facts("across", start=month_start - MS_PER_HOUR, end=month_start + 2 * MS_PER_HOUR)
    assert inside.month and not inside.month_split
    assert inside.month_costs == ((inside.month, 2 * NANO),)
    assert not across.month and [nano for _, nano in across.month_costs] == [NANO, 2 * NANO]
    assert across.month_costs == RULES.month_costs(1.0, month_start - MS_PER_HOUR, month_start + 2 * MS_PER_HOUR)
    # equal values that many runs repeat are one object, not a copy per run
    again = facts("in2", start=month_start + MS_PER_HOUR, end=month_start + 2 * MS_PER_HOUR)
    assert again.month is inside.month and again.status is inside.status


def test_the_workspace_allocates_like_a_tag_without_one():
    from dataclasses import replace

    rules = replace(RULES, allocation_tags=("team", "mlflow.workspace"))
    assert rules.allocation({"team": "a", "mlflow.workspace": "spoofed"}, "team-a") == ("a", "team-a")
    assert rules.allocation({}, None) == ("untagged", "untagged")  # a server without workspaces
