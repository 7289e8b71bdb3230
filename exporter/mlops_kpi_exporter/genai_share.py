"""What the traces source shares with the MLflow source: the month-to-date GenAI cost per experiment,
for budgets that include GenAI spend (budgets[].include: [compute, genai]). The same handoff as the
bills' (bill_share): the traces source publishes after each good poll, the MLflow source reads it
when it renders its budgets."""

from __future__ import annotations

import threading


class SharedGenAI:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._month_to_date: dict[str, float] | None = None  # experiment name -> cost; None before a poll

    def update(self, month_to_date: dict[str, float]) -> None:
        with self._lock:
            self._month_to_date = dict(month_to_date)

    def month_to_date(self) -> dict[str, float] | None:
        with self._lock:
            return None if self._month_to_date is None else dict(self._month_to_date)


class Publishing:
    """The traces source, handing its month to date to the budgets after each good poll."""

    def __init__(self, source, shared: SharedGenAI):
        self.source, self.shared = source, shared
        self.name, self.interval, self.retry_backoff = source.name, source.interval, source.retry_backoff

    def check(self) -> str:
        return self.source.check()

    def poll(self):
        families, summary = self.source.poll()
        self.shared.update(self.source.month_to_date())
        return families, summary
