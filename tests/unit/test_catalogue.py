"""One catalogue names every metric: the exposition, the README, the dashboards, the rules and the
PromQL tests all agree with it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from mlops_kpi_exporter.metrics.catalogue import BY_NAME, CATALOGUE, labels_shown, reference_table, series_names, with_reference

ROOT = Path(__file__).parents[2]
SERIES = {name: spec for spec in CATALOGUE for name in series_names(spec)}
ALWAYS = {"job", "instance", "__name__"}  # what Prometheus adds; le for histogram buckets below
SELECTOR = re.compile(r"\b(mlops_[a-z0-9_]+)\b(\{[^}]*\})?")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def test_names_follow_prometheus_conventions():
    for spec in CATALOGUE:
        assert re.fullmatch(r"mlops_[a-z0-9_]+", spec.name), spec.name
        assert spec.name.endswith("_total") == (spec.kind == "counter"), spec.name
        assert spec.name.endswith("_info") == (spec.kind == "info"), spec.name
        assert not spec.name.endswith(("_bucket", "_sum", "_count")), spec.name
        assert len(set(spec.labels)) == len(spec.labels) and "le" not in spec.labels, spec.name
        assert spec.help and spec.meaning and "\n" not in spec.meaning, spec.name
    assert len(BY_NAME) == len(CATALOGUE), "a metric is declared twice"


def test_the_readme_reference_is_generated_from_the_catalogue():
    readme = (ROOT / "README.md").read_text()
    assert with_reference(readme) == readme, "run: make generate (the README's metric reference is stale)"
    assert reference_table() in readme


def _expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every dashboard query and variable, every rule and every PromQL test."""
    out = []
    for path in sorted((ROOT / "dashboards" / "json").glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            out += [(f"{path.name}: {panel['title']}", t["expr"]) for t in panel.get("targets", [])]
        for variable in board.get("templating", {}).get("list", []):
            query = variable.get("query")
            if isinstance(query, dict):
                query = query.get("query")
            if isinstance(query, str) and "mlops_" in query:
                out.append((f"{path.name}: ${variable['name']}", query))
    rules = yaml.safe_load((ROOT / "alerts" / "rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            out.append((f"rules.yml: {rule.get('alert') or rule.get('record')}", rule["expr"]))
    for path in sorted((ROOT / "tests" / "promql").glob("*.yml")) + sorted((ROOT / "alerts").glob("rules_test*.yml")):
        for test in yaml.safe_load(path.read_text())["tests"]:
            out += [(path.name, series["series"]) for series in test.get("input_series", [])]
            for case in test.get("promql_expr_test", []):
                out.append((path.name, case["expr"]))
    return out


EXPRESSIONS = _expressions()


def test_expressions_were_found():
    assert len(EXPRESSIONS) > 100


@pytest.mark.parametrize("where, expr", EXPRESSIONS, ids=[w for w, _ in EXPRESSIONS])
def test_every_metric_named_anywhere_is_declared_with_those_labels(where, expr):
    names = set()
    for name, matchers in SELECTOR.findall(expr):
        assert name in SERIES, f"{where}: {name} is not in the catalogue"
        spec = SERIES[name]
        names.add(name)
        allowed = set(labels_shown(spec)) | ALWAYS | ({"le"} if name.endswith("_bucket") else set())
        used = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
        assert used <= allowed, f"{where}: {name} has no label {used - allowed}"
    for name, label in re.findall(r"label_values\(\s*(mlops_[a-z0-9_]+)[^,]*,\s*(\w+)\s*\)", expr):
        assert label in labels_shown(SERIES[name]) or label in ALWAYS, f"{where}: {name} has no label {label}"
    if not names or "mlops:" in expr or "label_replace" in expr:
        return  # recording rules and relabelled series carry labels of their own
    allowed = ALWAYS | {"le"} | {label for n in names for label in labels_shown(SERIES[n])}
    for group in GROUPING.findall(expr):
        labels = {label.strip() for label in group.split(",") if label.strip()}
        assert labels <= allowed, f"{where}: grouping by {labels - allowed}, which no metric here has"
