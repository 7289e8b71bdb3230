"""The embedded default: a local MLflow store with a month of realistic history, made once.

Start times are relative to the moment the store is made, so a fresh demo always shows the last
30 days; `demo --reset` makes it anew. The store is written through MLflow's own client, so what
the exporter reads is exactly what a tracking server would hold.

Here: the demo's config and the store's making. The history itself is written by demo_history, the
bill by demo_bill; a tracking server's seeding and the prediction traffic are in demo_serving.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import yaml

from mlops_kpi_exporter import extras
from mlops_kpi_exporter.config import Config, config_from_dict
from mlops_kpi_exporter.demo_history import seed
from mlops_kpi_exporter.demo_serving import DemoModelServer, demo_endpoint, seed_server, traffic

__all__ = ["DemoModelServer", "config_yaml", "demo_config_dict", "prepare", "seed", "seed_server", "traffic"]

log = logging.getLogger(__name__)

MARKER = ".demo-complete"  # written last: a store without it was interrupted and is made again


EXAMPLE_MODEL_URL = "http://127.0.0.1:10151"  # where --print-config says the demo model is (it picks a free port)


def demo_config_dict(db: Path, model_url: str | None = None) -> dict:
    """The demo's settings; with `model_url`, the demo model's server as an endpoint."""
    return {
        "mlflow": {
            "tracking_uri": f"sqlite:///{db.resolve()}",
            "poll_interval": "15s",
            "resync_interval": "10m",
            "experiments": ["*"],
            "exclude_experiments": ["Default"],
        },
        "pricing": {
            "currency": "USD",
            "default_hourly_cost": 0.10,
            "instances": {"onprem-a100": 2.10},  # a machine the catalog cannot know: priced in config
            "calibrate_from_bill": True,  # catalog prices also shown scaled by what the demo's bill pays of list
        },
        "runs": {"estimator_keys": ["estimator"], "max_run_series": 50, "activity_window": "30d"},
        "kpis": [
            {"name": "customer_retention_lift", "metric": "customer_retention_lift", "experiment": "churn-training",
             "source": "latest_finished_run", "target": 0.10, "direction": "higher_is_better",
             "description": "Reduce customer churn"},
            {"name": "champion_accuracy", "metric": "accuracy", "source": "model_alias",
             "model": "churn-classifier", "alias": "champion", "target": 0.85},
            {"name": "fraud_false_positive_rate", "metric": "false_positive_rate", "experiment": "fraud-detection",
             "source": "best_run", "target": 0.05, "direction": "lower_is_better",
             "description": "Minimize financial risk"},
            {"name": "recsys_click_through_rate", "metric": "click_through_rate", "experiment": "recsys-embeddings",
             "target": 0.04, "description": "Increase online sales"},
        ],
        "budgets": [
            {"name": "churn", "experiments": ["churn-*"], "monthly": 150},
            {"name": "recsys", "experiments": ["recsys-embeddings"], "monthly": 250},
            {"name": "support-assistant", "experiments": ["support-assistant"], "monthly": 5, "include": ["compute", "genai"]},
            {"name": "all-ml", "experiments": ["*"], "monthly": 600},
        ],
        "fixed_costs": [
            {"category": "data", "monthly": 1200, "project": "churn-prediction", "description": "labeling vendor"},
            {"category": "data", "monthly": 400, "description": "feature store"},
            {"category": "personnel", "monthly": 42000, "description": "ML team, 3 FTE"},
            {"category": "software", "monthly": 350, "description": "MLflow hosting"},
            {"category": "software", "monthly": 150, "description": "monitoring SaaS"},
            {"category": "operational", "monthly": 300, "description": "network, security, on-call"},
        ],
        "allocation": {"tags": ["team", "project"], "max_values": 10,
                       # each cloud writes the tag keys its own way on the bill
                       "tag_aliases": {"team": ["team", "Team", "user:team"], "project": ["project", "Project", "user:project"],
                                       "mlflow_run_id": ["mlflow_run_id", "user:mlflow_run_id"],
                                       "ClusterId": ["ClusterId", "user:ClusterId"]}},
        "billing": {"poll_interval": "10m", "months": 3, "monthly_budget": 900,
                    # the bill joined to the runs: resources tagged with the run id, and a shared cluster
                    "run_join": [{"bill_tag": "mlflow_run_id", "run": "run_id"},
                                 {"bill_tag": "ClusterId", "run_tag": "mlflow.databricks.cluster.id"}],
                    "sources": [{"name": cloud, "focus": str(db.parent.resolve() / "bill" / cloud)}
                                for cloud in ("aws", "gcp", "azure")]},
        "artifacts": {"enabled": True},
        # the support assistant's self-hosted model, which no catalog prices; spend by user
        "traces": {"token_prices": {"llama-3-8b-internal": {"input": 0.10, "output": 0.10}}, "breakdown": "user"},
        "registry": {"deploy_alias": "champion"},
    } | ({"endpoints": [demo_endpoint(model_url)]} if model_url else {})


def config_yaml(data_dir: Path) -> str:
    """The demo's settings as a config file, a starting point for `serve --config`."""
    return yaml.safe_dump(demo_config_dict(Path(data_dir) / "mlflow.db", EXAMPLE_MODEL_URL), sort_keys=False)


def prepare(data_dir: Path, reset: bool = False, model_url: str | None = None) -> Config:
    """The demo's config, making the store under data_dir first if it is not there yet. Raises
    extras.MissingExtra without the `local` extra: the demo writes and reads a local MLflow store."""
    extras.require("local", "the demo (a local MLflow store, and a Parquet bill)", extras.DEMO)
    data_dir = Path(data_dir)
    db = data_dir / "mlflow.db"
    if reset or not (data_dir / MARKER).exists():
        if data_dir.exists():
            for item in (db, data_dir / "artifacts", data_dir / MARKER):
                if item.is_dir():
                    shutil.rmtree(item)
                elif item.exists():
                    item.unlink()
        data_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        log.info("creating demo MLflow store at %s (once; takes a few seconds)", db)
        now_ms = int(time.time() * 1000)
        runs = seed(f"sqlite:///{db.resolve()}", data_dir / "artifacts", now_ms=now_ms)
        from mlops_kpi_exporter.demo_bill import write_bill

        write_bill(db, config_from_dict(demo_config_dict(db)), now_ms)
        (data_dir / MARKER).write_text("ok\n")
        log.info("demo store ready: %d runs in %.1fs", runs, time.monotonic() - started)
    return config_from_dict(demo_config_dict(db, model_url), source="<demo config>")


def __getattr__(name: str):
    """`demo.Doubler`, where models seeded before it moved to demo_model (pickled by reference) find it."""
    if name == "Doubler":
        from mlops_kpi_exporter.demo_model import Doubler

        return Doubler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
