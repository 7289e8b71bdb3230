"""What the billing sources share with the MLflow source: the latest bill each read.

Two things need the bill and the runs together: catalog prices calibrated by the bill
(pricing.calibrate_from_bill) and the bill joined to runs (billing.run_join). Each billing source
hands its latest good Bill here; the MLflow source reads them when it renders, so both figures come
from the same poll of the runs. Bills are never changed once read (a poll makes a new one).

Calibration: the shipped catalog holds on-demand list prices; the bill says what compute really cost
against its list price (savings plans, reservations, negotiated discounts): EffectiveCost / ListCost
of the bill's compute usage rows, per provider, over the months it shows. Only runs priced from the
catalog are scaled: a price from the config or a run tag is taken to be what you pay already.
"""

from __future__ import annotations

import threading

# The bill's provider names (FOCUS ProviderName / ServiceProviderName) as the catalog's sections.
PROVIDER_WORDS = (("aws", ("aws", "amazon")), ("gcp", ("google", "gcp")), ("azure", ("microsoft", "azure")))


def catalog_provider(bill_provider: str) -> str | None:
    """`AWS` -> aws, `Google Cloud` -> gcp, `Microsoft` -> azure; None for a provider the catalog lacks."""
    name = bill_provider.lower()
    return next((key for key, words in PROVIDER_WORDS if any(word in name for word in words)), None)


class SharedBills:
    """The latest good Bill of each billing source; a lock, as sources poll on their own threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bills: dict[str, object] = {}  # bill label -> Bill

    def update(self, bill) -> None:
        with self._lock:
            self._bills[bill.name] = bill

    def bills(self) -> list:
        with self._lock:
            return [self._bills[name] for name in sorted(self._bills)]

    def factors(self) -> dict[str, float]:
        """Effective over list cost of compute usage per catalog provider, all bills together, the
        months each shows; a provider whose compute has no list cost has no factor (list prices stay)."""
        effective: dict[str, int] = {}
        listed: dict[str, int] = {}
        for bill in self.bills():
            months = set(bill.shown_months())
            for (month, provider), costs in bill.compute_usage.items():
                key = catalog_provider(provider)
                if key is not None and month in months:
                    effective[key] = effective.get(key, 0) + costs[1]
                    listed[key] = listed.get(key, 0) + costs[2]
        return {p: effective[p] / listed[p] for p in sorted(listed) if listed[p] > 0 and effective[p] >= 0}
