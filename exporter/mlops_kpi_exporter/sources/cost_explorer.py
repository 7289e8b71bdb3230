"""The AWS bill from the Cost Explorer API (`GetCostAndUsage`, boto3), as the same Bill the FOCUS
source builds, so the same metrics render it.

What is asked: MONTHLY figures from the first day of the month `billing.months - 1` months before the
current UTC month to tomorrow (End is exclusive, so today is in), grouped by SERVICE and one
allocation tag. Each allocation tag costs a pair of requests:

- Metrics UnblendedCost and AmortizedCost, every record type;
- the same, Filter RECORD_TYPE in (Usage, DiscountedUsage, SavingsPlanCoveredUsage): usage records.

Cost bases (Cost Explorer has no public list price):

- billed    <- UnblendedCost: what the invoice charges, credits, refunds, fees and taxes included;
- effective <- AmortizedCost: upfront and recurring commitment fees spread over the usage they cover;
- list      <- UnblendedCost of usage records only: usage at the rate it ran at, before credits,
  refunds, discounts and savings-plan negations (savings-plan covered usage is at its on-demand
  rate). Reserved-instance covered usage (DiscountedUsage) is zero there, as in the bill, and RI
  fees are left out: with reserved instances `list` is below the on-demand price, and the
  effective/list ratio of pricing.calibrate_from_bill too high (their amortized fees are in
  `effective`, their usage is not in `list`).

The compute usage that pricing.calibrate_from_bill compares (Bill.compute_usage, as FOCUS rows of
ChargeCategory Usage) is the usage records of compute services: billed and list their UnblendedCost,
effective their AmortizedCost (commitments spread over the usage they cover; unused commitment fees,
credits and taxes are not usage).

Grouping: a tag's group keys come back as `key$value`; `key$` (no value) is `untagged`. A tag with
several `allocation.tag_aliases` is asked for by its FIRST alias key only (a request pair per alias
would multiply the billed calls), with a leading `user:` dropped (the FOCUS export writes AWS user
tags as `user:team`, Cost Explorer names the cost allocation tag `team`). The service totals are the
first tag's groups summed over its values, so no separate request; with no allocation tags, one pair
grouped by SERVICE only. Calls per poll: 2 x max(1, tags), plus one per further page (NextPageToken).

The provider is "AWS"; a service's category is "Compute" or "AI and Machine Learning" for the
services in COMPUTE_SERVICES / AI_SERVICES (what MLflow's run estimates price), else "Other".

Freshness: Cost Explorer has no charge periods and does not say up to when its figures go (AWS
refreshes them at least once a day). `last_charge` is min(now, End of the latest period that has
groups): the open month's period ends at the request's End (tomorrow), so that is the time of the
poll that read it; a past month's period ends on the 1st of the next. So `MLCloudBillStale` catches
a source that has stopped answering (failed polls keep the last figures, which age), not the day or
so by which the bill itself lags.
A ResultsByTime with Estimated true is normal (the open month).

Every request is billed (USD 0.01): calls are counted per UTC day and a poll that would go over
`max_calls_per_day` is put off (the poll fails, the last figures stay); a poll less than the interval
after the last good one returns the last figures without a call. The day's count, the time of the
last good poll and its bill are kept in the state directory (state.py), written before each call:
a restart or a reload (even a crash loop) never spends the day's budget again, and one within the
interval makes no call at all.
"""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import date, datetime, timedelta, timezone

from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter.config import Config, ConfigError
from mlops_kpi_exporter.metrics.catalogue import family
from mlops_kpi_exporter.config.billing import BillingSource as BillingSourceConfig
from mlops_kpi_exporter.config.billing import tag_keys
from mlops_kpi_exporter.metrics import billing as billing_metrics
from mlops_kpi_exporter.runs import UNTAGGED
from mlops_kpi_exporter.sources import aws
from mlops_kpi_exporter.bill import COMPUTE_CATEGORIES, Bill, FileTotals, to_nano
from mlops_kpi_exporter.bill import add_costs as _add
from mlops_kpi_exporter.state import StateFile

