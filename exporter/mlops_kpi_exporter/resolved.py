"""The second layer of the config: what the validated config (config/) turns into, built once.

The config models say what a user may write; this module builds from them what the sources, the
derived stage, `report` and the demo work with (rules, pricers), so that no part builds its own and
none imports a source to get them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mlops_kpi_exporter.config import Config
from mlops_kpi_exporter.mlflow_workspaces import matches
from mlops_kpi_exporter.genai_books import Rules as TraceRules
from mlops_kpi_exporter.pricing import Pricer
from mlops_kpi_exporter.runs import RunRules


@dataclass(frozen=True)
class Resolved:
    run_rules: RunRules  # what turns a run's data into facts (the MLflow source, `report`, the demo's bill)
    trace_rules: TraceRules  # what turns a trace into GenAI books (token pricing, months, breakdown)


def resolve(config: Config) -> Resolved:
    """The rules and pricers of a validated config, built at the first call and kept with it (a config
    is immutable: a reload is a new Config, so a new Resolved)."""
    if config._resolved is None:
        config._resolved = Resolved(
            run_rules=RunRules(
                pricer=Pricer(config.pricing),
                estimator_keys=tuple(config.runs.estimator_keys),
                timezone=config.runs.timezone,
                allocation_tags=tuple(config.allocation.tags),
                stale_after_ms=int(config.runs.stale_after * 1000),
                join_tags=tuple(dict.fromkeys(r.run_tag for r in config.billing.run_join if r.run_tag)),
            ),
            trace_rules=TraceRules.of(config),
        )
    return config._resolved


def run_rules(config: Config) -> RunRules:
    return resolve(config).run_rules


def unmatched(config: Config, watched: Iterable[str], kpis_without_experiment: Iterable[str] = (),
              bills: Sequence = (), workspaces: bool = False) -> list[str]:
    """What `check` warns about: entries of the config that match nothing, so they would show nothing
    (a figure that is absent, not wrong). `watched`: the names of the watched experiments;
    `kpis_without_experiment`: KPIs whose experiment MLflow does not hold; `bills`: the bills read."""
    names = sorted(watched)
    out = []
    for budget in config.budgets:
        if "compute" in budget.include and not any(matches(n, budget.experiments, workspaces) for n in names):
            out.append(f"budgets[{budget.name}]: no watched experiment matches {', '.join(budget.experiments)}: "
                       f"its compute is 0 (mlflow.experiments decides what is watched)")
    for node_type in config.pricing.databricks.dbus_per_hour if config.pricing.databricks else ():
        if run_rules(config).pricer.price_of(node_type) is None:
            out.append(f"pricing.databricks.dbus_per_hour[{node_type}]: neither pricing.instances nor the catalog "
                       f"prices this VM: clusters of it are priced at pricing.default_hourly_cost per node")
    for kpi in kpis_without_experiment:
        out.append(f"kpis[{kpi}]: MLflow has no experiment of that name: the KPI stays missing")
    if bills:
        carried = {rule for bill in bills for rule, *_ in bill.joined}
        for index, rule in enumerate(config.billing.run_join):
            if index not in carried:
                out.append(f"billing.run_join[{index}]: no row of the bills ({', '.join(sorted(b.name for b in bills))}) "
                           f"carries the tag {rule.bill_tag}: nothing is joined by it")
    return out
