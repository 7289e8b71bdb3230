"""Runs as they really ran, in the ledger: a sweep's trials share their parent's machine, a crashed
run stops costing at its last sign of life. Costs worked out by hand from the prices."""

from __future__ import annotations

import random

import pytest

from mlops_kpi_exporter.config import PricingConfig
from mlops_kpi_exporter.ledger import RunLedger
from mlops_kpi_exporter.pricing import Pricer
from mlops_kpi_exporter.runs import MS_PER_HOUR, NANO, RunRules, make_facts

NOW = 1_794_744_000_000  # 2026-11-15 12:00 UTC
H = MS_PER_HOUR
DAY = 24 * H
RULES = RunRules(Pricer(PricingConfig(default_hourly_cost=0.5)), ("estimator",), "UTC")
P3 = {"instance_type": "p3.2xlarge"}  # 3.06 an hour in the catalog


def run(run_id, start, end=None, status=None, tags=None, parent=None, logged_at=(), now=NOW):
    tags = dict(tags or {})
    if parent:
        tags["mlflow.parentRunId"] = parent
    return make_facts(RULES, run_id=run_id, experiment_id="1", run_name=run_id, status=status or ("FINISHED" if end else "RUNNING"),
                      start_time=start, end_time=end, tags=tags, params={}, now_ms=now, logged_at=logged_at)


def sweep(trial_tags, overlapping=False):
    """A 2-hour parent on a p3.2xlarge with four 30-minute trials (or four 2-hour trials at once)."""
    start = NOW - 3 * H
    runs = [run("parent", start, start + 2 * H, tags=P3)]
    for i in range(4):
        t0 = start if overlapping else start + i * H // 2
        t1 = start + 2 * H if overlapping else t0 + H // 2
        runs.append(run(f"trial{i}", t0, t1, tags=trial_tags, parent="parent"))
    return runs


def ledger_of(runs, nested="auto", shuffle=None):
    book = RunLedger((3600.0,), (1.0,), nested=nested)
    if shuffle is not None:
        random.Random(shuffle).shuffle(runs)
    for facts in runs:
        book.upsert(facts)
    return book


def cost(book, status="FINISHED"):
    return book.status_totals(NOW)[("1", status)].cost_nano / NANO


@pytest.mark.parametrize("trial_tags", [{}, P3], ids=["untagged trials", "trials with the parent's tags"])
@pytest.mark.parametrize("seed", [None, 1, 2, 3])
def test_a_sequential_sweep_on_one_machine_is_costed_once(trial_tags, seed):
    book = ledger_of(sweep(trial_tags), shuffle=seed)
    assert cost(book) == pytest.approx(6.12)  # not 12.24: one machine for two hours
    assert book.status_totals(NOW)[("1", "FINISHED")].runs == 5  # the trials are runs all the same
    assert book.status_totals(NOW)[("1", "FINISHED")].run_ms == 2 * H
    assert [book.cost_of(book.runs[f"trial{i}"], NOW) / NANO for i in range(4)] == [pytest.approx(1.53)] * 4
    assert sum(book.duration_hist["1"].counts) == 5 and sum(book.cost_hist["1"].counts) == 1


def test_overlapping_trials_share_the_parents_hours():
    book = ledger_of(sweep({}, overlapping=True))
    assert cost(book) == pytest.approx(6.12)
    assert [book.cost_of(book.runs[f"trial{i}"], NOW) / NANO for i in range(4)] == [pytest.approx(1.53)] * 4


def test_trials_on_other_machines_are_costed_on_their_own_and_so_is_the_driver():
    book = ledger_of(sweep({"instance_type": "m5.xlarge"}))  # 0.192 an hour each
    assert cost(book) == pytest.approx(6.12 + 4 * 0.5 * 0.192)
    priced = ledger_of(sweep({"mlops.hourly_cost": "1.0"}))
    assert cost(priced) == pytest.approx(6.12 + 4 * 0.5 * 1.0)


