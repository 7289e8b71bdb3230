"""The AWS bill from Cost Explorer (GetCostAndUsage), over real HTTP on loopback.

AWS itself cannot be reached here (and every Cost Explorer call is billed), so a moto server stands
in for it (the `moto_server` fixture of conftest.py: a threaded server in this process, fake
credentials in the environment). Moto does not compute costs: each test queues, through moto's
`/moto-api/static/ce/cost-and-usage-results`, the answers Cost Explorer would give, written by hand
below, in the order the source asks (per allocation tag: all record types, then usage records; each
page a request). Moto keys an answer to the request body, so a repeated request gets the same answer
and a request that names a NextPageToken takes the next queued one. The expected figures are worked
out by hand in the comments, never by re-running the source's logic.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import pytest
import requests

from conftest import free_port, render, samples, value
from mlops_kpi_exporter.config import config_from_dict
from mlops_kpi_exporter.poller import Poller
from mlops_kpi_exporter.snapshot import SnapshotStore
from mlops_kpi_exporter.bill import COMPUTE_CATEGORIES
from mlops_kpi_exporter.sources.cost_explorer import (CallBudgetSpent, CostExplorerError, CostExplorerSource, category,
                                                       ce_tag_key, tag_value, time_period)

NOW = datetime(2026, 11, 15, 12, 0, tzinfo=timezone.utc).timestamp()  # months 2: 2026-10-01 to 2026-11-16
HOUR = 3600.0
EC2, S3, SAGEMAKER, TAX = ("Amazon Elastic Compute Cloud - Compute", "Amazon Simple Storage Service",
                           "Amazon SageMaker", "Tax")
OCT = {"Start": "2026-10-01", "End": "2026-11-01"}
NOV = {"Start": "2026-11-01", "End": "2026-11-16"}


class Clock:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now


def source(url: str, tags=("team", "project"), clock=None, **cost_explorer) -> CostExplorerSource:
    config = config_from_dict({
        "mlflow": {"tracking_uri": "http://127.0.0.1:1"},
        "allocation": {"tags": list(tags), "max_values": 5,
                       "tag_aliases": {"team": ["user:team", "Team"]} if "team" in tags else {}},
        "billing": {"months": 2, "poll_interval": "1h",
                    "sources": [{"name": "aws", "cost_explorer": {"endpoint_url": url, **cost_explorer}}]},
    })
    return CostExplorerSource(config.billing.sources[0], config, clock=clock or Clock())


def count_requests(src: CostExplorerSource) -> list[str]:
    """Every HTTP request the source's client sends (retries included), by operation."""
    sent: list[str] = []
    src.client.meta.events.register("before-send.ce", lambda request, **_: sent.append(request.url))
    return sent


def queue(url: str, *answers: dict) -> None:
    response = requests.post(f"{url}/moto-api/static/ce/cost-and-usage-results", json={"results": list(answers)},
                             timeout=10)
    assert response.status_code == 201


def asked() -> list[dict]:
    """The request bodies moto has answered (distinct ones), from its in-process backend."""
    from moto.ce.models import ce_backends

    return [json.loads(body) for body in ce_backends["123456789012"]["global"].cost_usage_results]


def answer(*periods, token: str | None = None) -> dict:
    """periods: (TimePeriod, estimated, [(service, tag key or None, {metric: amount})])."""
    out = {"ResultsByTime": [
        {"TimePeriod": period, "Estimated": estimated, "Total": {},
         "Groups": [{"Keys": [service] + ([tag] if tag is not None else []),
                     "Metrics": {m: {"Amount": amount, "Unit": unit} for m, (amount, unit) in
                                 ((m, a if isinstance(a, tuple) else (a, "USD")) for m, a in metrics.items())}}
                    for service, tag, metrics in groups]}
        for period, estimated, groups in periods], "DimensionValueAttributes": []}
    if token:
        out["NextPageToken"] = token
    return out


def both(billed: str, effective: str) -> dict:
    return {"UnblendedCost": billed, "AmortizedCost": effective}


def usage(amount: str, amortized: str | None = None) -> dict:
    return {"UnblendedCost": amount, "AmortizedCost": amortized or amount}


