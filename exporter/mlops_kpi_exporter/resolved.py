"""The second layer of the config: what the validated config (config/) turns into, built once.

The config models say what a user may write; this module builds from them what the sources, the
derived stage, `report` and the demo work with (rules, pricers), so that no part builds its own and
none imports a source to get them.
"""

from __future__ import annotations

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
