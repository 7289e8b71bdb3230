"""The second layer of the config: what the validated config (config/) turns into, built once.

The config models say what a user may write; this module builds from them what the sources, the
derived stage, `report` and the demo work with (rules, pricers), so that no part builds its own and
none imports a source to get them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from mlops_kpi_exporter.config import Config
from mlops_kpi_exporter.pricing import Pricer
from mlops_kpi_exporter.runs import RunRules


def run_rules(config: Config) -> RunRules:
    """What turns a run's data into facts (the MLflow source, `report` and the demo's bill use the same)."""
    return RunRules(
        pricer=Pricer(config.pricing),
        estimator_keys=tuple(config.runs.estimator_keys),
        timezone=config.runs.timezone,
        allocation_tags=tuple(config.allocation.tags),
        stale_after_ms=int(config.runs.stale_after * 1000),
        join_tags=tuple(dict.fromkeys(r.run_tag for r in config.billing.run_join if r.run_tag)),
    )


def unmatched(config: Config, watched: Iterable[str], kpis_without_experiment: Iterable[str] = (),
              bills: Sequence = ()) -> list[str]:
    """What `check` warns about: entries of the config that match nothing, so they would show nothing
    (a figure that is absent, not wrong). `watched`: the names of the watched experiments;
    `kpis_without_experiment`: KPIs whose experiment MLflow does not hold; `bills`: the bills read."""
    names = sorted(watched)
    out = []
    for budget in config.budgets:
        if "compute" in budget.include and not any(fnmatch.fnmatchcase(n, g) for n in names for g in budget.experiments):
            out.append(f"budgets[{budget.name}]: no watched experiment matches {', '.join(budget.experiments)}: "
                       f"its compute is 0 (mlflow.experiments decides what is watched)")
    for kpi in kpis_without_experiment:
        out.append(f"kpis[{kpi}]: MLflow has no experiment of that name: the KPI stays missing")
    if bills:
        carried = {rule for bill in bills for rule, *_ in bill.joined}
        for index, rule in enumerate(config.billing.run_join):
            if index not in carried:
                out.append(f"billing.run_join[{index}]: no row of the bills ({', '.join(sorted(b.name for b in bills))}) "
                           f"carries the tag {rule.bill_tag}: nothing is joined by it")
    return out
