"""Benchmark the traces source (GenAI spend) against a real `mlflow server` holding 100,000 traces.

The store is seeded through MLflow's own SqlAlchemyStore (`log_spans`, the path the tracking server
takes for every span it receives: it creates the trace, sums its token usage, prices its spans from
MLflow's bundled catalog, fills the analytics columns), straight into the SQLite file, in batches of
2,000 traces: writing 100,000 traces through the tracing API would take hours. The only row added
by hand is each trace's `mlflow.trace.spansLocation = TRACKING_STORE` tag, which a real client sets
with `start_trace` and which tells readers that the spans are in the database. Each trace is an AGENT
root span with one LLM call (a fifth with two), over three models (gpt-4o-mini and claude-sonnet-4-5
priced by MLflow, a fine-tune priced from the config), a twentieth ERROR, over the last 30 days, in
4 experiments; the expected trace and token totals are computed here, independently of the exporter.

The server runs `--server-workers` worker processes (2 by default), and the exporter reads the spans
`mlflow.concurrency` batches at once (`--concurrency`, else the config's default). Then, for each mode
(`aggregate`, `incremental`), with a fresh source:
  - the first poll (reads every trace info, and the spans of every trace, once);
  - steady polls with nothing changed (median / max of 5);
  - a poll after 20 new traces (written through the tracing API, as an app would);
  - the hourly resync (the clock moved past traces.resync_interval): aggregate checks the books
    against the server's aggregation, incremental recounts everything;
and, in the same run, after the first poll (MLflow's caches warm: the ratio errs against the exporter):
  - the search pages alone: every trace info paged through the exporter's own search, nothing folded;
  - the floor: MLflow's own time for the first poll's batches, the same `traces/batchGet` requests (the
    same traces, SPAN_BATCH a request) issued by a bare client (a requests session a thread) at the same
    concurrency, each reply read whole and not parsed; and the ratio first poll / floor;
  - the baseline: a naive exporter that reads every trace (infos and spans) on every poll, which is
    what the first poll costs.
MLflow's catalog download and telemetry are off (no network).

    .venv/bin/python bench/bench_traces.py                  # 100,000 traces (about 25 minutes, 8 of them
                                                            # seeding the store, kept in bench/.work for reruns)
    .venv/bin/python bench/bench_traces.py --traces 2000 --no-write  # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

os.environ.update({"MLFLOW_MODEL_CATALOG_URI": "", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                   "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING": "false"})

sys.path.insert(0, str(Path(__file__).parent))
from bench_mlflow import WORK, rss_mb, start_server, timed  # noqa: E402
from results import write_section  # noqa: E402

from mlops_kpi_exporter.config import config_from_dict  # noqa: E402
from mlops_kpi_exporter.mlflow_client import MlflowConnection  # noqa: E402
from mlops_kpi_exporter.sources.trace_store import SPAN_BATCH  # noqa: E402
from mlops_kpi_exporter.sources.traces import TraceSource  # noqa: E402
from mlops_kpi_exporter.trace_facts import needs_spans, state_of  # noqa: E402

EXPERIMENTS = 4
MODELS = ["gpt-4o-mini", "claude-sonnet-4-5", "acme-finetune-v2"]
DAY_NS = 86_400 * 10**9
BATCH = 2_000  # traces per log_spans call


def _span(otel_trace_id: int, span_id: int, parent: int | None, name: str, start: int, end: int, attrs: dict,
          error: bool = False):
    from mlflow.entities import Span
    from mlflow.tracing.utils import build_otel_context
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import Status, StatusCode

    return Span(ReadableSpan(
        name=name, context=build_otel_context(otel_trace_id, span_id),
        parent=build_otel_context(otel_trace_id, parent) if parent else None, start_time=start, end_time=end,
        attributes={k: json.dumps(v) for k, v in attrs.items()},
        status=Status(StatusCode.ERROR if error else StatusCode.OK), resource=Resource.get_empty(),
    ))


def build(path: Path, traces: int, seed: int = 3) -> dict:
    """Write the store; returns the expected totals (computed here, not by the exporter)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_suffix(".db-journal")):
        if stale.exists():
            stale.unlink()
    store = SqlAlchemyStore(f"sqlite:///{path.resolve()}", str(WORK / "trace-artifacts"))
    exp_ids = [store.create_experiment(f"genai-{i:02d}") for i in range(EXPERIMENTS)]
    rng = random.Random(seed)
    now_ns = time.time_ns()
    expected = {"traces": 0, "error": 0, "tokens": 0}
    trace_ids: list[str] = []
    for first in range(0, traces, BATCH):
        by_exp: dict[str, list] = {e: [] for e in exp_ids}
        for i in range(first, min(first + BATCH, traces)):
            exp = exp_ids[i % EXPERIMENTS]
            otel_id = rng.getrandbits(128)
            trace_id = f"tr-{otel_id:032x}"
            start = now_ns - rng.randint(DAY_NS // 24, 30 * DAY_NS)
            end = start + rng.randint(200, 20_000) * 10**6
            error = rng.random() < 0.05
            root_id = rng.getrandbits(63) + 1
            common = {"mlflow.traceRequestId": trace_id}
            spans = [_span(otel_id, root_id, None, "agent", start, end,
                           {**common, "mlflow.spanType": "AGENT", "user.id": f"user-{rng.randint(0, 199)}",
                            "session.id": f"s-{rng.randint(0, 9999)}"}, error)]
            for call in range(2 if rng.random() < 0.2 else 1):
                model = MODELS[rng.randrange(len(MODELS))]
                inp, out = rng.randint(50, 4000), rng.randint(10, 800)
                tokens = {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out}
                if model == "claude-sonnet-4-5" and rng.random() < 0.5:
                    tokens["cache_read_input_tokens"] = rng.randint(0, inp)
                spans.append(_span(otel_id, rng.getrandbits(63) + 1, root_id, f"llm-{call}", start + 1000, end - 1000,
                                   {**common, "mlflow.spanType": "LLM", "mlflow.chat.tokenUsage": tokens,
                                    "mlflow.llm.model": model}))
                expected["tokens"] += inp + out
            by_exp[exp] += spans
            trace_ids.append(trace_id)
            expected["traces"] += 1
            expected["error"] += error
        for exp, spans in by_exp.items():
            store.log_spans(exp, spans)
        print(f"  {min(first + BATCH, traces):,} traces written", flush=True)
    store.engine.dispose()
    db = sqlite3.connect(path)
    with db:
        db.executemany("INSERT OR REPLACE INTO trace_tags (key, value, request_id) VALUES (?, ?, ?)",
                       [("mlflow.trace.spansLocation", "TRACKING_STORE", t) for t in trace_ids])
    db.close()
    return expected


def poll_with(src: TraceSource) -> tuple[float, list, str]:
    seconds, (families, summary) = timed(src.poll)
    return seconds, families, summary


def totals(families) -> dict:
    out = {"traces": 0, "error": 0, "tokens": 0, "cost": 0.0}
    for f in families:
        for s in f.samples:
            if f.name == "mlops_genai_traces" and s.labels["status"] in ("OK", "ERROR"):
                out["traces"] += int(s.value)
                out["error"] += int(s.value) if s.labels["status"] == "ERROR" else 0
            elif f.name == "mlops_genai_tokens":
                out["tokens"] += int(s.value)
            elif f.name == "mlops_genai_cost":
                out["cost"] += s.value
    return out


def new_traces(url: str, n: int) -> None:
    import mlflow

    mlflow.set_tracking_uri(url)
    mlflow.set_experiment("genai-00")
    for _ in range(n):
        with mlflow.start_span("agent", span_type="AGENT"):
            with mlflow.start_span("llm", span_type="LLM") as span:
                span.set_attribute("mlflow.chat.tokenUsage", {"input_tokens": 100, "output_tokens": 10,
                                                              "total_tokens": 110})
                span.set_attribute("mlflow.llm.model", "gpt-4o-mini")
    mlflow.set_tracking_uri(None)


def floor(url: str, src: TraceSource, concurrency: int) -> dict:
    """The search pages alone, then MLflow's own time for the first poll's batchGet requests (see above)."""
    search_s, infos = timed(lambda: list(src.trace_store.search(sorted(src.experiments))))
    wanted = [i.trace_id for i in infos if state_of(i) in ("OK", "ERROR") and needs_spans(i)]
    batches = [wanted[start : start + SPAN_BATCH] for start in range(0, len(wanted), SPAN_BATCH)]
    sessions = threading.local()

    def batch_get(trace_ids: list[str]) -> int:
        import requests

        if not hasattr(sessions, "session"):
            sessions.session = requests.Session()
        reply = sessions.session.get(f"{url}/api/3.0/mlflow/traces/batchGet", params={"trace_ids": trace_ids},
                                     timeout=300)
        reply.raise_for_status()
        return len(reply.content)

    def every_batch() -> int:
        with ThreadPoolExecutor(concurrency) as pool:
            return sum(pool.map(batch_get, batches))

    floor_s, size = timed(every_batch)
    return {"search_s": search_s, "floor_s": floor_s, "batches": len(batches), "reply_mb": size / 2**20}


def bench(traces: int, rebuild: bool, server_workers: int, concurrency: int | None) -> list[dict]:
    db = WORK / f"traces-{traces}.db"
    marker = db.with_suffix(".json")
    if rebuild or not marker.exists() or not db.exists():
        print(f"--- building a store of {traces:,} traces", flush=True)
        build_s, expected = timed(build, db, traces)
        marker.write_text(json.dumps({**expected, "build_s": build_s}))
    expected = json.loads(marker.read_text())
    work = WORK / f"traces-{traces}-run.db"  # the runs below add traces: work on a copy
    work.write_bytes(db.read_bytes())
    proc, url = start_server(work, server_workers)
    rows = []
    added = 0
    floor_of: dict = {}
    try:
        for mode in ("aggregate", "incremental"):
            config = config_from_dict({
                "mlflow": {"tracking_uri": url, "timeout": "300s", **({"concurrency": concurrency} if concurrency else {})},
                "traces": {"mode": mode, "token_prices": {"acme-finetune-v2": {"input": 0.5, "output": 1.5}}},
            })
            mlflow = MlflowConnection.from_config(config)
            mlflow.apply()
            shift = [0.0]
            src = TraceSource(config, mlflow, clock=lambda: time.time() + shift[0])
            rss_before = rss_mb()
            first_s, families, first_summary = poll_with(src)
            rss_after = rss_mb()
            got = totals(families)
            assert got["traces"] == expected["traces"] + added and got["error"] == expected["error"], (got, expected)
            assert got["tokens"] == expected["tokens"] + 110 * added, (got, expected)
            if not floor_of:
                floor_of = floor(url, src, config.mlflow.concurrency)
                print(floor_of, flush=True)
            steady = [poll_with(src)[0] for _ in range(5)]
            new_traces(url, 20)
            added += 20
            changed_s, families, changed_summary = poll_with(src)
            assert totals(families)["traces"] == expected["traces"] + added
            shift[0] = 2 * 3600.0
            resync_s, families, resync_summary = poll_with(src)
            after = totals(families)
            assert after["traces"] == expected["traces"] + added
            rows.append({"mode": mode, "traces": expected["traces"] + added, "first_s": first_s,
                         "first_summary": first_summary, "steady_med_s": statistics.median(steady),
                         "steady_max_s": max(steady), "changed_s": changed_s, "changed_summary": changed_summary,
                         "resync_s": resync_s, "resync_summary": resync_summary, "rss_before_mb": rss_before,
                         "rss_after_mb": rss_after, "first_totals": got, "last_totals": after,
                         "concurrency": config.mlflow.concurrency, **floor_of})
            print(rows[-1], flush=True)
        # The baseline: a naive exporter reads every trace, and its spans, at every poll.
        naive = TraceSource(config, mlflow)
        naive_s, families, _ = poll_with(naive)
        assert totals(families)["traces"] == expected["traces"] + added
        for row in rows:
            row["naive_s"] = naive_s
    finally:
        import signal

        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        work.unlink(missing_ok=True)
    # The same store seen by both modes (the incremental source starts where the aggregate one ended).
    same, other = rows[0]["last_totals"], rows[1]["first_totals"]
    assert {k: v for k, v in same.items() if k != "cost"} == {k: v for k, v in other.items() if k != "cost"}, (same, other)
    assert abs(same["cost"] - other["cost"]) < 1e-9, ("the two modes disagree", same, other)
    for row in rows:
        row["build_s"] = expected["build_s"]
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| mode | traces | first poll (every trace and its spans read) | steady poll, nothing changed (median / max "
        "of 5) | poll after 20 new traces | hourly resync poll | naive poll: every trace each time (baseline) "
        "| naive / steady | naive / resync | RSS growth in the first poll | search pages alone | the floor: "
        "MLflow's batchGet for the same batches | first poll / floor |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['traces']:,} | {r['first_s']:.1f} s | {r['steady_med_s'] * 1000:.0f} / "
            f"{r['steady_max_s'] * 1000:.0f} ms | {r['changed_s'] * 1000:.0f} ms | {r['resync_s']:.2f} s "
            f"| {r['naive_s']:.1f} s | {r['naive_s'] / r['steady_med_s']:,.0f}x | {r['naive_s'] / r['resync_s']:,.1f}x "
            f"| {r['rss_after_mb'] - r['rss_before_mb']:+.0f} MiB | {r['search_s']:.1f} s | {r['floor_s']:.1f} s "
            f"| {r['first_s'] / r['floor_s']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=100_000)
    parser.add_argument("--rebuild", action="store_true", help="build the store again even if it exists")
    parser.add_argument("--server-workers", type=int, default=2, help="`mlflow server --workers`")
    parser.add_argument("--concurrency", type=int, help="mlflow.concurrency (default: the config's)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    rows = bench(args.traces, args.rebuild, args.server_workers, args.concurrency)
    import mlflow

    header = (
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, MLflow {mlflow.__version__}, `mlflow server --workers {args.server_workers}` "
        f"on SQLite, `mlflow.concurrency: {rows[0]['concurrency']}` (span batches in flight at once, the floor's "
        f"too: {rows[0]['batches']:,} of {SPAN_BATCH} traces, {rows[0]['reply_mb']:.0f} MiB of replies); the store of "
        f"{args.traces:,} traces was seeded in {rows[0]['build_s'] / 60:.0f} min.\n"
        f"Command: `.venv/bin/python bench/bench_traces.py --traces {args.traces} --server-workers "
        f"{args.server_workers}{f' --concurrency {args.concurrency}' if args.concurrency else ''}`"
    )
    summaries = "\n".join(f"- {r['mode']}: first poll `{r['first_summary']}`; after 20 new traces "
                          f"`{r['changed_summary']}`; resync `{r['resync_summary']}`" for r in rows)
    text = f"{header}\n\n{table(rows)}\n\nPoll log lines:\n{summaries}\n"
    print(text)
    if not args.no_write:
        write_section("bench_traces", text)


if __name__ == "__main__":
    main()