def test_nested_separate_costs_every_run_on_its_own():
    book = ledger_of(sweep(P3), nested="separate")
    assert cost(book) == pytest.approx(12.24)
    assert cost(ledger_of(sweep({"instance_type": "m5.xlarge"}), nested="within_parent")) == pytest.approx(6.12)


def test_a_child_whose_parent_is_not_watched_or_gone_is_costed_on_its_own():
    runs = sweep({})
    book = ledger_of(runs[1:])  # the parent is not there
    assert cost(book) == pytest.approx(4 * 0.5 * 0.5)  # default price for untagged trials
    book.upsert(runs[0])  # the parent comes: its trials move into its cost
    assert cost(book) == pytest.approx(6.12)
    book.remove("parent")  # and goes
    assert cost(book) == pytest.approx(4 * 0.5 * 0.5)


def test_running_trials_inside_a_running_parent_burn_once():
    start = NOW - H
    book = ledger_of([run("parent", start, tags=P3), run("t", start, tags=P3, parent="parent")])
    assert book.running_hourly() == {"1": pytest.approx(3.06)}
    assert cost(book, "RUNNING") == pytest.approx(3.06)
    assert book.month_to_date(NOW, RULES)[0]["1"] / NANO == pytest.approx(3.06)


def test_a_crashed_run_stops_costing_at_its_last_sign_of_life():
    start = NOW - 40 * DAY
    crashed = run("crashed", start, tags=P3, logged_at=[start + H // 2, start + H])  # 40 days ago, then silence
    assert crashed.status == "STALE" and crashed.cost_nano(NOW) / NANO == pytest.approx(3.06)  # not 2,937.60
    silent = run("silent", start, tags=P3)  # logged nothing: costed nothing
    assert silent.status == "STALE" and silent.cost_nano(NOW) == 0
    book = ledger_of([crashed, silent])
    assert book.stale_counts() == {"1": 2}
    assert cost(book, "STALE") == pytest.approx(3.06)
    assert book.running_hourly() == {}  # not burning
    assert book.month_to_date(NOW, RULES)[0].get("1", 0) == 0  # its hour was last month


def test_a_healthy_long_run_that_logs_stays_running_and_billed_to_the_poll():
    start = NOW - 3 * DAY
    healthy = run("long", start, tags=P3, logged_at=[NOW - 5 * 60_000])
    assert healthy.status == "RUNNING" and healthy.cost_nano(NOW) / NANO == pytest.approx(3.06 * 72)


def test_a_stale_run_comes_back_to_life_without_loss_or_double_counting():
    start = NOW - 3 * DAY
    book = ledger_of([run("r", start, tags=P3, logged_at=[start + H])])
    assert book.stale_counts() == {"1": 1} and cost(book, "STALE") == pytest.approx(3.06)
    later = NOW + H
    book.upsert(run("r", start, tags=P3, logged_at=[start + H, later], now=later))  # it logs again
    assert book.stale_counts() == {} and len(book) == 1
    assert book.status_totals(later)[("1", "RUNNING")].cost_nano / NANO == pytest.approx(3.06 * 73)
    assert ("1", "STALE") not in book.status_totals(later)


def test_a_stale_run_closed_later_by_a_clean_up_keeps_its_last_sign_of_life():
    start = NOW - 40 * DAY
    for status in ("KILLED", "FAILED"):
        cleaned = run("r", start, NOW - H, status=status, tags=P3, logged_at=[start + H])
        assert cleaned.end_ms == start + H and cleaned.cost_nano(NOW) / NANO == pytest.approx(3.06)
    finished = run("r", start, start + 3 * DAY, status="FINISHED", tags=P3, logged_at=[start + H])
    assert finished.cost_nano(NOW) / NANO == pytest.approx(3.06 * 72)  # a run that finished ran to its end


def test_odd_metric_times_are_not_signs_of_life():
    start = NOW - 3 * DAY
    odd = run("r", start, tags=P3, logged_at=[NOW * 1000, 5, None, "x", start + H])
    assert odd.status == "STALE" and odd.last_alive_ms == start + H
