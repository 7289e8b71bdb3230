"""Catalog prices calibrated by the bill (pricing.calibrate_from_bill).

The shipped catalog holds on-demand list prices; the bill says what compute really cost against its
list price (savings plans, reservations, negotiated discounts): EffectiveCost / ListCost of the
bill's compute rows, per provider, over the months it shows. Each billing source hands its sums here
after a good read; the MLflow source reads the factors when it renders, and shows the calibrated
estimate as figures of their own, never mixed into the list-price ones. Only runs priced from the
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


class Calibration:
    """The latest compute sums of each bill, shared by the billing sources (writers) and the MLflow
    source (reader); a lock, as sources poll on their own threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sums: dict[str, dict[str, tuple[int, int]]] = {}  # bill -> provider -> (effective, list) nano

    def update(self, bill: str, sums: dict[str, tuple[int, int]]) -> None:
        with self._lock:
            self._sums[bill] = dict(sums)

    def factors(self) -> dict[str, float]:
        """Effective over list cost of compute per catalog provider, all bills together; a provider
        whose compute has no list cost on the bill has no factor (its runs stay at list prices)."""
        with self._lock:
            effective: dict[str, int] = {}
            listed: dict[str, int] = {}
            for sums in self._sums.values():
                for provider, (eff, lst) in sums.items():
                    effective[provider] = effective.get(provider, 0) + eff
                    listed[provider] = listed.get(provider, 0) + lst
        return {p: effective[p] / listed[p] for p in sorted(listed) if listed[p] > 0 and effective[p] >= 0}
