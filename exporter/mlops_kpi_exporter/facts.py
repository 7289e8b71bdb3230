"""What a source hands the derived stage after a good poll, besides its own families: an immutable
summary of the facts that figures of several sources need, stamped with the moment it describes.

A source never reads another; the derived stage (derived.py) joins the latest facts of each. A
source's facts are made once per good poll and never changed afterwards, so the derived stage may
read them from any thread while the source goes on updating its own books.

- the MLflow source: `LedgerFacts`, the ledger's totals frozen at the poll (and `RunsAtPoll`, its
  runs, only for the bill join);
- the traces source: `GenaiFacts`, GenAI cost per experiment and month;
- a billing source: its `Bill` (bill.py), which is never changed once read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mlops_kpi_exporter.ledger import RunLedger, share_of
from mlops_kpi_exporter.runs import RunFacts, RunRules


@dataclass(frozen=True)
class GenaiFacts:
    """The traces source's books as of `as_of_ms`: per experiment name, the priced GenAI cost by
    calendar month ("YYYY-MM" in runs.timezone), in nano-units of pricing.currency. Per-month
    counters, so that whoever reads them picks the month, never the traces source's clock."""

    as_of_ms: int
    month_cost: Mapping[str, Mapping[str, int]]  # experiment name -> month -> nano
    workspaces: bool = False  # the names are workspace/name (mlflow_workspaces.py)

    def cost_in(self, month: str) -> dict[str, int]:
        """Experiment name -> nano of `month` (0 for a month the books have nothing of)."""
        return {name: months.get(month, 0) for name, months in self.month_cost.items()}


@dataclass(frozen=True)
class RunsAtPoll:
    """The runs as they were at the poll, for the bill join (billing.run_join): RunFacts are immutable
    and the ledger replaces them when they change, so shallow copies of its tables are a snapshot."""

    runs: Mapping[str, RunFacts]
    join_index: Mapping[tuple[int, str], tuple[str, ...]]  # (join tag index, value) -> run ids
    children: Mapping[str, tuple[str, ...]]  # parent run id -> its children on its machine
    within: frozenset[str]  # runs on their parent's machine
    series: tuple[RunFacts, ...]  # the runs of the per-run series (runs.max_run_series)

    def cost_of(self, run: RunFacts, now_ms: int) -> int:
        return share_of(run, self.runs, self.children, self.within, now_ms)


@dataclass(frozen=True)
class LedgerFacts:
    """The MLflow source's books as of `as_of_ms`. Costs in nano-units; `month` is the calendar month
    of `as_of_ms` in runs.timezone. The calibration tables are filled only with
    pricing.calibrate_from_bill, `runs` only with billing.run_join."""

    as_of_ms: int
    experiments: Mapping[str, str]  # id -> name of the watched experiments
    month: str
    month_to_date: Mapping[str, int]  # experiment id -> cost within `month`, running runs up to as_of
    cost_by_experiment: Mapping[str, int] = field(default_factory=dict)
    catalog_by_experiment: Mapping[tuple[str, str, str], int] = field(default_factory=dict)  # (exp, provider, type)
    catalog_by_month_tag: Mapping[tuple[str, str, str, int, str], int] = field(default_factory=dict)
    month_tag_cost: Mapping[tuple[str, int, str], int] = field(default_factory=dict)  # (month, tag index, value)
    runs: RunsAtPoll | None = None
    workspaces: bool = False  # the names are workspace/name (mlflow_workspaces.py)

    def name(self, experiment_id: str) -> str:
        return self.experiments.get(experiment_id, experiment_id)

    @classmethod
    def of(cls, ledger: RunLedger, experiments: Mapping[str, str], now_ms: int, rules: RunRules,
           calibration: bool = False, join: bool = False, series: int = 100, workspaces: bool = False) -> LedgerFacts:
        """The ledger's totals as of now_ms; only what is asked for (the calibration tables, the runs
        for the bill join) is computed and copied."""
        month, _, _ = rules.month_bounds(now_ms)
        mtd, _, _ = ledger.month_to_date(now_ms, rules)
        tables: dict = {}
        if calibration:
            per_exp: dict[str, int] = {}
            for (exp_id, _), totals in ledger.status_totals(now_ms).items():
                per_exp[exp_id] = per_exp.get(exp_id, 0) + totals.cost_nano
            by_exp, by_month = ledger.catalog_costs(now_ms, rules)
            tables = {"cost_by_experiment": per_exp, "catalog_by_experiment": dict(by_exp),
                      "catalog_by_month_tag": dict(by_month), "month_tag_cost": dict(ledger.month_tag_costs(now_ms, rules))}
        runs = None
        if join:
            runs = RunsAtPoll(
                runs=dict(ledger.runs),
                join_index={key: tuple(ids) for key, ids in ledger.join_index.items()},
                children={parent: tuple(kids) for parent, kids in ledger.children.items()},
                within=frozenset(ledger.within),
                series=tuple(ledger.run_series(series)),
            )
        return cls(as_of_ms=now_ms, experiments=dict(experiments), month=month, month_to_date=mtd, runs=runs,
                   workspaces=workspaces, **tables)
