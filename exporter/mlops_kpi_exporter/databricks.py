"""A Databricks run's cluster, read from the tag that records it at the run's start (README: "Databricks
clusters"): its worker and driver node types and how many workers it had.

Only the reading is here; pricing.py prices the nodes with its config-then-catalog lookup and the
DBU rates, so this module needs neither. Whatever cannot be a cluster raises BadData, as a bad
hourly-cost tag does: the run is skipped and counted, never priced from a guess.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

from mlops_kpi_exporter.bad_data import BadData
from mlops_kpi_exporter.config import MAX_INSTANCE_COUNT

CLUSTER_INFO_TAG = "mlflow.databricks.cluster.info"
MAX_INFO_CHARS = 100_000  # MLflow caps tag values far below this; a longer text is not a cluster's
# Reasons of mlops_runs_skipped (runs.SKIP_REASONS): a worker count is a machine count; the rest of a
# tag that cannot be read is invalid_data (a reason of its own would add a series to every exposition).
BAD_COUNT, BAD_INFO = "invalid_instance_count", "invalid_data"


@dataclass(frozen=True)
class Cluster:
    node_type: str  # the workers' node type (node_type_id)
    driver_type: str  # driver_node_type_id, else node_type_id (what Databricks does when it is unset)
    workers: int  # 0 for a single-node cluster: the driver alone


def read_cluster(text: str) -> Cluster:
    """The cluster described by a `mlflow.databricks.cluster.info` value. Raises BadData."""
    info = _as_object(text)
    node_type = _node_type(info, "node_type_id")
    if node_type is None:
        raise BadData(BAD_INFO, f"{CLUSTER_INFO_TAG} names no node_type_id (instance pools are not priced)")
    return Cluster(node_type, _node_type(info, "driver_node_type_id") or node_type, _workers(info))


def _as_object(text: str) -> Mapping[str, object]:
    """JSON, as Databricks writes it; else a Python literal, as reports sometimes show it (single
    quotes); nothing else is evaluated."""
    text = str(text).strip()
    if len(text) > MAX_INFO_CHARS:
        raise BadData(BAD_INFO, f"{CLUSTER_INFO_TAG} is over {MAX_INFO_CHARS:,} characters")
    value: object = None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        try:
            value = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise BadData(BAD_INFO, f"{CLUSTER_INFO_TAG} is neither JSON nor a literal: {text[:40]!r}") from None
    if not isinstance(value, Mapping):
        raise BadData(BAD_INFO, f"{CLUSTER_INFO_TAG} is not an object: {text[:40]!r}")
    return value


def _node_type(info: Mapping[str, object], key: str) -> str | None:
    value = info.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise BadData(BAD_INFO, f"{CLUSTER_INFO_TAG}: {key} is not a name: {str(value)[:40]!r}")
    return value.strip()


def _workers(info: Mapping[str, object]) -> int:
    """num_workers; for an autoscaling cluster its target when the tag has one, else its minimum: the
    tag is a snapshot at the run's start, and the cluster scales up only under load, so the minimum
    is what it surely ran (an underestimate at worst, never the maximum it may never have reached)."""
    autoscale = info.get("autoscale")
    if autoscale is not None:
        if not isinstance(autoscale, Mapping):
            raise BadData(BAD_INFO, f"{CLUSTER_INFO_TAG}: autoscale is not an object")
        for key in ("target_workers", "min_workers"):
            if autoscale.get(key) is not None:
                return _count(autoscale[key], f"autoscale.{key}")
        raise BadData(BAD_COUNT, f"{CLUSTER_INFO_TAG}: autoscale has neither target_workers nor min_workers")
    if info.get("num_workers") is None:
        raise BadData(BAD_COUNT, f"{CLUSTER_INFO_TAG} has neither num_workers nor autoscale")
    return _count(info["num_workers"], "num_workers")


def _count(value: object, key: str) -> int:
    """A whole number of workers, 0 to MAX_INSTANCE_COUNT - 1 (with the driver, at most MAX_INSTANCE_COUNT
    machines, as for instance_count); a number written as text is a mistake, not a count."""
    whole = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value == int(value))
    if isinstance(value, bool) or not whole or not 0 <= value < MAX_INSTANCE_COUNT:  # type: ignore[operator]
        raise BadData(BAD_COUNT, f"{CLUSTER_INFO_TAG}: {key} is not a whole number from 0 to "
                                 f"{MAX_INSTANCE_COUNT - 1}: {str(value)[:40]!r}")
    return int(value)  # type: ignore[arg-type]
