"""Renders each dashboard's panels to one PNG from a live Prometheus, without Grafana.

    python dashboards/render.py --prometheus http://127.0.0.1:9090 --out dashboards/img

Every panel runs its own queries (template variables as "All", as Grafana sends them), drawn with matplotlib at its place
in the dashboard grid: time series as lines, stats as numbers, bar charts, pies and tables as such.
It is a faithful picture of what the dashboards query, not a pixel copy of Grafana.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import requests  # noqa: E402

HERE = Path(__file__).parent
# Grafana sends a multi-value variable set to "All" as its allValue (.+ in these dashboards; .* for
# workspace, which also matches the series of an MLflow without workspaces)
SUBSTITUTIONS = {"$workspace": ".*", "$experiment": ".+", "$endpoint": ".+", "$job": ".+", "$instance": ".+", "$month": ".+", "$__rate_interval": "1m",
                 "$__interval": "15s", "$__range": "1h"}


def expand(expr: str, rate_interval: str = "1m", variables: dict[str, str] | None = None) -> str:
    values = SUBSTITUTIONS | {"$__rate_interval": rate_interval} | {f"${k}": v for k, v in (variables or {}).items()}
    for key, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(key, value)
    return expr


def run(prometheus: str, target: dict, window: float, rate_interval: str = "1m",
        variables: dict[str, str] | None = None) -> list[dict]:
    """The target's result: an instant vector, or a range over the last `window` seconds. Raises on bad PromQL.
    `variables`: template variables as Grafana would set them (name -> regex), else "All"."""
    expr = expand(target["expr"], rate_interval, variables)
    now = time.time()
    if target.get("instant"):
        reply = requests.get(f"{prometheus}/api/v1/query", params={"query": expr, "time": now}, timeout=30)
    else:
        step = max(1.0, window / 120)
        reply = requests.get(f"{prometheus}/api/v1/query_range",
                             params={"query": expr, "start": now - window, "end": now, "step": step}, timeout=30)
    body = reply.json()
    if body.get("status") != "success":
        raise ValueError(f"{expr}: {body.get('error', reply.text)}")
    return body["data"]["result"]


def legend(target: dict, labels: dict) -> str:
    text = target.get("legendFormat") or ""
    if text in ("", "__auto"):
        return ",".join(f"{k}={v}" for k, v in labels.items() if k not in ("__name__", "job", "instance")) or "value"
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def draw(ax, panel: dict, prometheus: str, window: float) -> None:
    ax.set_title(panel["title"], fontsize=8, loc="left")
    ax.tick_params(labelsize=6)
    points = []  # (legend, value) of instant results
    lines = []
    for target in panel["targets"]:
        for item in run(prometheus, target, window):
            name = legend(target, item["metric"])
            if "values" in item:
                xs = [float(t) for t, _ in item["values"]]
                lines.append((name, [x - xs[-1] for x in xs], [float(v) for _, v in item["values"]]))
            else:
                points.append((name, float(item["value"][1])))
    kind = panel["type"]
    if not points and not lines:
        ax.text(0.5, 0.5, panel["fieldConfig"]["defaults"].get("noValue", "no data"), ha="center", va="center")
        ax.set_axis_off()
    elif kind == "timeseries":
        for name, xs, ys in lines[:12]:
            ax.plot([x / 60 for x in xs], ys, label=name, linewidth=1)
        ax.set_xlabel("minutes", fontsize=6)
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        ax.legend(fontsize=5, loc="upper left")
    elif kind == "stat":
        ax.set_axis_off()
        text = "   ".join(f"{n}: {v:,.4g}" if len(points) > 1 else f"{v:,.2f}" for n, v in points[:6])
        ax.text(0.5, 0.4, text, ha="center", va="center", fontsize=12 if len(points) == 1 else 7)
    elif kind == "piechart":
        ax.pie([max(v, 0) for _, v in points], labels=[n for n, _ in points], textprops={"fontsize": 6})
    elif kind == "table":
        ax.set_axis_off()
        rows = [[n[:60], f"{v:,.4g}"] for n, v in sorted(points, key=lambda p: -p[1])[:8]]
        ax.table(cellText=rows, loc="upper left", cellLoc="left", colWidths=[0.85, 0.15]).set_fontsize(6)
    else:  # barchart
        numeric = all(n.lstrip("-").isdigit() for n, _ in points)
        ordered = sorted(points, key=lambda p: int(p[0]) if numeric else p[0])[:30]
        ax.bar(range(len(ordered)), [v for _, v in ordered])
        ax.set_xticks(range(len(ordered)), [n for n, _ in ordered], rotation=60, ha="right", fontsize=5)


def render(board: dict, prometheus: str, out: Path, window: float) -> Path:
    panels = board["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(12, rows * 0.32 + 0.6), dpi=72)
    grid = fig.add_gridspec(rows, 24, hspace=2.4, wspace=1.2)
    for panel in panels:
        g = panel["gridPos"]
        ax = fig.add_subplot(grid[g["y"]: g["y"] + g["h"], g["x"]: g["x"] + g["w"]])
        draw(ax, panel, prometheus, window)
    fig.suptitle(board["title"], fontsize=11, x=0.01, ha="left")
    path = out / f"{board['uid']}.png"
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", required=True)
    parser.add_argument("--out", type=Path, default=HERE / "img")
    parser.add_argument("--window", type=float, default=600, help="seconds of history for time series")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for path in sorted((HERE / "json").glob("*.json")):
        print(render(json.loads(path.read_text()), args.prometheus, args.out, args.window))


if __name__ == "__main__":
    main()
