"""The cloud bill joined to MLflow runs (billing.run_join): what each run really cost.

A bill row that a join rule matches (see FocusReader.join_one) names a key: a run id, or a value
that runs carry as a tag (a Databricks cluster id, a launcher's job name). Rows are kept grouped by
(rule, key, provider, month, charge period), never one by one.

Splitting, for each group and each cost basis alike:
- no watched run has the key: the cost stays unattributed (it still is on the bill);
- one run: all of it is that run's;
- several runs (a cluster that hosted them): the charge period's time when at least one of them ran
  is split between them in proportion to each one's running time inside the period; the time when
  none ran is the key's *idle* cost (a cluster left up between runs), kept apart, never spread.
  Example: a cluster costs 12.00 for the hour 10:00-11:00; run A ran 10:00-10:30, run B 10:15-10:45.
  Some run ran from 10:00 to 10:45, 45 minutes: 9.00 is shared, 3.00 (10:45-11:00) is idle. A ran
  30 of the 60 run-minutes inside the hour, B 30: 4.50 each.
Amounts are integer nano-units; rounding remainders go to the last run and the idle part, so the
pieces always add up to the row: nothing is counted twice or lost.

A run's billed cost is complete once every bill it was joined on has charges up to its end (bills
arrive a day or two late); until then it shows only its estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mlops_kpi_exporter.runs import RunFacts
from mlops_kpi_exporter.bill import add_costs as _add

Costs = list[int]  # nano: billed, effective, list


@dataclass
class Joined:
    """The joined bill: per run, and the totals the coverage and idle figures need."""

    run_costs: dict[str, dict[str, Costs]] = field(default_factory=dict)  # run id -> month -> costs
    run_bills: dict[str, set[tuple[str, str]]] = field(default_factory=dict)  # run id -> {(bill, provider)}
    attributed: dict[tuple[str, str, str], Costs] = field(default_factory=dict)  # (bill, provider, month)
    shared: dict[tuple[str, str, str], Costs] = field(default_factory=dict)  # split rows, idle included
    idle: dict[tuple[str, str, str, str], Costs] = field(default_factory=dict)  # (bill, provider, month, key)
    unmatched: dict[tuple[str, str, str], Costs] = field(default_factory=dict)  # a key no watched run has
    last_charge_ms: dict[tuple[str, str], int] = field(default_factory=dict)  # (bill, provider)

    def complete(self, run: RunFacts) -> bool:
        """Every bill the run was joined on has charges up to its end: its billed figure is final."""
        if run.end_ms is None or run.run_id not in self.run_costs:
            return False
        return all(self.last_charge_ms.get(key, 0) >= run.end_ms for key in self.run_bills[run.run_id])

    def run_total(self, run_id: str) -> Costs:
        total = [0, 0, 0]
        for costs in self.run_costs.get(run_id, {}).values():
            total = [a + b for a, b in zip(total, costs)]
        return total


def union_ms(intervals: list[tuple[int, int]]) -> int:
    """Length of the union of [start, end) intervals."""
    total, reach = 0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def split(cost: int, start_ms: int, end_ms: int, runs: list[tuple[str, int, int]]) -> tuple[dict[str, int], int]:
    """One row's cost over several runs (id, start, end): their shares and the idle rest (see above)."""
    period = end_ms - start_ms
    inside = [(rid, max(0, min(e, end_ms) - max(s, start_ms))) for rid, s, e in runs]
    busy = sum(ms for _, ms in inside)
    if period <= 0:  # an instant charge: nothing can be idle, shared evenly
        inside, busy, covered = [(rid, 1) for rid, _, _ in runs], len(runs), cost
    elif busy == 0:
        return {rid: 0 for rid, _, _ in runs}, cost
    else:
        clipped = [(max(s, start_ms), min(e, end_ms)) for _, s, e in runs if min(e, end_ms) > max(s, start_ms)]
        covered = cost * union_ms(clipped) // period
    shares, given = {}, 0
    for i, (rid, ms) in enumerate(inside):
        share = covered - given if i == len(inside) - 1 else covered * ms // busy
        shares[rid] = share
        given += share
    return shares, cost - covered


def join(bills: list, rules: tuple, runs_for: Callable[[int, str], list[RunFacts]], now_ms: int) -> Joined:
    """`bills`: the latest Bill of each source; `runs_for(rule index, key)`: the watched runs the key
    names. Only the months each bill shows are joined."""
    out = Joined()
    for bill in bills:
        months = set(bill.shown_months())
        for provider, end in bill.last_charge.items():
            out.last_charge_ms[(bill.name, provider)] = int(end * 1000)
        for (rule, key, provider, month, start, end), costs in sorted(bill.joined.items()):
            if month not in months or rule >= len(rules):
                continue
            where = (bill.name, provider, month)
            runs = sorted(runs_for(rule, key), key=lambda r: r.run_id)
            if not runs:
                _add(out.unmatched, where, costs)
                continue
            _add(out.attributed, where, costs)  # what is idle is taken back out below
            if len(runs) == 1:
                pieces = {runs[0].run_id: list(costs)}
            else:
                spans = [(r.run_id, r.start_ms, r.end_ms if r.end_ms is not None else max(r.start_ms, now_ms))
                         for r in runs]
                pieces = {r.run_id: [0, 0, 0] for r in runs}
                idle = [0, 0, 0]
                for basis, cost in enumerate(costs):
                    shares, idle[basis] = split(cost, start, end, spans)
                    for rid, share in shares.items():
                        pieces[rid][basis] = share
                _add(out.shared, where, costs)
                _add(out.idle, (*where, key), idle)
                _add(out.attributed, where, [-v for v in idle])
            for rid, piece in pieces.items():
                per_month = out.run_costs.setdefault(rid, {})
                per_month[month] = [a + b for a, b in zip(per_month.get(month, [0, 0, 0]), piece)]
                out.run_bills.setdefault(rid, set()).add((bill.name, provider))
    return out


def calibration_ratios(joined: Joined, ledger, now_ms: int, window_ms: int) -> dict[tuple[str, str], tuple[int, int]]:
    """Billed and estimated cost (nano) of the runs whose billed figure is complete and that ended
    within the window, by (bill provider, instance type): how far the prices are from the bill."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for run_id in joined.run_costs:
        run = ledger.runs.get(run_id)
        if run is None or not joined.complete(run) or run.end_ms < now_ms - window_ms:
            continue
        providers = {provider for _, provider in joined.run_bills[run_id]}
        provider = providers.pop() if len(providers) == 1 else "mixed"
        key = (provider, run.instance_type or "unknown")
        billed, estimated = out.get(key, (0, 0))
        out[key] = (billed + joined.run_total(run_id)[0], estimated + ledger.cost_of(run, now_ms))
    return out
