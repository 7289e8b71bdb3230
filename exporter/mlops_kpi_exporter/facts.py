"""What a source hands the derived stage after a good poll, besides its own families: an immutable
summary of the facts that figures of several sources need, stamped with the moment it describes.

A source never reads another; the derived stage (derived.py) joins the latest facts of each. A
source's facts are made once per good poll and never changed afterwards, so the derived stage may
read them from any thread while the source goes on updating its own books.

- the MLflow source: `RunFacts` (see below), the ledger's totals frozen at the poll;
- the traces source: `GenaiFacts`, GenAI cost per experiment and month;
- a billing source: its `Bill` (bill.py), which is never changed once read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class GenaiFacts:
    """The traces source's books as of `as_of_ms`: per experiment name, the priced GenAI cost by
    calendar month ("YYYY-MM" in runs.timezone), in nano-units of pricing.currency. Per-month
    counters, so that whoever reads them picks the month, never the traces source's clock."""

    as_of_ms: int
    month_cost: Mapping[str, Mapping[str, int]]  # experiment name -> month -> nano

    def cost_in(self, month: str) -> dict[str, int]:
        """Experiment name -> nano of `month` (0 for a month the books have nothing of)."""
        return {name: months.get(month, 0) for name, months in self.month_cost.items()}