log = logging.getLogger(__name__)

PROVIDER = "AWS"
COMPUTE = "Compute"
AI = "AI and Machine Learning"
assert {COMPUTE, AI} <= COMPUTE_CATEGORIES  # the by_tag compute flag means the same as in FOCUS bills
# Cost Explorer SERVICE names (EC2 - Other is EBS, NAT gateways, data transfer: not compute)
COMPUTE_SERVICES = frozenset({
    "Amazon Elastic Compute Cloud - Compute",
    "Amazon Elastic Container Service",
    "Amazon Elastic Container Service for Kubernetes",  # EKS, as Cost Explorer names it
    "Amazon Elastic Kubernetes Service",
    "AWS Batch",
    "AWS Lambda",
})
AI_SERVICES = frozenset({"Amazon SageMaker", "Amazon Bedrock"})
AI_SUFFIX = "(Amazon Bedrock Edition)"  # third-party models sold through Bedrock, e.g. "Claude 3 Haiku (Amazon Bedrock Edition)"
USAGE_RECORDS = ("Usage", "DiscountedUsage", "SavingsPlanCoveredUsage")
ALL_METRICS = ("UnblendedCost", "AmortizedCost")  # billed, effective; of usage records: list, and effective of usage
DAY = 86400.0


class CostExplorerError(RuntimeError):
    """A poll that failed: the message says why, with no credential in it."""


class CallBudgetSpent(CostExplorerError):
    """The day's budget of billed calls would be exceeded: no call was made."""


def category(service: str) -> str:
    if service in COMPUTE_SERVICES:
        return COMPUTE
    if service in AI_SERVICES or service.endswith(AI_SUFFIX):
        return AI
    return "Other"


def ce_tag_key(tag: str, aliases: dict[str, list[str]]) -> str:
    """The cost allocation tag Cost Explorer is asked to group by: the tag's first alias key, no `user:`."""
    key = tag_keys(tag, aliases)[0]
    return key[5:] if key.startswith("user:") and len(key) > 5 else key


def tag_value(group_key: str) -> str:
    """`team$vision` -> vision; `team$` -> untagged; bounded to 100 characters as in FOCUS bills."""
    value = group_key.split("$", 1)[1] if "$" in group_key else group_key
    return value.strip()[:100] or UNTAGGED