# The bill, two tags. October is closed; November open (Estimated). Tax and a credit are not usage,
# so they are absent from the usage-records answers (the list basis).
TEAM_ALL = answer(
    (OCT, False, [(EC2, "team$vision", both("100.10", "80.05")), (EC2, "team$", both("20", "20")),
                  (S3, "team$vision", both("5.5", "5.5")), (S3, "team$", both("3.25", "3.25")),
                  (SAGEMAKER, "team$nlp", both("40", "35")), (TAX, "team$", both("12.34", "12.34"))]),
    (NOV, True, [(EC2, "team$vision", both("50", "45")), (EC2, "team$", both("-5", "-5")),  # a credit
                 (SAGEMAKER, "team$nlp", both("10.000000001", "9")), (S3, "team$", both("7", "7"))]))
TEAM_USAGE = answer(
    (OCT, False, [(EC2, "team$vision", usage("120", "75")), (EC2, "team$", usage("20")), (S3, "team$vision", usage("5.5")),
                  (S3, "team$", usage("3.25")), (SAGEMAKER, "team$nlp", usage("40", "35"))]),
    (NOV, True, [(EC2, "team$vision", usage("60", "45")), (SAGEMAKER, "team$nlp", usage("12", "9")),
                 (S3, "team$", usage("7"))]))
PROJECT_ALL = answer(
    (OCT, False, [(EC2, "project$crm", both("70.10", "60.05")), (EC2, "project$fraud", both("50", "40")),
                  (S3, "project$", both("8.75", "8.75")), (SAGEMAKER, "project$crm", both("40", "35")),
                  (TAX, "project$", both("12.34", "12.34"))]),
    (NOV, True, [(EC2, "project$crm", both("45", "40")), (SAGEMAKER, "project$", both("10.000000001", "9")),
                 (S3, "project$", both("7", "7"))]))
PROJECT_USAGE = answer(
    (OCT, False, [(EC2, "project$crm", usage("80")), (EC2, "project$fraud", usage("60")), (S3, "project$", usage("8.75")),
                  (SAGEMAKER, "project$crm", usage("40"))]),
    (NOV, True, [(EC2, "project$crm", usage("60")), (SAGEMAKER, "project$", usage("12")), (S3, "project$", usage("7"))]))


def polled(src: CostExplorerSource):
    families, summary = src.poll()
    return samples(render(families)), summary, families


def cost(m, month, service, basis):
    return value(m, "mlops_cloud_cost", bill="aws", month=month, provider="AWS", service=service, cost_basis=basis)


def by_tag(m, month, tag, val, basis, name="mlops_cloud_cost_by_tag"):
    return value(m, name, bill="aws", month=month, tag=tag, value=val, cost_basis=basis)


def tag_values(m, month, tag, basis, name="mlops_cloud_cost_by_tag") -> dict[str, float]:
    return {dict(labels)["value"]: v for (n, labels), v in m.items()
            if n == name and dict(labels)["month"] == month and dict(labels)["tag"] == tag
            and dict(labels)["cost_basis"] == basis}


