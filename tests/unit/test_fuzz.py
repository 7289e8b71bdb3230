"""Bad input, generated: odd run data, odd names, odd upstream metrics text, odd config files.
Nothing crashes, nothing is silently wrong, label values survive the exposition intact.

The number of examples and the randomness come from the Hypothesis profile (tests/conftest.py):
fixed and bounded in `make test`, random and longer in `make fuzz`. Failures once found are kept
here as explicit examples, so they are tried on every run."""

from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from conftest import render, samples
from mlops_kpi_exporter.config import ConfigError, PricingConfig, config_from_dict
from mlops_kpi_exporter.sources.upstream import PRESETS, Samples, Traffic
from mlops_kpi_exporter.ledger import RunLedger
from mlops_kpi_exporter.bad_data import BadData
from mlops_kpi_exporter.pricing import Pricer
from mlops_kpi_exporter.runs import (
    EARLIEST_MS,
    FUTURE_TOLERANCE_MS,
    MS_PER_HOUR,
    RunRules,
    make_facts,
)

NOW = 1_800_000_000_000
RULES = RunRules(Pricer(PricingConfig(default_hourly_cost=1.0)), ("estimator",), "Europe/Paris", ("team",))
odd_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
odd_number = st.one_of(st.none(), st.integers(-10**15, 10**15), st.integers(-10**400, 10**400),
                       st.floats(allow_nan=True, allow_infinity=True), odd_text, st.booleans())
NOW_US = NOW * 1000  # what a client that logs microseconds (time.time_ns() // 1000) writes


@example(status="FINISHED", start=NOW - MS_PER_HOUR, end=NOW_US, tags={}, cost_tag=None, name=None)  # year 10000
@example(status="FINISHED", start=NOW - MS_PER_HOUR, end=NOW, tags={}, cost_tag="1e308", name=None)
@example(status="FINISHED", start=NOW - MS_PER_HOUR, end=NOW, tags={"instance_count": "1e300"}, cost_tag=None, name=None)
@example(status="RUNNING", start=NOW_US, end=None, tags={}, cost_tag=None, name=None)
@example(status="FINISHED", start=1, end=NOW, tags={}, cost_tag=None, name=None)  # 1970: seconds, not ms
@given(status=st.one_of(odd_text, st.sampled_from(["FINISHED", "FAILED", "KILLED", "RUNNING", "SCHEDULED", "finished"])),
       start=odd_number, end=odd_number, tags=st.dictionaries(odd_text, odd_text, max_size=5),
       cost_tag=st.one_of(st.none(), odd_text, st.sampled_from(["1e308", "-0", "nan", "inf", "0.5", " 2 "])),
       name=st.one_of(st.none(), odd_text))
def test_odd_run_data_is_costed_or_skipped_with_a_reason(status, start, end, tags, cost_tag, name):
    if cost_tag is not None:
        tags = tags | {"mlops.hourly_cost": cost_tag}
    try:
        facts = make_facts(RULES, run_id="r", experiment_id="1", run_name=name, status=status, start_time=start,
                           end_time=end, tags=tags, params={}, now_ms=NOW)
    except BadData as exc:
        assert exc.reason
        return
    cost = facts.cost_nano(NOW)
    assert cost >= 0 and facts.duration_ms(NOW) >= 0 and math.isfinite(facts.hourly)
    assert facts.start_ms >= EARLIEST_MS and (facts.end_ms or 0) <= NOW + FUTURE_TOLERANCE_MS
    book = RunLedger((60.0,), (1.0,))
    book.upsert(facts)
    assert sum(t.cost_nano for t in book.status_totals(NOW).values()) == cost


@given(experiment=odd_text.filter(bool), run_name=odd_text, team=odd_text)
def test_odd_names_survive_the_exposition(experiment, run_name, team):
    """Quotes, backslashes, newlines and unicode in names come back out of the parser unchanged."""
    from mlops_kpi_exporter.views import RunsView
    from mlops_kpi_exporter.sources.mlflow_runs import render as render_runs

    facts = make_facts(RULES, run_id="abc", experiment_id="1", run_name=run_name, status="FINISHED",
                       start_time=NOW - 2 * MS_PER_HOUR, end_time=NOW - MS_PER_HOUR, tags={"team": team},
                       params={}, now_ms=NOW)
    ledger = RunLedger((60.0,), (1.0,))
    ledger.upsert(facts)
    view = RunsView(ledger, {"1": experiment}, NOW, RULES, "USD", allocation_tags=("team",))
    m = samples(render(render_runs(view)))
    assert ("mlops_runs", (("experiment", experiment), ("status", "FINISHED"))) in m
    run_labels = [dict(k[1]) for k in m if k[0] == "mlops_run_cost"]
    assert run_labels[0]["run_name"] == facts.run_name and run_labels[0]["experiment"] == experiment


metric_lines = st.lists(st.one_of(
    st.builds(lambda n, v: f"{n} {v}", st.sampled_from(["request_predict_seconds_count", "x_total", "nv_gpu_utilization"]),
              st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), odd_text)),
    odd_text, st.just("# TYPE request_predict_seconds histogram"), st.just("<html>"),
    st.just('request_predict_seconds_bucket{le="0.1",model_name="a\\"b"} 3'),
), max_size=20)


@given(lines=metric_lines, preset=st.sampled_from(sorted(PRESETS)))
def test_odd_upstream_metrics_text_never_crashes(lines, preset):
    traffic = Traffic()
    try:
        page = Samples("\n".join(lines) + "\n", {"model": "churn"})
    except (ValueError, UnicodeError, IndexError, TypeError):
        return  # the endpoint source counts these as bad_response
    traffic.update(page, PRESETS[preset], now=1.0)
    traffic.update(page, PRESETS[preset], now=2.0)
    assert traffic.requests.total >= 0 and traffic.errors.total >= 0
    assert all(math.isfinite(v) or v != v for v in traffic.utilization.values())


config_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), odd_text),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(odd_text, inner, max_size=3)), max_leaves=10)


@given(data=st.dictionaries(st.sampled_from(["mlflow", "pricing", "runs", "kpis", "endpoints", "budgets", "nope"]),
                            config_values, max_size=4))
def test_odd_config_is_a_config_error_never_a_crash(data):
    try:
        config_from_dict(data)
    except ConfigError as exc:
        assert str(exc).startswith("<config>: ")
    yaml.safe_dump(data)  # the generator itself stays in YAML's world


@pytest.mark.parametrize("rate", ["nan", "inf", "-1", "1e309"])
def test_price_tags_that_are_not_prices(rate):
    with pytest.raises(BadData):
        Pricer(PricingConfig()).rate({"mlops.hourly_cost": rate}, {})
