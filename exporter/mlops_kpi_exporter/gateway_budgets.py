"""What MLflow's AI Gateway says of its budget policies and their current windows: the REST replies of
`gateway/budgets/list` and `gateway/budgets/windows` read into plain data. Pure: no I/O, no clock.

Two spellings of a policy are read, field by field: MLflow's (3.11 on: `budget_amount`, `budget_unit`,
`duration {unit, value}`, `target_scope` + `target_value`, `budget_action`) and the earlier one
(`limit_usd`, `duration_type` or `duration_unit` + `duration_value`, `target_type`, `on_exceeded`).
The windows reply is read as a list of windows that each name their `budget_policy_id`, or as a map
from policy id to its window. An entry that cannot be read raises BadData (the caller skips and
counts it); a reply whose shape is neither raises BadData for the whole reply.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mlops_kpi_exporter.bad_data import BadData

INVALID = "invalid_data"
DURATION_SUFFIX = {"MINUTES": "m", "HOURS": "h", "DAYS": "d", "WEEKS": "w", "MONTHS": "mo"}
ENUM_VALUE = re.compile(r"^[A-Z][A-Z0-9_]{0,39}$")  # a proto enum name: what a label may carry, lower-cased
CURRENCY = re.compile(r"^[A-Z]{3}$")
MAX_TEXT = 200  # policy ids and targets longer than this are not MLflow's: refused, not shown


@dataclass(frozen=True)
class BudgetPolicy:
    policy_id: str
    limit: float  # in `unit`, per window
    unit: str  # an ISO currency code; MLflow has only USD
    duration: str  # the window's length: 15m, 1h, 1d, 1w, 1mo
    scope: str  # global | workspace | endpoint | user
    target: str  # the endpoint id (endpoint scope) or user name (user scope), else ""
    action: str  # alert | reject


@dataclass(frozen=True)
class BudgetWindow:
    """The current window of one policy, as the MLflow server process that answered counts it."""

    start_ms: int
    end_ms: int
    spend: float  # in the policy's unit, since start_ms


def _first(raw: Mapping[str, Any], *names: str) -> Any:
    """The value of the first of `names` the entry has (the current spelling first, then the older)."""
    for name in names:
        if raw.get(name) is not None:
            return raw[name]
    return None


def _amount(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadData(INVALID, f"{what} {value!r} is not a number")
    if not math.isfinite(value) or value < 0:
        raise BadData(INVALID, f"{what} {value!r} is not a finite amount of at least 0")
    return float(value)


def _millis(value: Any, what: str) -> int:
    # int64 fields come as numbers from MLflow, as strings from plain proto JSON
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadData(INVALID, f"{what} {value!r} is not a time in milliseconds")
    return value


def _enum(value: Any, what: str) -> str:
    if not isinstance(value, str) or not ENUM_VALUE.match(value.strip().upper()):
        raise BadData(INVALID, f"{what} {value!r} is not a name MLflow gives")
    return value.strip().upper()


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise BadData(INVALID, f"{what} is not a text of at most {MAX_TEXT} characters")
    return value


def _duration(raw: Mapping[str, Any]) -> str:
    nested = raw.get("duration")
    if isinstance(nested, Mapping):
        unit, value = nested.get("unit"), nested.get("value")
    else:
        # the earlier spelling: a window of one unit when no length is given
        unit, value = _first(raw, "duration_unit", "duration_type"), raw.get("duration_value")
        value = 1 if value is None else value
    unit = _enum(unit, "duration unit")
    if unit not in DURATION_SUFFIX:
        raise BadData(INVALID, f"duration unit {unit!r} is not one of {', '.join(DURATION_SUFFIX)}")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BadData(INVALID, f"duration value {value!r} is not a whole number above 0")
    return f"{value}{DURATION_SUFFIX[unit]}"


def policy_of(raw: Any) -> BudgetPolicy:
    """One policy of the list reply."""
    if not isinstance(raw, Mapping):
        raise BadData(INVALID, "a policy is not a JSON object")
    policy_id = _text(raw.get("budget_policy_id"), "budget_policy_id")
    if not policy_id:
        raise BadData(INVALID, "a policy without budget_policy_id")
    if raw.get("budget_amount") is not None:
        limit, unit = _amount(raw["budget_amount"], "budget_amount"), _enum(raw.get("budget_unit"), "budget_unit")
    else:  # the earlier spelling, in USD by its name
        limit, unit = _amount(raw.get("limit_usd"), "limit_usd"), "USD"
    if not CURRENCY.match(unit):
        raise BadData(INVALID, f"budget_unit {unit!r} is not a currency")
    action = _enum(_first(raw, "budget_action", "on_exceeded"), "budget_action")
    if action == "ALERT_AND_REJECT":  # an early MLflow's third action: it rejects, which is what alerts key on
        action = "REJECT"
    return BudgetPolicy(
        policy_id=policy_id, limit=limit, unit=unit, duration=_duration(raw),
        scope=_enum(_first(raw, "target_scope", "target_type"), "target_scope").lower(),
        target=_text(raw.get("target_value"), "target_value"), action=action.lower(),
    )


def _window_of(raw: Any) -> BudgetWindow:
    if not isinstance(raw, Mapping):
        raise BadData(INVALID, "a window is not a JSON object")
    start = _millis(raw.get("window_start_ms"), "window_start_ms")
    end = _millis(raw.get("window_end_ms"), "window_end_ms")
    if end <= start:
        raise BadData(INVALID, f"window_end_ms {end} is not after window_start_ms {start}")
    return BudgetWindow(start_ms=start, end_ms=end, spend=_amount(raw.get("current_spend"), "current_spend"))


def _reply(reply: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(reply, Mapping):
        raise BadData(INVALID, f"the {what} reply is not a JSON object")
    return reply


def policies_page(reply: Any) -> tuple[list[BudgetPolicy], list[BadData], str | None]:
    """(policies, the entries that cannot be read, the next page's token) of one list reply. MLflow
    leaves the key out of a reply with no policies."""
    entries = _reply(reply, "gateway/budgets/list").get("budget_policies") or []
    if not isinstance(entries, list):
        raise BadData(INVALID, "budget_policies is not a list")
    good, bad = [], []
    for entry in entries:
        try:
            good.append(policy_of(entry))
        except BadData as exc:
            bad.append(exc)
    token = reply.get("next_page_token") or None
    if token is not None and not isinstance(token, str):
        raise BadData(INVALID, "next_page_token is not a text")
    return good, bad, token


def windows_of(reply: Any) -> tuple[dict[str, BudgetWindow], list[BadData]]:
    """(policy id -> its window, the entries that cannot be read) of the windows reply, in either shape."""
    entries = _reply(reply, "gateway/budgets/windows").get("windows") or []
    if isinstance(entries, Mapping):  # keyed by policy id
        pairs: Iterable[tuple[Any, Any]] = entries.items()
    elif isinstance(entries, list):  # each names its policy
        pairs = ((e.get("budget_policy_id") if isinstance(e, Mapping) else None, e) for e in entries)
    else:
        raise BadData(INVALID, "windows is neither a list nor a map by policy id")
    good: dict[str, BudgetWindow] = {}
    bad: list[BadData] = []
    for policy_id, entry in pairs:
        try:
            policy_id = _text(policy_id, "budget_policy_id")
            if not policy_id:
                raise BadData(INVALID, "a window without budget_policy_id")
            good[policy_id] = _window_of(entry)
        except BadData as exc:
            bad.append(exc)
    return good, bad


def used_share(policy: BudgetPolicy, window: BudgetWindow | None) -> float:
    """Spend over limit; -1 without a window (nothing known), infinite for spend on a limit of 0."""
    if window is None:
        return -1.0
    if policy.limit > 0:
        return window.spend / policy.limit
    return math.inf if window.spend > 0 else 0.0


def nearest_their_limit(policies: Iterable[BudgetPolicy], windows: Mapping[str, BudgetWindow],
                        limit: int) -> list[BudgetPolicy]:
    """The `limit` policies most used of their limit, ties by id: the ones an alert must see."""
    ranked = sorted(policies, key=lambda p: (-used_share(p, windows.get(p.policy_id)), p.policy_id))
    return ranked[:limit]