def test_the_bill_by_service_and_tag_in_all_three_bases_from_hand_written_answers(moto_server):
    queue(moto_server, TEAM_ALL, TEAM_USAGE, PROJECT_ALL, PROJECT_USAGE)
    src = source(moto_server)
    sent = count_requests(src)
    m, summary, _ = polled(src)

    # what was asked: per tag a pair, the first alias key without user:, usage records for list
    bodies = asked()
    assert len(sent) == 4 and src.calls_today == 4 and len(bodies) == 4
    for body in bodies:
        assert body["TimePeriod"] == {"Start": "2026-10-01", "End": "2026-11-16"}
        assert body["Granularity"] == "MONTHLY"
    assert [b["GroupBy"][1]["Key"] for b in bodies] == ["team", "team", "project", "project"]
    assert all(b["Metrics"] == ["UnblendedCost", "AmortizedCost"] for b in bodies)
    assert [("Filter" in b) for b in bodies] == [False, True, False, True]
    assert bodies[1]["Filter"] == {"Dimensions": {"Key": "RECORD_TYPE",
                                                  "Values": ["Usage", "DiscountedUsage", "SavingsPlanCoveredUsage"]}}
    assert "4 Cost Explorer calls" in summary and "months 2026-10, 2026-11" in summary

    # by service, from the first tag's answers summed over its values
    # October billed: EC2 100.10 + 20 = 120.10; S3 5.5 + 3.25 = 8.75; SageMaker 40; Tax 12.34
    assert cost(m, "2026-10", EC2, "billed") == 120.10
    assert cost(m, "2026-10", EC2, "effective") == 100.05  # 80.05 + 20
    assert cost(m, "2026-10", EC2, "list") == 140.0  # usage 120 + 20
    assert cost(m, "2026-10", S3, "billed") == 8.75
    assert cost(m, "2026-10", SAGEMAKER, "effective") == 35.0
    assert cost(m, "2026-10", TAX, "billed") == 12.34
    assert cost(m, "2026-10", TAX, "list") == 0.0  # tax is no usage
    # November: EC2 50 - 5 (credit) = 45 billed, 45 - 5 = 40 effective, 60 list (the credit is no usage)
    assert cost(m, "2026-11", EC2, "billed") == 45.0
    assert cost(m, "2026-11", EC2, "effective") == 40.0
    assert cost(m, "2026-11", EC2, "list") == 60.0
    assert cost(m, "2026-11", SAGEMAKER, "billed") == 10.000000001  # exact: nano-units, no float sums
    assert cost(m, "2026-11", SAGEMAKER, "list") == 12.0

    # the latest month: billed 45 + 10.000000001 + 7; effective 40 + 9 + 7; list 60 + 12 + 7
    latest = {b: value(m, "mlops_cloud_cost_latest_month", bill="aws", month="2026-11", cost_basis=b) for b in
              ("billed", "effective", "list")}
    assert latest == {"billed": 62.000000001, "effective": 56.0, "list": 79.0}

    # by tag: October team billed vision 100.10 + 5.5, untagged 20 + 3.25 + 12.34, nlp 40 = 181.19
    assert tag_values(m, "2026-10", "team", "billed") == {"vision": 105.6, "untagged": 35.59, "nlp": 40.0}
    assert tag_values(m, "2026-10", "team", "effective") == {"vision": 85.55, "untagged": 35.59, "nlp": 35.0}
    assert tag_values(m, "2026-10", "team", "list") == {"vision": 125.5, "untagged": 23.25, "nlp": 40.0}
    assert tag_values(m, "2026-11", "team", "billed") == {"vision": 50.0, "untagged": 2.0, "nlp": 10.000000001}
    # project: crm 70.10 + 40, fraud 50, untagged 8.75 + 12.34
    assert tag_values(m, "2026-10", "project", "billed") == {"crm": 110.1, "fraud": 50.0, "untagged": 21.09}
    assert tag_values(m, "2026-11", "project", "list") == {"crm": 60.0, "untagged": 19.0}
    # each tag's values add up to the month's total (October billed 181.19, effective 156.14, list 188.75)
    for basis, total in (("billed", 181.19), ("effective", 156.14), ("list", 188.75)):
        for tag in ("team", "project"):
            assert math.fsum(tag_values(m, "2026-10", tag, basis).values()) == pytest.approx(total, abs=1e-9)

    # compute (EC2, SageMaker) by tag: no S3, no tax; untagged always shown
    assert tag_values(m, "2026-10", "team", "billed", "mlops_cloud_compute_cost_by_tag") == {
        "vision": 100.10, "untagged": 20.0, "nlp": 40.0}
    assert tag_values(m, "2026-11", "team", "billed", "mlops_cloud_compute_cost_by_tag") == {
        "vision": 50.0, "untagged": -5.0, "nlp": 10.000000001}
    assert tag_values(m, "2026-11", "team", "list", "mlops_cloud_compute_cost_by_tag") == {
        "vision": 60.0, "untagged": 0.0, "nlp": 12.0}
    assert tag_values(m, "2026-11", "project", "effective", "mlops_cloud_compute_cost_by_tag") == {
        "crm": 40.0, "untagged": 9.0}

    # untagged share of November's billed cost: team 2 / 62.000000001; project (10.000000001 + 7) / 62.000000001
    assert value(m, "mlops_cloud_untagged_ratio", bill="aws", tag="team") == pytest.approx(2 / 62.000000001)
    assert value(m, "mlops_cloud_untagged_ratio", bill="aws", tag="project") == pytest.approx(17.000000001 / 62.000000001)
    # freshness: the open month's period ends tomorrow, so the time of the poll
    assert value(m, "mlops_cloud_cost_last_charge_timestamp_seconds", bill="aws", provider="AWS") == NOW


