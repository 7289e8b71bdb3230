"""The demo's exposition at a fixed moment, for the golden-file test (tests/integration/test_golden.py).

    .venv/bin/python tests/golden.py --write     # after a change that is meant to move the figures

The demo store is seeded as of NOW and every source polls with its clock at NOW, so the figures do
not depend on when the test runs. What still does is masked: run ids (MLflow makes them), poll
durations and times, and deployment lead times (MLflow stamps a model version with the real time).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

GOLDEN = Path(__file__).parent / "fixtures" / "demo-exposition.txt"
NOW_MS = 1_794_744_000_000  # 2026-11-15 12:00 UTC
MASKED_VALUES = ("mlops_source_poll_duration_seconds", "mlops_source_last_success_timestamp_seconds",
                 "mlops_model_deploy_lead_time_seconds",
                 # the demo model's latencies and the probe's are real times
                 "mlops_endpoint_probe_duration_seconds_bucket", "mlops_endpoint_probe_duration_seconds_sum",
                 "mlops_endpoint_request_duration_seconds_bucket", "mlops_endpoint_request_duration_seconds_sum")
# what the demo model is sent before the poll (its steady traffic is off): 20 good, 2 it refuses (400),
# 1 too slow (504)
PREDICTIONS = (*[float(i) for i in range(20)], -1.0, -2.0, 1500.0)


def demo_exposition(workdir: Path) -> str:
    from mlops_kpi_exporter import demo
    from mlops_kpi_exporter.config import config_from_dict

    db = workdir / "mlflow.db"
    demo.seed(f"sqlite:///{db.resolve()}", workdir / "artifacts", now_ms=NOW_MS)
    from mlops_kpi_exporter.demo_bill import write_bill

    write_bill(db, config_from_dict(demo.demo_config_dict(db)), NOW_MS)
    model = demo.DemoModelServer(workdir).start(traffic=False)
    try:
        statuses = [model.predict(x) for x in PREDICTIONS]
        assert statuses == [200] * 20 + [400, 400, 504], statuses
        config = config_from_dict(demo.demo_config_dict(db, model.url))
        return _exposition(config, workdir)
    finally:
        model.close()


def _exposition(config, workdir: Path) -> str:
    from mlops_kpi_exporter.cli import build_registry, build_store, prepare
    from mlops_kpi_exporter.poller import Poller
    from prometheus_client.exposition import generate_latest

    mlflow, sources = prepare(config)
    mlflow.apply()
    for source in sources:
        if hasattr(source, "clock"):
            source.clock = lambda: NOW_MS / 1000
    store = build_store(config, sources)
    poller = Poller(sources, store)
    for source in sources:  # in any order: the derived stage joins their facts once all are in
        assert poller.poll_once(source), source.name
    return mask(generate_latest(build_registry(store, config)).decode(), str(workdir))


def mask(text: str, workdir: str = "") -> str:
    text = re.sub(r'"[0-9a-f]{32}"', '"<run id>"', text)
    if workdir:
        text = text.replace(workdir, "<workdir>")
    lines = []
    for line in text.splitlines():
        if line.startswith(MASKED_VALUES):
            line = line.rsplit(" ", 1)[0] + " <masked>"
        lines.append(line)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.write_text(demo_exposition(Path(tmp)))
    print(f"wrote {GOLDEN}")
