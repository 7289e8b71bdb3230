"""Label selectors for the generated rules and dashboards, as a monitoring mixin's `_config` does:
every selector of an exporter metric gets the deployment's extra matchers (deploy/monitoring.yml
`selectors`, e.g. cluster="prod"), and, in dashboards, the `job` (and `instance`) variables."""

from __future__ import annotations

import re

# An exporter metric, a recording rule or the scrape's own series, optionally followed by its matchers.
SELECTOR = re.compile(r"\b(mlops[_:][A-Za-z0-9_:]*|up|scrape_samples_scraped)\b(\{[^}]*\})?(?!\s*\()")


def matchers_text(selectors: dict[str, str]) -> str:
    """{cluster: prod, region: ~"eu-.*"} -> 'cluster="prod",region=~"eu-.*"' (a leading ~ means a regex)."""
    parts = []
    for label, value in sorted(selectors.items()):
        value = str(value)
        op, value = ("=~", value[1:]) if value.startswith("~") else ("=", value)
        parts.append(f'{label}{op}"{value}"')
    return ",".join(parts)


def scoped(expr: str, extra: str) -> str:
    """`expr` with `extra` matchers added to every selector of an exporter metric."""
    if not extra:
        return expr

    def add(match: re.Match[str]) -> str:
        name, matchers = match.group(1), match.group(2)
        inner = matchers[1:-1].strip() if matchers else ""
        return f"{name}{{{extra}{',' + inner if inner else ''}}}"

    return SELECTOR.sub(add, expr)
