"""Metric modules: pure functions from the data a source hands over to Prometheus metric families.

One module per area (costs, activity, budgets, kpis, registry, serving, exporter health); each builds
its families from the catalogue, where every metric is declared once. They call no server and keep
no state, so they are tested from hand-built data.
"""

OTHER = "other"  # the label value that gathers everything beyond a top-N limit
