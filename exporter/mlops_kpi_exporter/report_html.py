"""The report as one self-contained HTML page: charts inlined as SVG (matplotlib), no script, nothing
fetched, so it opens anywhere and can be mailed."""

from __future__ import annotations

import html
import io
import random
from datetime import datetime, timezone

from mlops_kpi_exporter.pricing import money

def _svg(fig) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _bar_chart(title: str, values: dict[str, float], xlabel: str = "", horizontal: bool = True, limit: int = 15) -> str:
    import logging

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # "categorical units" chatter
    items = list(values.items())[:limit]
    fig, ax = plt.subplots(figsize=(6, max(1.6, 0.3 * len(items) + 0.8) if horizontal else 2.4), dpi=72)
    if horizontal:
        ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1], color="#3b73b9")
    else:
        ax.bar([k for k, _ in items], [v for _, v in items], color="#3b73b9")
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(labelsize=7)
    return _svg(fig)


def _strip_chart(samples: dict[str, list[float]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = random.Random(0)
    names = sorted(samples)
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(names) + 1), dpi=72)
    for i, name in enumerate(names):
        ax.scatter(samples[name], [i + rng.uniform(-0.25, 0.25) for _ in samples[name]], s=6, alpha=0.6)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("run time (hours)", fontsize=8)
    ax.set_title("Run time per experiment", fontsize=10, loc="left")
    ax.tick_params(labelsize=7)
    return _svg(fig)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(data: dict) -> str:
    cur = data["currency"]
    m = lambda v: html.escape(money(v, cur))  # noqa: E731
    parts = [f"<h1>ML cost and KPI report</h1><p class=sub>{html.escape(data['period']['from'][:16])} to "
             f"{html.escape(data['period']['to'][:16])} (UTC), {data['period']['days']:g} days, {data['runs']} runs</p>"]
    change = data["change_vs_previous"]
    change_text = "n/a" if change is None else f"{change:+.0%}"
    parts.append("<div class=cards>" + "".join(
        f"<div class=card><div class=k>{k}</div><div class=v>{v}</div></div>" for k, v in [
            ("Compute spend", m(data["total_compute"])), ("vs previous period", change_text),
            ("Runs", str(data["runs"])), ("Skipped runs", str(sum(data["skipped_runs"].values())))]) + "</div>")
    parts.append("<h2>What to look at</h2><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in data['what_to_look_at']) + "</ul>")
    if not data["runs"]:
        parts.append("<p class=empty>No runs in this period, so there are no charts to draw.</p>")
    else:
        parts.append("<h2>Where the money went</h2><div class=grid>")
        parts.append(f"<figure>{_bar_chart('Cost by experiment', data['by_experiment'], cur)}</figure>")
        parts.append(f"<figure>{_bar_chart('Cost by run status (failed-run waste)', data['by_status'], cur)}</figure>")
        for tag, values in data["by_tag"].items():
            parts.append(f"<figure>{_bar_chart(f'Cost by {tag} tag', values, cur)}</figure>")
        if not data["by_tag"]:
            parts.append("<p class=empty>No allocation tags are configured (allocation.tags), so cost cannot be "
                         "shown by team or project.</p>")
        parts.append("</div><h2>How the team works</h2><div class=grid>")
        parts.append(f"<figure>{_strip_chart(data['run_hours_sample'])}</figure>")
        hours_title = f"Runs by start hour ({data['timezone']})"
        parts.append(f"<figure>{_bar_chart(hours_title, data['runs_by_start_hour'], horizontal=False, limit=24)}</figure>")
        parts.append(f"<figure>{_bar_chart('Estimator distribution', data['estimators'], 'runs')}</figure></div>")
        rows = []
        for r in data["top_runs"]:
            name = html.escape(r["run_name"])
            link = f"<a href=\"{html.escape(r['url'])}\">{name}</a>" if r["url"] else name
            rows.append([link, html.escape(r["experiment"]), html.escape(r["status"]), f"{r['hours']:.2f}",
                         html.escape(r["instance_type"]), m(r["cost"])])
        parts.append("<h2>Costliest runs</h2>" + _table(["run", "experiment", "status", "hours", "machine", "cost"], rows))
    if data["kpis"]:
        rows = [[html.escape(k["kpi"]), "-" if k["value"] is None else f"{k['value']:.4g}",
                 "-" if k["target"] is None else f"{k['target']:.4g}", html.escape(k["direction"]),
                 {True: "<span class=ok>met</span>", False: "<span class=bad>missed</span>"}.get(k["met"],
                                                                                               html.escape(k["missing"] or "-"))]
                for k in data["kpis"]]
        parts.append("<h2>KPIs against targets</h2>" + _table(["KPI", "value", "target", "direction", "status"], rows))
    if data["budgets"]:
        rows = [[html.escape(b["budget"]), m(b["monthly"]), m(b["period_budget"]), m(b["spent"]),
                 "<span class=bad>over</span>" if b["spent"] > b["period_budget"] else "<span class=ok>within</span>"]
                for b in data["budgets"]]
        parts.append("<h2>Budgets</h2>" + _table(["budget", "monthly", "for this period", "spent", ""], rows))
    bill = data.get("cloud_bill")
    if bill:
        parts.append("<h2>The cloud bill beside the estimate</h2><p class=sub>The bill is monthly (UTC) and arrives a "
                     "day or two late; the estimate is MLflow's run time at catalog prices for the same whole month. "
                     "Compute is the bill's Compute and AI and Machine Learning services.</p>")
        rows = [[html.escape(r["bill"]), html.escape(r["month"]), html.escape(r["provider"]), m(r["billed"]),
                 m(r["effective"]), m(r["list"]), m(r["compute_billed"]),
                 m(bill["estimate"][r["month"]]) if r["month"] in bill["estimate"] else "-"] for r in bill["totals"]]
        if rows:
            parts.append(_table(["bill", "month", "provider", "billed", "effective", "list", "compute billed",
                                 "estimate (all runs)"], rows))
        rows = [[html.escape(r["month"]), html.escape(f"{r['tag']}={r['value']}"), m(r["estimate"]), m(r["bill_compute"]),
                 "-" if r["bill_over_estimate"] is None else f"{r['bill_over_estimate']:.2f}x"] for r in bill["by_tag"]]
        if rows:
            parts.append(_table(["month", "allocation", "estimate", "bill (compute, billed)", "bill / estimate"], rows))
        if bill["last_charge"]:
            parts.append("<p class=sub>Latest charge on the bill: " + ", ".join(
                f"{html.escape(k)} {html.escape(v[:16])}" for k, v in bill["last_charge"].items()) + " (UTC).</p>")
        for name, error in bill["errors"].items():
            parts.append(f"<p class=bad>The bill {html.escape(name)} could not be read: {html.escape(error)}</p>")
    genai = data.get("genai")
    if genai and genai.get("by_model"):
        parts.append(f"<h2>GenAI spend</h2><p class=sub>LLM calls of the traces started in the period: "
                     f"{m(genai['total'])} in all. Priced by MLflow's recorded cost, else traces.token_prices, "
                     "else the shipped catalog; unpriced tokens are counted, never costed.</p>")
        rows = [[html.escape(r["experiment"]), html.escape(r["model"]),
                 html.escape(", ".join(f"{k} {v:,}" for k, v in sorted(r["tokens"].items()))), m(r["cost"]),
                 html.escape(", ".join(r["price_sources"]))] for r in genai["by_model"]]
        parts.append(_table(["experiment", "model", "tokens", "cost", "priced by"], rows))
    elif genai and genai.get("error"):
        parts.append(f"<p class=bad>GenAI traces could not be read: {html.escape(genai['error'])}</p>")
    idle = data.get("idle_spend")
    if idle and idle["by_experiment"]:
        parts.append("<h2>Where the money idled</h2><p class=sub>Runs that logged MLflow system metrics: each run's "
                     "cost in the period x (1 - the mean utilization of its GPUs, else its CPU). "
                     f"{idle['runs_without_system_metrics']} runs of the period logged none and are not in it.</p>")
        rows = [[html.escape(name), str(v["runs"]), m(v["cost"]), m(v["idle_cost"]),
                 f"{v['idle_cost'] / v['cost']:.0%}" if v["cost"] else "-"] for name, v in idle["by_experiment"].items()]
        parts.append(_table(["experiment", "runs with system metrics", "their cost", "idle", "idle share"], rows))
        rows = [[html.escape(r["run_name"]), html.escape(r["experiment"]), html.escape(r["instance_type"]),
                 f"{r['utilization']:.0%} {r['resource']}", m(r["cost"]), m(r["idle_cost"])] for r in idle["top_runs"]]
        parts.append(_table(["run", "experiment", "machine", "utilization", "cost", "idle"], rows))
    joined = data.get("billed_runs")
    if joined:
        parts.append("<h2>What the runs really cost: the bill joined to them</h2><p class=sub>Bill rows tagged with a "
                     "run's id, or with a shared cluster's id split by run time (billing.run_join); "
                     "estimate is the run's catalog price times its run time.</p>")
        rows = [[html.escape(name), str(v["runs"]), m(v["estimate"]), m(v["list"]), m(v["billed"])]
                for name, v in joined["by_experiment"].items()]
        parts.append(_table(["experiment", "joined runs", "estimate", "bill at list", "billed"], rows))
        rows = [[html.escape(r["run_name"]), html.escape(r["experiment"]), html.escape(r["instance_type"]),
                 m(r["estimate"]), m(r["billed"]), "final" if r["complete"] else "bill still arriving"]
                for r in joined["top_runs"]]
        parts.append(_table(["run", "experiment", "machine", "estimate", "billed", ""], rows))
        idle = ", ".join(f"{html.escape(k)} {m(v)}" for k, v in joined["idle"].items())
        parts.append(f"<p class=sub>Joined to runs: {m(joined['attributed'])}; idle shared clusters: {idle or 'none'}; "
                     f"tagged for runs not watched: {m(joined['unmatched'])}.</p>")
    tco = data["tco"]
    parts.append("<h2>Total cost of ownership for the period</h2>" + _table(
        ["category", "cost"], [[html.escape(k), m(v)] for k, v in tco.items()] + [["<b>total</b>", f"<b>{m(sum(tco.values()))}</b>"]]))
    style = ("body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}h2{margin-top:1.6em}"
             ".sub{color:#666}.cards{display:flex;gap:1em}.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em}"
             ".k{color:#666;font-size:.85em}.v{font-size:1.5em}.grid{display:grid;grid-template-columns:1fr 1fr;gap:1em}"
             "figure{margin:0}svg{max-width:100%;height:auto}table{border-collapse:collapse}td,th{border-bottom:1px solid #eee;"
             "padding:.25em .8em;text-align:left}.ok{color:#1a7f37}.bad{color:#c62828}.empty{color:#666;font-style:italic}")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>ML cost and KPI report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}"
            f"<p class=sub>Made by mlops-kpi-exporter at {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p></body></html>\n")