def test_pages_are_followed_and_each_page_is_a_call(moto_server):
    queue(moto_server,
          answer((OCT, False, [(EC2, None, both("10", "9"))]), token="page-2"),
          answer((OCT, False, [(S3, None, both("1.5", "1.5"))]), (NOV, True, [(EC2, None, both("2", "2"))])),
          answer((OCT, False, [(EC2, None, usage("12")), (S3, None, usage("1.5"))]), (NOV, True, [(EC2, None, usage("3"))])))
    src = source(moto_server, tags=())
    sent = count_requests(src)
    m, summary, _ = polled(src)
    assert len(sent) == 3 and src.calls_last_poll == 3 and src.calls_today == 3
    bodies = asked()
    assert [b.get("NextPageToken") for b in bodies] == [None, "page-2", None]
    assert all(b["GroupBy"] == [{"Type": "DIMENSION", "Key": "SERVICE"}] for b in bodies)
    assert cost(m, "2026-10", EC2, "billed") == 10.0 and cost(m, "2026-10", S3, "effective") == 1.5
    assert cost(m, "2026-11", EC2, "list") == 3.0
    assert value(m, "mlops_cloud_cost_latest_month", bill="aws", month="2026-11", cost_basis="billed") == 2.0
    assert not [k for k in m if k[0] == "mlops_cloud_cost_by_tag"]
    assert "3 Cost Explorer calls" in summary
    assert src.calls_needed() == 3  # the next poll is budgeted at what this one took


def test_the_daily_call_budget_puts_a_poll_off_without_a_call_and_resets_at_utc_midnight(moto_server):
    queue(moto_server, TEAM_ALL, TEAM_USAGE)
    clock = Clock()
    src = source(moto_server, tags=("team",), clock=clock, max_calls_per_day=5)
    sent = count_requests(src)
    store = SnapshotStore()
    poller = Poller([src], store)
    assert poller.poll_once(src)
    clock.now += HOUR
    assert poller.poll_once(src)  # the same requests: moto answers them again from its cache
    first = samples(render(store.states()[1][0].families))
    assert len(sent) == 4 and src.calls_today == 4
    clock.now += HOUR
    with pytest.raises(CallBudgetSpent) as refused:
        src.poll()
    message = str(refused.value)
    assert "budget of 5 calls a day" in message and "4 made today" in message and "needs 2" in message
    assert "resets at 2026-11-16T00:00:00Z" in message
    assert len(sent) == 4 and src.calls_today == 4  # nothing reached the server
    # through the poller: an error counted, the last figures stay
    assert not poller.poll_once(src)
    state = store.states()[1][0]
    assert not state.up and state.errors_total == 1 and "CallBudgetSpent" in state.last_error
    assert samples(render(state.families)) == first and len(sent) == 4

    clock.now = datetime(2026, 11, 16, 0, 5, tzinfo=timezone.utc).timestamp()  # a new UTC day
    queue(moto_server, TEAM_ALL, TEAM_USAGE)  # the period now ends 2026-11-17: new requests
    again, _, _ = polled(src)
    assert len(sent) == 6 and src.calls_today == 2
    assert asked()[-1]["TimePeriod"] == {"Start": "2026-10-01", "End": "2026-11-17"}
    assert cost(again, "2026-10", EC2, "billed") == cost(first, "2026-10", EC2, "billed") == 120.10


def test_a_budget_smaller_than_one_poll_says_so(moto_server):
    src = source(moto_server, max_calls_per_day=3)  # two tags: 4 calls a poll
    sent = count_requests(src)
    assert "4 billed calls a poll" in src.check() and "put off" in src.check()  # check: no call either
    with pytest.raises(CallBudgetSpent, match="more than the whole budget"):
        src.poll()
    assert sent == [] and src.calls_today == 0


def test_a_second_poll_within_the_interval_returns_the_last_figures_without_a_call(moto_server):
    queue(moto_server, TEAM_ALL, TEAM_USAGE)
    clock = Clock()
    src = source(moto_server, tags=("team",), clock=clock)
    sent = count_requests(src)
    families, _ = src.poll()
    clock.now += 120  # e.g. the poller retrying, or a reload
    again, summary = src.poll()
    assert again is families and "last figures again, no Cost Explorer call" in summary
    assert len(sent) == 2 and src.calls_today == 2
    clock.now = NOW + HOUR  # the next scheduled poll does call
    src.poll()
    assert len(sent) == 4 and src.calls_today == 4


