"""The join's arithmetic (bill_join.split) and its bounds: pure, from hand-built runs and bills."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from conftest import render, samples
from mlops_kpi_exporter.bill_join import calibration_ratios, join, split, union_ms
from mlops_kpi_exporter.config import PricingConfig
from mlops_kpi_exporter.ledger import RunLedger
from mlops_kpi_exporter.metrics import bill_join as metrics
from mlops_kpi_exporter.pricing import Pricer
from mlops_kpi_exporter.runs import MS_PER_HOUR, NANO, RunRules, make_facts
from mlops_kpi_exporter.bill import Bill
from mlops_kpi_exporter.facts import LedgerFacts
from mlops_kpi_exporter.views import BillView

NOW = 1_794_744_000_000  # 2026-11-15 12:00 UTC
H = MS_PER_HOUR
RULES = RunRules(Pricer(PricingConfig(default_hourly_cost=1.0)), ("estimator",), "UTC", join_tags=("cluster",))


def test_the_worked_example_of_the_readme():
    # 12.00 for 10:00-11:00; A ran 10:00-10:30, B 10:15-10:45: 9.00 shared half and half, 3.00 idle
    shares, idle = split(12 * NANO, 10 * H, 11 * H, [("a", 10 * H, 10 * H + H // 2), ("b", 10 * H + H // 4, 10 * H + 3 * H // 4)])
    assert shares == {"a": 4.5 * NANO, "b": 4.5 * NANO} and idle == 3 * NANO


def test_no_run_inside_the_period_leaves_it_all_idle_and_runs_covering_it_leave_none():
    assert split(10, 0, 100, [("a", -50, 0), ("b", 100, 200)]) == ({"a": 0, "b": 0}, 10)
    assert split(10, 0, 100, [("a", -50, 60), ("b", 40, 200)])[1] == 0


@given(cost=st.integers(-10**15, 10**15), start=st.integers(0, 10**6), length=st.integers(0, 10**6),
       spans=st.lists(st.tuples(st.integers(-10**6, 3 * 10**6), st.integers(0, 10**6)), min_size=2, max_size=6))
def test_the_pieces_always_add_up_to_the_row(cost, start, length, spans):
    runs = [(f"r{i}", s, s + d) for i, (s, d) in enumerate(spans)]
    shares, idle = split(cost, start, start + length, runs)
    assert sum(shares.values()) + idle == cost
    if cost >= 0:
        assert idle >= 0 and all(v >= 0 for v in shares.values())


def test_union_of_overlapping_spans():
    assert union_ms([(0, 10), (5, 15), (20, 30), (21, 22)]) == 25


def test_ten_thousand_joined_runs_keep_the_series_bounded():
    book = RunLedger((3600.0,), (1.0,))
    bill = Bill("aws", "USD", months=2, max_services=20, max_values=20, tags=())
    bill.last_charge["AWS"] = NOW / 1000
    for i in range(10_000):
        start = NOW - 48 * H + i * 10_000
        book.upsert(make_facts(RULES, run_id=f"{i:032x}", experiment_id=str(i % 3), run_name=f"r{i}", status="FINISHED",
                               start_time=start, end_time=start + H, now_ms=NOW, params={},
                               tags={"instance_type": f"type-{i % 100}", "cluster": f"c{i % 1000}"}))
        bill.joined[(0, f"{i:032x}", "AWS", "2026-11", start, start + H)] = [NANO, NANO, NANO]  # by run id
    for c in range(1000):  # each cluster a day long: shared by its ten runs, idle the rest
        bill.joined[(1, f"c{c}", "AWS", "2026-11", NOW - 48 * H, NOW - 24 * H)] = [24 * NANO] * 3
    bill.costs[("2026-11", "AWS", "Amazon EC2", "Compute")] = [10**13] * 3

    class Rule:
        def __init__(self, run=None, run_tag=None):
            self.run, self.run_tag = run, run_tag

    def runs_for(index, key):
        if index == 0:
            return [book.runs[key]] if key in book.runs else []
        return [book.runs[i] for i in book.join_index.get((0, key), ())]

    joined = join([bill], (Rule(run="run_id"), Rule(run_tag="cluster")), runs_for, NOW)
    facts = LedgerFacts.of(book, {"0": "a", "1": "b", "2": "c"}, NOW, RULES, join=True, series=100)
    ratios = calibration_ratios(joined, facts.runs, NOW, 30 * 24 * H)
    view = BillView(ledger=facts, currency="USD", timezone="UTC", joined=joined, calibration_ratios=ratios,
                    max_join_keys=20)
    m = samples(render(metrics.families(view)))
    count = lambda name: sum(1 for n, _ in m if n == name)  # noqa: E731
    assert count("mlops_run_billed_cost") == 100 * 3  # the per-run series' runs, three bases
    assert count("mlops_experiment_billed_cost") == 3 * 3
    assert count("mlops_billing_join_idle_cost") == 21 * 3  # 20 clusters and "other"
    assert count("mlops_price_calibration_ratio") == 21  # 20 machine types and "other"
    # nothing lost to the bounds: every run's own 1.00 and its cluster's busy share, the idle rest
    attributed = next(v for (n, labels), v in m.items() if n == "mlops_billing_attributed_cost" and ("cost_basis", "billed") in labels)
    idle = sum(v for (n, labels), v in m.items() if n == "mlops_billing_join_idle_cost" and ("cost_basis", "billed") in labels)
    assert attributed + idle == 10_000 + 1000 * 24
