"""The derived stage: every figure that needs the facts of more than one source, from the latest
facts of each (facts.py). Pure functions, no I/O, no clock: the same facts give the same figures.

    budgets      the MLflow source's compute (and the traces source's GenAI spend, budgets[].include)
    calibration  catalog prices scaled by the bills (pricing.calibrate_from_bill), over the runs
    bill_join    the bills joined down to the runs (billing.run_join)

The snapshot store runs it whenever a source hands new facts and publishes its figures with the
sources' own as one snapshot. A figure whose inputs are not all in (a source not polled yet, or
failing since start) is absent, never partial: `mlops_derived_input_pending` says which input it
waits for. A failing source keeps its last good facts, so its figures stay as they were.

Months are the facts' months: a budget's month is that of the newest of its inputs, and each input
gives its counter for that month (nothing of it yet, if it has not polled since the month turned),
so no figure adds one month's spend to another's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter.bill import calibration_factors, catalog_provider
from mlops_kpi_exporter.bill_join import Joined, calibration_ratios, join
from mlops_kpi_exporter.config import Config
from mlops_kpi_exporter.mlflow_workspaces import matches
from mlops_kpi_exporter.facts import GenaiFacts, LedgerFacts
from mlops_kpi_exporter.metrics import bill_join as bill_join_metrics
from mlops_kpi_exporter.metrics import budgets as budget_metrics
from mlops_kpi_exporter.metrics import costs
from mlops_kpi_exporter.metrics.catalogue import family
from mlops_kpi_exporter.resolved import run_rules
from mlops_kpi_exporter.runs import RunRules
from mlops_kpi_exporter.snapshot import Derived
from mlops_kpi_exporter.views import BillView

MLFLOW, TRACES = "mlflow", "traces"  # the source names whose facts the figures read


@dataclass(frozen=True)
class Plan:
    """What the derived stage computes, and from which sources: built once from the config and the
    names of the sources this exporter (this shard) runs."""

    currency: str
    rules: RunRules  # the calendar months (runs.timezone)
    budgets: tuple = ()  # BudgetConfig
    bill_sources: tuple[str, ...] = ()  # the sources whose bills calibration and the join read
    calibrate: bool = False
    run_join: tuple = ()  # BillingRunJoin rules
    calibration_window_ms: int = 0
    max_join_keys: int = 20
    allocation_tags: tuple[str, ...] = ()
    allocation_max_values: int = 20
    bill_months: int = 0

    @classmethod
    def of(cls, config: Config, source_names: Sequence[str]) -> Plan:
        bills = tuple(n for n in source_names if n.startswith("billing:"))
        return cls(
            currency=config.pricing.currency, rules=run_rules(config), budgets=tuple(config.budgets),
            bill_sources=bills if (config.pricing.calibrate_from_bill or config.billing.run_join) else (),
            calibrate=config.pricing.calibrate_from_bill, run_join=tuple(config.billing.run_join),
            calibration_window_ms=int(config.billing.calibration_window * 1000),
            max_join_keys=config.billing.max_join_keys, allocation_tags=tuple(config.allocation.tags),
            allocation_max_values=config.allocation.max_values,
            bill_months=config.billing.months if config.billing.sources else 0,
        )

    def inputs(self) -> dict[str, tuple[str, ...]]:
        """Figure -> the sources whose facts it needs (only the figures the config asks for)."""
        out: dict[str, tuple[str, ...]] = {}
        if self.budgets:
            out["budgets"] = tuple(sorted({s for b in self.budgets for s in budget_inputs(b)}))
        if self.calibrate:
            out["calibration"] = (MLFLOW, *self.bill_sources)
        if self.run_join:
            out["bill_join"] = (MLFLOW, *self.bill_sources)
        return out


def budget_inputs(budget) -> tuple[str, ...]:
    return tuple(s for s, part in ((MLFLOW, "compute"), (TRACES, "genai")) if part in budget.include)


def derive(plan: Plan, facts: Mapping[str, object]) -> Derived:
    """The figures from the latest facts of each source (source name -> facts; a source not yet
    polled successfully is missing), by the place they take in the exposition (snapshot.slot)."""
    return Derived(slots={"budgets": tuple(budgets(plan, facts)), "bill": tuple(bill(plan, facts))},
                   pending=pending(plan, facts))


def pending(plan: Plan, facts: Mapping[str, object]) -> tuple[Metric, ...]:
    inputs = plan.inputs()
    if not inputs:
        return ()
    gauge = family("mlops_derived_input_pending")
    for figure, sources in inputs.items():
        for source in sources:
            gauge.add_metric([figure, source], 0 if facts.get(source) is not None else 1)
    return (gauge,)


def budgets(plan: Plan, facts: Mapping[str, object]) -> list[Metric]:
    ledger, genai = facts.get(MLFLOW), facts.get(TRACES)
    spent = []
    for budget in plan.budgets:
        inputs = [facts.get(s) for s in budget_inputs(budget)]
        if any(f is None for f in inputs):
            continue  # absent until every input is known
        as_of = max(f.as_of_ms for f in inputs)  # type: ignore[union-attr]
        month, first_ms, following_ms = plan.rules.month_bounds(as_of)
        nano = 0
        if isinstance(ledger, LedgerFacts) and "compute" in budget.include and ledger.month == month:
            nano += sum(n for e, n in ledger.month_to_date.items() if _covers(budget, ledger.name(e), ledger.workspaces))
        if isinstance(genai, GenaiFacts) and "genai" in budget.include:
            nano += sum(n for name, n in genai.cost_in(month).items() if _covers(budget, name, genai.workspaces))
        spent.append((budget, nano, budget_metrics.forecast_scale(as_of, first_ms, following_ms - first_ms)))
    return budget_metrics.families(spent, plan.currency)


def _covers(budget, experiment: str, workspaces: bool) -> bool:
    """With workspaces, `churn-*` covers churn-* in every workspace, `team-a/*` all of team-a's."""
    return matches(experiment, budget.experiments, workspaces)


