"""Whole figures from the first scrape, as a new user would see them: `serve` against a real MLflow
server with a run and a trace, a fast MLflow poll and a slow traces poll, /metrics scraped every 0.1 s
from its first answer. A budget over compute and GenAI is absent until both are in, then shows its
final value, and nothing else, at every scrape; the same after a SIGHUP reload.

`serve` runs on the real clock, so the run and the trace are written inside the current month (at
least a second after it began); a month that turns while the test runs is the one thing that moves
the figures, and the test then starts over in the new month.
"""

from __future__ import annotations

import signal
import time

import pytest
import requests
import yaml
from conftest import free_port, samples
from mlops_kpi_exporter.config import PricingConfig
from mlops_kpi_exporter.pricing import Pricer
from mlops_kpi_exporter.runs import RunRules
from test_cli import Served
from test_traces import server, trace, usage  # noqa: F401 - the module's offline MLflow server, its trace writer

BUDGET = ("mlops_budget_cost_month_to_date", (("budget", "assistant"),))
RUN_COST, GENAI_COST = 6.0, 2.0  # 60 s at 360 an hour; 1M input tokens at 1.00 and 0.5M output at 2.00
MONTH = RunRules(Pricer(PricingConfig()), ()).month_bounds


def seed(client, prefix: str, now_ms: int) -> None:
    _, month_start, _ = MONTH(now_ms)
    at = max(month_start + 1000, now_ms - 300_000)
    exp = client.create_experiment(f"{prefix}-assistant")
    run = client.create_run(exp, start_time=at, tags={"mlops.hourly_cost": "360"})
    client.set_terminated(run.info.run_id, "FINISHED", end_time=at + 60_000)
    trace(f"{prefix}-assistant", ("my-model", None, usage(1_000_000, 500_000)), at=at / 1000)


def write_config(tmp_path, url: str, prefix: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "mlflow": {"tracking_uri": url, "experiments": [f"{prefix}-*"], "poll_interval": "1s", "retry_backoff": "1s"},
        "traces": {"enabled": True, "poll_interval": "1h", "token_prices": {"my-model": {"input": 1.0, "output": 2.0}}},
        "budgets": [{"name": "assistant", "experiments": f"{prefix}-assistant", "monthly": 100,
                     "include": ["compute", "genai"]}],
    }))
    return str(path)


def watch(served: Served, until) -> list:
    """The budget's value at every scrape (None: absent), every 0.1 s until `until(page)` holds."""
    seen, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            page = samples(requests.get(f"{served.url}/metrics", timeout=5).text)
        except requests.ConnectionError:  # not listening yet
            time.sleep(0.1)
            continue
        seen.append(page.get(BUDGET))
        if until(page):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"the condition never held; the budget showed {seen[-20:]}")


def polled(source: str, times: int):
    return lambda page: page.get(("mlops_source_polls_total", (("source", source),)), 0) >= times


def both(*conditions):
    return lambda page: all(condition(page) for condition in conditions)


def observe(tmp_path, url: str, prefix: str) -> tuple[list, list]:
    port = free_port()
    served = Served(["serve", "--config", write_config(tmp_path, url, prefix), "--listen", f"127.0.0.1:{port}"], port)
    try:
        # from the first answer until both sources polled and the MLflow source twice more after that
        first = watch(served, both(polled("traces", 1), polled("mlflow", 4)))
        served.proc.send_signal(signal.SIGHUP)
        reloaded = lambda page: page.get(("mlops_exporter_config_last_reload_successful", ())) == 1
        after = watch(served, both(reloaded, polled("traces", 1), polled("mlflow", 4)))
    finally:
        code, err = served.stop()
    assert code == 0, err[-2000:]
    return first, after


def test_a_budget_over_compute_and_genai_shows_only_its_final_value(tmp_path, server, prefix):  # noqa: F811
    client = server.client()
    for attempt in range(2):
        started_ms = int(time.time() * 1000)
        seed(client, f"{prefix}-{attempt}", started_ms)
        first, after = observe(tmp_path, server.url, f"{prefix}-{attempt}")
        if MONTH(int(time.time() * 1000))[0] == MONTH(started_ms)[0]:
            break  # the month did not turn while watching: the figures had nothing to move them
    final = RUN_COST + GENAI_COST
    for seen in (first, after):
        shown = [v for v in seen if v is not None]
        assert shown, "the budget never appeared"
        assert all(v == pytest.approx(final, abs=1e-9) for v in shown), f"partial values shown: {sorted(set(shown))}"
        assert seen[-1] == pytest.approx(final, abs=1e-9)