def time_period(now: datetime, months: int) -> dict[str, str]:
    """From the first day of the month `months - 1` before now's (UTC) to tomorrow (End is exclusive)."""
    index = now.year * 12 + (now.month - 1) - (months - 1)
    start = date(index // 12, index % 12 + 1, 1)
    end = now.date() + timedelta(days=1)
    return {"Start": start.isoformat(), "End": end.isoformat()}


def _parse_kept(data: dict) -> dict:
    """The state file's document, checked part by part (it may have been edited by hand)."""
    day = date.fromisoformat(data["day"]) if data["day"] is not None else None
    calls, good = data["calls_today"], data["last_good_calls"]
    if type(calls) is not int or calls < 0 or type(good) is not int or good < 0:
        raise ValueError(f"call counts {calls!r}, {good!r} are not counts")
    last = data["last_success"]
    if last is not None and type(last) not in (int, float):
        raise ValueError(f"last_success {last!r} is not a time")
    bill = FileTotals.from_json(data["bill"]) if data["bill"] is not None else None
    return {"day": day, "calls_today": calls, "last_good_calls": good, "last_success": last, "bill": bill,
            "bill_calls": int(data["bill_calls"]), "asks": data["asks"]}


def _day_start(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)


class CostExplorerSource:
    """One configured Cost Explorer bill, polled on the billing interval within a daily call budget."""

    def __init__(self, source: BillingSourceConfig, config: Config, clock=time.time):
        if source.cost_explorer is None:
            raise ConfigError(f"billing.sources[{source.name}]: no cost_explorer settings")
        self.settings = source.cost_explorer
        self.name = f"billing:{source.name}"
        self.label = source.name
        self.interval = config.billing.poll_interval
        self.retry_backoff = min(300.0, config.billing.poll_interval)
        self.config = config
        self.clock = clock
        self.max_calls = self.settings.max_calls_per_day
        aliases = dict(config.allocation.tag_aliases)
        self.tags = tuple(config.allocation.tags)
        self.keys = {tag: ce_tag_key(tag, aliases) for tag in self.tags}
        self.client = aws.client("ce", self.settings, f"billing.sources[{source.name}].cost_explorer")
        self.min_calls = 2 * max(1, len(self.tags))  # a poll, without further pages
        self.day: date | None = None
        self.calls_today = 0
        self.calls_total = 0  # since start, for a counter if one is wanted
        self.calls_made = 0  # in the poll under way
        self.calls_last_poll = 0
        self.last_good_calls = 0  # calls of the last successful poll, pages included
        self.last_success: float | None = None  # clock() at the start of the last good poll
        self.last_families: list[Metric] | None = None
        self.last_bill: Bill | None = None  # of the latest good poll (pricing.calibrate_from_bill reads it)
        self.last_summary = ""
        self.last_totals: FileTotals | None = None  # what last_bill was made of, as the state file keeps it
        self.state = StateFile(config.state_dir, "cost-explorer", source.name)
        self._restore()

    # -- the daily budget --------------------------------------------------------------------
    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), timezone.utc)

    def _roll(self, now: datetime) -> None:
        if now.date() != self.day:
            self.day, self.calls_today = now.date(), 0

    def _reset_at(self) -> str:
        return (datetime.combine(self.day, datetime.min.time(), timezone.utc) + timedelta(days=1)).strftime(
            "%Y-%m-%dT%H:%M:%SZ")

    def _spent(self, needed: str) -> CallBudgetSpent:
        return CallBudgetSpent(
            f"the Cost Explorer budget of {self.max_calls} calls a day (cost_explorer.max_calls_per_day) is spent: "
            f"{self.calls_today} made today, {needed}; it resets at {self._reset_at()} (UTC midnight); the last "
            f"figures stay")

    def calls_needed(self) -> int:
        """What the next poll is expected to make: the pair per tag, or the last good poll's pages."""
        return max(self.min_calls, self.last_good_calls)

    def _spend(self) -> None:
        """Count one billed call, or refuse it if it would go over the day's budget."""
        self._roll(self._now())
        if self.calls_today + 1 > self.max_calls:
            raise self._spent(f"this poll needs more pages than its {self.calls_made} calls so far; no further call made")
        self.calls_today += 1
        self.calls_total += 1
        self.calls_made += 1
        self._save()  # before the call: a crash during it still counts it

    # -- Source ------------------------------------------------------------------------------
    def check(self) -> str:
        """What a poll will ask and what it costs; no network call (every call is billed)."""
        period = time_period(self._now(), self.config.billing.months)
        where = self.settings.endpoint_url or f"region {self.settings.region or 'from the AWS chain'}"
        grouping = ", ".join(f"{t} (tag {k})" for t, k in self.keys.items()) or "SERVICE only"
        per_day = math.ceil(DAY / self.interval) * self.min_calls
        line = (f"Cost Explorer GetCostAndUsage at {where}: MONTHLY {period['Start']} to {period['End']}, by SERVICE "
                f"and {grouping}; {self.min_calls} billed calls a poll (more if paged) every "
                f"{self.interval:g}s: about {per_day} a day, budget {self.max_calls} a day")
        if per_day > self.max_calls:
            line += " (polls beyond the budget are put off: lengthen billing.poll_interval or raise max_calls_per_day)"
        return line

    def poll(self) -> tuple[list[Metric], str]:
        started = self.clock()
        now = datetime.fromtimestamp(started, timezone.utc)
        if (self.last_families is not None and self.last_success is not None
                and started - self.last_success < self.interval * 0.9):
            # a little under the interval, so the scheduler's own runs are never skipped
            return self.last_families, (
                f"last figures again, no Cost Explorer call: the last poll was {started - self.last_success:.0f}s ago, "
                f"under the {self.interval:g}s interval")
        self._roll(now)
        needed = self.calls_needed()
        if self.calls_today + needed > self.max_calls:
            whole = (" (more than the whole budget: raise max_calls_per_day or list fewer allocation tags)"
                     if needed > self.max_calls else "")
            raise self._spent(f"a poll needs {needed}{whole}; no call made")
        bill = self.read(now)
        calls = family("mlops_billing_api_calls_total")
        calls.add_metric([self.label], self.calls_total)
        families = [*billing_metrics.families(bill), calls]
        self.last_success, self.last_good_calls, self.last_families = started, bill.files, families
        self.last_bill, self.last_totals = bill, self._read_totals
        self._save()
        summary = (f"{bill.files} Cost Explorer calls ({self.calls_today} of {self.max_calls} today), "
                   f"{bill.rows:,} groups, months {', '.join(bill.shown_months())}")
        self.last_summary = summary
        return families, summary

    def facts(self) -> Bill | None:
        """What the derived stage joins (calibration); None before a good poll."""
        return self.last_bill

    # -- what survives a restart -----------------------------------------------------------------
    def _asks(self) -> dict:
        """What a kept bill depends on besides the bill: one read under another config is not kept."""
        return {"keys": self.keys, "months": self.config.billing.months, "currency": self.config.pricing.currency}

    def _save(self) -> None:
        self.state.save({
            "day": self.day.isoformat() if self.day else None, "calls_today": self.calls_today,
            "last_success": self.last_success, "last_good_calls": self.last_good_calls, "asks": self._asks(),
            "bill": self.last_totals.to_json() if self.last_totals is not None and self.last_bill is not None else None,
            "bill_calls": self.last_bill.files if self.last_bill is not None else 0,
        })

    def _restore(self) -> None:
        kept = self.state.load(_parse_kept)
        if kept is None:
            return
        self.day, self.calls_today = kept["day"], kept["calls_today"]
        self.last_good_calls = kept["last_good_calls"]
        if kept["bill"] is None or kept["asks"] != json.loads(json.dumps(self._asks())):
            return  # the day's calls stand; a bill read under another config does not
        self.last_totals = kept["bill"]
        self.last_bill = self._bill(self.last_totals, kept["bill_calls"])
        self.last_success = kept["last_success"]
        calls = family("mlops_billing_api_calls_total")
        calls.add_metric([self.label], self.calls_total)
        self.last_families = [*billing_metrics.families(self.last_bill), calls]
        log.info("%s: %d Cost Explorer calls made today (UTC %s) and the last bill kept from before the restart",
                 self.name, self.calls_today, self.day)

    def _bill(self, totals: FileTotals, calls: int) -> Bill:
        billing = self.config.billing
        bill = Bill(self.label, self.config.pricing.currency, billing.months, billing.max_services,
                    self.config.allocation.max_values, self.tags)
        bill.add(totals)
        bill.files = calls
        return bill

    # -- reading -----------------------------------------------------------------------------
    def _get(self, request: dict) -> list[dict]:
        """Every page of one request (each page a billed call): their ResultsByTime."""
        from botocore.exceptions import BotoCoreError, ClientError

        results: list[dict] = []
        token = None
        while True:
            self._spend()
            try:
                page = self.client.get_cost_and_usage(**request, **({"NextPageToken": token} if token else {}))
            except (ClientError, BotoCoreError) as exc:
                text = " ".join(aws.describe_error(exc).split())  # one line, whatever the answer held
                raise CostExplorerError(f"Cost Explorer GetCostAndUsage: {text}") from None
            results += page.get("ResultsByTime") or []
            token = page.get("NextPageToken")
            if not token:
                return results

    def _request(self, period: dict, tag_key: str | None, usage_only: bool) -> dict:
        group_by = [{"Type": "DIMENSION", "Key": "SERVICE"}]
        if tag_key is not None:
            group_by.append({"Type": "TAG", "Key": tag_key})
        request = {"TimePeriod": period, "Granularity": "MONTHLY", "Metrics": list(ALL_METRICS), "GroupBy": group_by}
        if usage_only:
            request["Filter"] = {"Dimensions": {"Key": "RECORD_TYPE", "Values": list(USAGE_RECORDS)}}
        return request

    def _groups(self, results: list[dict], metrics: tuple[str, ...], totals: FileTotals,
                latest: list[float]) -> dict[tuple[str, str, str], list[int]]:
        """(month, service, tag value or '') -> nano amounts of `metrics`, summed over pages."""
        currency = self.config.pricing.currency
        out: dict[tuple[str, str, str], list[int]] = {}
        for result in results:
            period = result.get("TimePeriod") or {}
            start = str(period.get("Start") or "")
            try:
                _day_start(start)
                end = _day_start(str(period.get("End") or "")).timestamp()
            except ValueError:
                raise CostExplorerError(f"Cost Explorer answered a period {period!r}, not YYYY-MM-DD dates") from None
            groups = result.get("Groups") or []
            for group in groups:
                keys = [str(k) for k in group.get("Keys") or []]
                service = (keys[0].strip() if keys else "") or "unknown"
                value = tag_value(keys[1]) if len(keys) > 1 else ""
                amounts = []
                for metric in metrics:
                    entry = (group.get("Metrics") or {}).get(metric) or {}
                    unit = str(entry.get("Unit") or "").strip()
                    if unit and unit != currency:
                        raise CostExplorerError(
                            f"Cost Explorer answered {metric} in {unit}, not pricing.currency {currency}: "
                            f"amounts are never summed across currencies")
                    try:
                        amounts.append(to_nano(entry.get("Amount")))
                    except ValueError as exc:
                        raise CostExplorerError(f"Cost Explorer {metric} of {service} in {start[:7]}: {exc}") from None
                _add(out, (start[:7], service, value), amounts)
                totals.rows += 1
            if groups:
                latest[0] = max(latest[0], end)
        return out

    def read(self, now: datetime | None = None) -> Bill:
        """The bill now (`report` calls this too): the requests in a fixed order, per tag (or once, by
        service only) all record types (every page), then usage records (every page). Each call is
        counted against the day's budget (a call beyond it is refused); no interval guard here."""
        now = now or self._now()
        self.calls_made = 0
        try:
            return self._read(now)
        finally:
            self.calls_last_poll = self.calls_made

    def _read(self, now: datetime) -> Bill:
        period = time_period(now, self.config.billing.months)
        totals = FileTotals()
        latest = [0.0]
        for index, tag in enumerate(self.tags or (None,)):
            key = self.keys[tag] if tag is not None else None
            both = self._groups(self._get(self._request(period, key, False)), ALL_METRICS, totals, latest)
            usage = self._groups(self._get(self._request(period, key, True)), ALL_METRICS, totals, latest)
            merged: dict[tuple[str, str, str], list[int]] = {}
            for group, (billed, effective) in both.items():
                _add(merged, group, [billed, effective, 0])
            for (month, service, value), (unblended, amortized) in usage.items():
                _add(merged, (month, service, value), [0, 0, unblended])
                if index == 0 and category(service) in COMPUTE_CATEGORIES:
                    _add(totals.compute_usage, (month, PROVIDER), [unblended, amortized, unblended])
            for (month, service, value), costs in merged.items():
                kind = category(service)
                if index == 0:
                    _add(totals.costs, (month, PROVIDER, service, kind), costs)
                if tag is not None:
                    _add(totals.by_tag, (month, tag, value, kind in COMPUTE_CATEGORIES), costs)
        if latest[0]:
            totals.last_charge[PROVIDER] = min(now.timestamp(), latest[0])
        self._read_totals = totals
        return self._bill(totals, self.calls_made)