def test_amounts_in_another_currency_fail_the_poll(moto_server):
    queue(moto_server, answer((OCT, False, [(EC2, "team$vision", {"UnblendedCost": ("10", "EUR"),
                                                                  "AmortizedCost": ("9", "EUR")})])))
    src = source(moto_server, tags=("team",))
    with pytest.raises(CostExplorerError, match="UnblendedCost in EUR, not pricing.currency USD"):
        src.poll()
    assert src.last_families is None and src.calls_today == 1  # the call was made (and billed)


def test_an_unreachable_endpoint_is_a_clear_error_with_no_secret(moto_server, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "RECOGNIZABLE-secret-0123456789")
    src = source(f"http://127.0.0.1:{free_port()}", tags=("team",))  # nothing listens there
    with pytest.raises(CostExplorerError) as failed:
        src.poll()
    message = str(failed.value)
    assert message.startswith("Cost Explorer GetCostAndUsage: EndpointConnectionError: Could not connect")
    assert "RECOGNIZABLE" not in message and failed.value.__cause__ is None


def test_an_aws_error_answer_is_a_clear_error_with_no_secret(moto_server, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "RECOGNIZABLE-secret-0123456789")
    src = source(moto_server, tags=("team",))
    # moto checks credentials against its IAM from the next request on: ours are unknown to it
    previous = requests.post(f"{moto_server}/moto-api/reset-auth", data=b"0", timeout=10).json()
    try:
        with pytest.raises(CostExplorerError) as failed:
            src.poll()
    finally:
        requests.post(f"{moto_server}/moto-api/reset-auth",
                      data=previous["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"].encode(), timeout=10)
    message = str(failed.value)
    assert message.startswith("Cost Explorer GetCostAndUsage: ") and "security token" in message.lower()
    assert "\n" not in message
    assert "RECOGNIZABLE" not in message


def test_check_says_what_is_asked_and_makes_no_call(moto_server):
    src = source(moto_server, tags=("team",))
    sent = count_requests(src)
    line = src.check()
    assert sent == [] and src.calls_today == 0
    assert "MONTHLY 2026-10-01 to 2026-11-16" in line and "team (tag team)" in line
    assert "2 billed calls a poll" in line and "about 48 a day, budget 100 a day" in line and "put off" not in line
    assert src.name == "billing:aws" and src.label == "aws" and src.interval == HOUR


def test_wired_as_the_exporter_builds_it_with_calibration_and_as_report_reads_it(moto_server):
    from mlops_kpi_exporter.bill import calibration_factors
    from mlops_kpi_exporter.sources.billing import bill_sources

    queue(moto_server, TEAM_ALL, TEAM_USAGE)
    src = source(moto_server, tags=("team",))
    [built] = bill_sources(src.config)
    built.clock = Clock()
    assert isinstance(built, CostExplorerSource) and built.name == "billing:aws"
    assert built.facts() is None  # before a good poll the derived stage has no bill of it
    built.poll()
    # compute usage records, both months: amortized EC2 75 + 20 + 45, SageMaker 35 + 9 (= 184);
    # unblended EC2 120 + 20 + 60, SageMaker 40 + 12 (= 252); no S3, no credit
    assert calibration_factors([built.facts()]) == {"aws": pytest.approx(184 / 252)}
    assert built.facts().compute_usage == {("2026-10", "AWS"): [180 * 10**9, 130 * 10**9, 180 * 10**9],
                                           ("2026-11", "AWS"): [72 * 10**9, 54 * 10**9, 72 * 10**9]}
    assert bill_sources(src.config, export=False) == []  # a shard other than the first calls nothing
    # report reads a bill with no arguments; the same requests, answered again from moto's cache
    [reader] = bill_sources(src.config)
    reader.clock = Clock()  # the same day as the poll's
    bill = reader.read()
    assert bill.files == 2 and reader.calls_today == 4  # the day's count is kept: the poll's 2 and these
    assert sum(c[0] for (m, *_), c in bill.costs.items() if m == "2026-10") == 181_190_000_000  # nano


