"""Metric modules: pure functions from the data a source hands over to Prometheus metric families.

One module per area (costs, activity, budgets, kpis, registry, serving, exporter health); each builds
its families from the catalogue, where every metric is declared once. They call no server and keep
no state, so they are tested from hand-built data.
"""

OTHER = "other"  # the label value that gathers everything beyond a top-N limit


def top_and_other(values, limit, rank=None, add=None, other=None) -> dict:
    """The `limit` entries of `values` that rank highest (ties by key), the rest added up under
    `other(key)` (default 'other'): bounded labels, the same total. `rank(value)` orders the values
    (default the value itself), `add(a, b)` sums two (default +)."""
    ordered = sorted(sorted(values.items()), key=(lambda kv: rank(kv[1])) if rank else (lambda kv: kv[1]), reverse=True)
    kept = dict(ordered[:limit])
    for key, value in ordered[limit:]:
        into = other(key) if other else OTHER
        kept[into] = value if into not in kept else (add(kept[into], value) if add else kept[into] + value)
    return kept


def add_costs(a: list[int], b: list[int]) -> list[int]:
    """Two costs, one amount per basis (billed, effective, list), added up."""
    return [x + y for x, y in zip(a, b)]
