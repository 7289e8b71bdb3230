"""The checks Grafana's dashboard-linter and `mixtool lint` make, written out (neither installs here):
each function returns the problems it finds, in words, so a test can show them and a broken copy can
prove that each check fails."""

from __future__ import annotations

import re

import promql_parser

RATE_FUNCTIONS = {"rate", "irate", "increase"}
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
SEVERITIES = {"critical", "warning", "info"}


def parse_grafana(expr: str):
    """A dashboard query as Prometheus would get it (Grafana's interval variables filled in)."""
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return promql_parser.parse(expr)


def nodes(node):
    """Every node of a parsed expression, with the functions it sits in."""
    stack = [(node, ())]
    while stack:
        current, inside = stack.pop()
        yield current, inside
        if isinstance(current, promql_parser.Call):
            inside = (*inside, current.func.name)
        for attr in ("expr", "lhs", "rhs", "vector_selector", "param"):
            child = getattr(current, attr, None)
            if child is not None and type(child).__module__.startswith("promql_parser"):
                stack.append((child, inside))
        for child in getattr(current, "args", None) or []:
            stack.append((child, inside))


def selectors(tree):
    for node, inside in nodes(tree):
        if isinstance(node, promql_parser.VectorSelector):
            yield node, inside


def lint_query(expr: str, where: str, needs_job: bool = True) -> list[str]:
    problems = []
    try:
        tree = parse_grafana(expr)
    except ValueError as exc:
        return [f"{where}: not valid PromQL ({exc}): {expr}"]
    if re.search(r"\b(rate|irate|increase)\s*\([^)]*\[(?!\$__rate_interval\])", expr):
        problems.append(f"{where}: rate/irate/increase without $__rate_interval: {expr}")
    for selector, inside in selectors(tree):
        names = {m.name for m in selector.matchers.matchers}
        if needs_job and selector.name != "ALERTS" and "job" not in names:
            problems.append(f"{where}: selector {selector.name} does not filter on job: {expr}")
        if (selector.name or "").endswith("_total") and not RATE_FUNCTIONS & set(inside):
            problems.append(f"{where}: counter {selector.name} outside rate/irate/increase: {expr}")
    return problems


def lint_dashboard(board: dict) -> list[str]:
    uid = board.get("uid")
    problems = []
    if not uid or not re.fullmatch(r"[a-z0-9-]{1,40}", uid):
        problems.append(f"dashboard {board.get('title')}: no stable uid")
    if board.get("editable", True):
        problems.append(f"{uid}: editable (changes made in the UI would be lost at the next provisioning)")
    variables = {v["name"]: v for v in board.get("templating", {}).get("list", [])}
    datasource = variables.get("datasource")
    if not datasource or datasource.get("type") != "datasource" or datasource.get("query") != "prometheus":
        problems.append(f"{uid}: no datasource variable of type prometheus")
    if "job" not in variables:
        problems.append(f"{uid}: no job variable")
    for name, variable in variables.items():
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        match = re.fullmatch(r"(label_values|query_result)\((.*)\)", query or "", re.S)
        if not match:
            problems.append(f"{uid}: variable {name} is not label_values(...) or query_result(...): {query}")
        else:
            inner = match.group(2).rsplit(",", 1)[0] if match.group(1) == "label_values" else match.group(2)
            problems += lint_query(inner, f"{uid}: variable {name}", needs_job=name != "job")
        if variable.get("refresh") != 2:
            problems.append(f"{uid}: variable {name} does not refresh on time-range change")
        if variable.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{uid}: variable {name} does not use the datasource variable")
    for panel in board.get("panels", []):
        if panel.get("type") == "row":
            continue
        where = f"{uid}: panel {panel.get('title')!r}"
        if not panel.get("title"):
            problems.append(f"{uid}: a panel without a title")
        if not panel.get("description"):
            problems.append(f"{where}: no description")
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        if not defaults.get("unit") and not defaults.get("mappings"):
            problems.append(f"{where}: no unit and no value mappings")
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{where}: does not use the datasource variable")
        if not panel.get("targets"):
            problems.append(f"{where}: no target")
        for target in panel.get("targets", []):
            if target.get("datasource", {}).get("uid") != "${datasource}":
                problems.append(f"{where}: target {target.get('refId')} does not use the datasource variable")
            problems += lint_query(target.get("expr", ""), f"{where} target {target.get('refId')}")
    return problems


def lint_rules(rules: dict) -> list[str]:
    problems = []
    for group in rules.get("groups", []):
        if len(group.get("rules", [])) > 20:
            problems.append(f"group {group['name']}: {len(group['rules'])} rules, more than 20")
        for rule in group.get("rules", []):
            if "alert" not in rule:
                continue
            name, labels, notes = rule["alert"], rule.get("labels", {}), rule.get("annotations", {})
            if not re.fullmatch(r"[A-Z][A-Za-z0-9]*", name) or len(name) > 40:
                problems.append(f"{name}: alert names are CamelCase, at most 40 characters")
            if labels.get("severity") not in SEVERITIES:
                problems.append(f"{name}: severity {labels.get('severity')!r} is not one of {sorted(SEVERITIES)}")
            summary = notes.get("summary", "")
            if not summary or "{{" in summary or not summary.endswith("."):
                problems.append(f"{name}: summary must be a plain sentence without templates")
            if "{{" not in notes.get("description", ""):
                problems.append(f"{name}: description must be templated")
            if not notes.get("runbook_url"):
                problems.append(f"{name}: no runbook_url")
    return problems