def bill(plan: Plan, facts: Mapping[str, object]) -> list[Metric]:
    """Calibration and the run join: both need the runs and every bill this exporter reads."""
    if not (plan.calibrate or plan.run_join):
        return []
    ledger, bills = facts.get(MLFLOW), [facts.get(name) for name in plan.bill_sources]
    if not isinstance(ledger, LedgerFacts) or any(b is None for b in bills):
        return []
    bills = sorted(bills, key=lambda b: b.name)  # type: ignore[union-attr]
    joined, ratios = None, {}
    if plan.run_join and ledger.runs is not None:
        joined = join(bills, plan.run_join, _runs_for(plan, ledger), ledger.as_of_ms)
        ratios = calibration_ratios(joined, ledger.runs, ledger.as_of_ms, plan.calibration_window_ms)
    by_type = {}
    for (provider, kind), (billed, estimated) in ratios.items():
        if catalog_provider(provider) and estimated > 0:
            by_type[(catalog_provider(provider), kind)] = billed / estimated
    view = BillView(
        ledger=ledger, currency=plan.currency, timezone=plan.rules.timezone, allocation_tags=plan.allocation_tags,
        allocation_max_values=plan.allocation_max_values, bill_months=plan.bill_months,
        calibration=calibration_factors(bills) if plan.calibrate else None,
        calibration_by_type=by_type if plan.calibrate else {}, joined=joined, calibration_ratios=ratios,
        max_join_keys=plan.max_join_keys,
        billed_catalog=billed_catalog(joined, ledger) if plan.calibrate and joined is not None else {},
    )
    return [*costs.calibrated(view), *bill_join_metrics.families(view)]


def _runs_for(plan: Plan, ledger: LedgerFacts):
    runs = ledger.runs
    assert runs is not None
    join_tags = plan.rules.join_tags

    def runs_for(index: int, key: str) -> list:
        rule = plan.run_join[index]
        if rule.run == "run_id":
            run = runs.runs.get(key)
            return [run] if run is not None else []
        return [runs.runs[i] for i in runs.join_index.get((join_tags.index(rule.run_tag), key), ())]

    return runs_for


def billed_catalog(joined: Joined, ledger: LedgerFacts) -> dict[str, Counter]:
    """The catalog-priced cost of the runs whose billed cost is complete, keyed as the ledger's
    catalog tables: calibration leaves these runs as they are (their bill stands apart)."""
    runs = ledger.runs
    by_exp: Counter = Counter()
    by_month: Counter = Counter()
    if runs is None:
        return {}
    for run_id in joined.run_costs:
        run = runs.runs.get(run_id)
        if run is None or not run.catalog_provider or run_id in runs.within or not joined.complete(run):
            continue
        kind = run.instance_type or ""
        by_exp[(run.experiment_id, run.catalog_provider, kind)] += run.cost_nano(0)
        for month, piece in run.month_costs:
            for index, value in enumerate(run.allocation):
                by_month[(run.catalog_provider, kind, month, index, value)] += piece
    return {"by_exp": by_exp, "by_month": by_month}