def test_restarts_in_a_day_never_spend_more_than_the_days_budget(moto_server, caplog):
    """Two restarts (and a reload is a restart of the sources) in a day, budget 5 calls, 2 a poll: at
    most 5 paid calls that day, and a restart within the interval makes none and keeps the bill."""
    queue(moto_server, TEAM_ALL, TEAM_USAGE)
    clock = Clock()
    sent: list[str] = []
    started = []

    def start():  # what serve does at each start: the sources built afresh from the config
        src = source(moto_server, tags=("team",), clock=clock, max_calls_per_day=5)
        src.client.meta.events.register("before-send.ce", lambda request, **_: sent.append(request.url))
        started.append(src)
        return src

    first = start()
    first.poll()
    assert len(sent) == 2 and first.calls_today == 2
    soon = start()  # restarted 10 minutes later: the kept bill, no call
    clock.now += 600
    families, summary = soon.poll()
    assert len(sent) == 2 and "no Cost Explorer call" in summary
    assert soon.facts() is not None and soon.facts().costs == first.facts().costs
    clock.now += HOUR  # an hour later: a poll is due, and paid
    soon.poll()
    assert len(sent) == 4 and soon.calls_today == 4
    late = start()  # restarted again the same day: the budget has room for no further poll
    clock.now += HOUR
    with pytest.raises(CallBudgetSpent, match="4 made today"):
        late.poll()
    assert len(sent) == 4 <= 5
    assert late.facts().costs == first.facts().costs  # the last good bill stays for the derived stage
    clock.now = NOW + 86400  # the next UTC day: a fresh budget
    late.poll()
    assert len(sent) == 6 and late.calls_today == 2


def test_a_corrupt_state_file_is_a_warning_and_a_fresh_start(moto_server, caplog):
    queue(moto_server, TEAM_ALL, TEAM_USAGE)
    first = source(moto_server, tags=("team",))
    first.poll()
    first.state.path.write_text('{"kind": "cost-explorer", "version": 1, "data": {"day": "yesterday"}}')
    with caplog.at_level("WARNING"):
        again = source(moto_server, tags=("team",))
    assert "is corrupt" in caplog.text and str(first.state.path) in caplog.text
    assert again.calls_today == 0 and again.facts() is None
    again.poll()  # and it goes on, writing a good file again
    assert source(moto_server, tags=("team",)).calls_today == 2


# -- helpers that need no server (here, not in tests/unit: the two test modules would share a name) --
@pytest.mark.parametrize("now, months, expected", [
    ((2026, 11, 15, 12), 2, ("2026-10-01", "2026-11-16")),
    ((2026, 1, 31, 23), 3, ("2025-11-01", "2026-02-01")),  # across the year; End is exclusive
    ((2026, 3, 1, 0), 1, ("2026-03-01", "2026-03-02")),
    ((2024, 12, 31, 10), 24, ("2023-01-01", "2025-01-01")),
])
def test_the_period_runs_from_the_first_shown_month_to_tomorrow(now, months, expected):
    moment = datetime(*now, tzinfo=timezone.utc)
    assert time_period(moment, months) == {"Start": expected[0], "End": expected[1]}


def test_tag_keys_and_values():
    assert ce_tag_key("team", {"team": ["user:team", "Team"]}) == "team"  # the first alias, no user:
    assert ce_tag_key("team", {"team": ["Team", "team"]}) == "Team"
    assert ce_tag_key("project", {}) == "project"
    assert ce_tag_key("owner", {"owner": ["aws:createdBy"]}) == "aws:createdBy"
    assert tag_value("team$vision") == "vision"
    assert tag_value("team$") == "untagged"
    assert tag_value("team$ a$b ") == "a$b"
    assert tag_value("team$" + "x" * 150) == "x" * 100


def test_compute_categories():
    assert category("Amazon Elastic Compute Cloud - Compute") == "Compute"
    assert category("EC2 - Other") == "Other"  # EBS, NAT gateways: not compute
    assert category("Amazon SageMaker") == "AI and Machine Learning"
    assert category("Claude 3 Haiku (Amazon Bedrock Edition)") == "AI and Machine Learning"
    assert category("Amazon Simple Storage Service") == "Other"
    assert {category("AWS Lambda"), category("Amazon Bedrock")} <= COMPUTE_CATEGORIES


def test_the_calls_made_are_a_metric(moto_server):
    """What the bill's API itself costs: the requests made, for increase(...[1d]) against the budget."""
    cfg = config_from_dict({
        "mlflow": {"tracking_uri": "http://127.0.0.1:1"},
        "billing": {"sources": [{"name": "ce", "cost_explorer": {"endpoint_url": moto_server}}]},
    })
    src = CostExplorerSource(cfg.billing.sources[0], cfg, clock=lambda: 1_794_744_000.0)
    families, _ = src.poll()
    assert value(samples(render(families)), "mlops_billing_api_calls_total", bill="ce") == 2.0  # one pair, no tags
