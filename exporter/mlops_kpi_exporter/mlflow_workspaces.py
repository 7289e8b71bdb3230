"""MLflow workspaces (MLflow 3.10+, `mlflow server --enable-workspaces`): one server, many tenants.

A request reaches the workspace named by its `X-MLFLOW-WORKSPACE` header; without one, the default
workspace. A client asking in the wrong workspace is not refused: it sees nothing (a search of
another workspace's experiment finds no runs). So every experiment-scoped call here runs inside
`in_workspace(its workspace)`, and the names that identify a tenant's things (experiments, registered
models) are qualified as `workspace/name` throughout the exporter (config globs, logs, `report`).
Prometheus sees them as two labels, `workspace` and the name (split_workspace_labels); a server
without workspaces has no qualified names and an exposition exactly as before.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter.mlflow_client import SourceError, reads_mlflow_rest

log = logging.getLogger(__name__)

ENDPOINT = "/api/3.0/mlflow/workspaces"
DEFAULT = "default"  # the workspace of requests that name none (and of everything made before workspaces)
SEPARATOR = "/"  # never in a workspace name (lowercase letters, digits and inner hyphens)


class NoListableWorkspace(SourceError):
    """The server has workspaces, but these credentials may list none: nothing could be read (a failed
    poll, a failed `check`, with this message)."""


@contextmanager
def in_workspace(workspace: str | None) -> Iterator[None]:
    """MLflow's requests made inside go to `workspace` (None: as without workspaces). Bound to the
    calling thread's context only: mlflow.set_workspace() also writes MLFLOW_WORKSPACE, which every
    thread shares, and sources read several workspaces in parallel threads."""
    if workspace is None:
        yield
        return
    from mlflow.utils.workspace_context import _WORKSPACE  # the variable MLflow's request headers read

    token = _WORKSPACE.set(workspace)
    try:
        yield
    finally:
        _WORKSPACE.reset(token)


def within(workspace: str | None, call: Callable[..., Any]) -> Callable[..., Any]:
    """`call`, made inside `workspace` each time (for the page fetchers that run in worker threads)."""
    if workspace is None:
        return call

    def scoped(*args: Any, **kwargs: Any) -> Any:
        with in_workspace(workspace):
            return call(*args, **kwargs)

    return scoped


def qualified(workspace: str | None, name: str) -> str:
    return name if workspace is None else f"{workspace}{SEPARATOR}{name}"


def split(name: str) -> tuple[str | None, str]:
    """(workspace, name) of a qualified name; (None, name) for a name of a server without workspaces."""
    workspace, sep, bare = name.partition(SEPARATOR)
    return (workspace, bare) if sep else (None, name)


def matches(name: str, globs: Iterable[str], workspaces_on: bool) -> bool:
    """Whether a (qualified, when workspaces are on) name matches a glob: by its name in any workspace
    (`churn-*`) or by its qualified name (`team-a/*`)."""
    bare = split(name)[1] if workspaces_on else name
    return any(fnmatch.fnmatchcase(bare, g) or fnmatch.fnmatchcase(name, g) for g in globs)


def discover(client: Any, include: Sequence[str], exclude: Sequence[str]) -> tuple[str, ...] | None:
    """The workspaces to read, sorted; None when the server has none (it predates them or runs without
    them; a local store or a tracking plugin's URI: read as today, in its default workspace).
    Raises NoListableWorkspace when it has them but lists none to these credentials."""
    from mlflow.utils.rest_utils import http_request

    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if not reads_mlflow_rest(client, store):  # a local store, or a plugin's (whose auth a bare request would lack)
        return None
    host_creds = store.get_host_creds

    # its answer is the status itself: no retry of a 503, and the status handed back, not raised
    response = http_request(host_creds(), ENDPOINT, "GET", max_retries=0, retry_codes=frozenset(), raise_on_status=False)
    if response.status_code in (404, 501, 503):  # 503: "running without workspaces support"
        return None
    if response.status_code == 401:  # no credentials, or not accepted: not a matter of workspace rights
        raise NoListableWorkspace("MLflow did not accept the exporter's credentials (HTTP 401 UNAUTHENTICATED, "
                                  "listing its workspaces): check mlflow.auth")
    if response.status_code == 403:
        raise NoListableWorkspace("MLflow refused to list its workspaces (HTTP 403): give the exporter's "
                                  "credentials read access to the workspaces it should cost")
    response.raise_for_status()
    reply = response.json()
    listed = sorted({str(w.get("name")) for w in (reply.get("workspaces") or []) if isinstance(w, dict) and w.get("name")}
                    if isinstance(reply, dict) else set())
    if not listed:
        raise NoListableWorkspace("MLflow has workspaces but lists none to the exporter's credentials: "
                                  "give them read access to the workspaces it should cost")
    return tuple(w for w in listed if any(fnmatch.fnmatchcase(w, g) for g in include)
                 and not any(fnmatch.fnmatchcase(w, g) for g in exclude))


def split_workspace_labels(families: Iterable[Metric], split_label: Mapping[str, str]) -> list[Metric]:
    """The families, the qualified names in their `split_label[family name]` label split in two:
    `workspace` and the name. Families not named there pass as they are."""
    out = []
    for fam in families:
        key = split_label.get(fam.name)
        if key is None:
            out.append(fam)
            continue
        copy = Metric(fam.name, fam.documentation, fam.type, fam.unit)
        for sample in fam.samples:
            labels = {}
            for label, value in sample.labels.items():
                if label == key:
                    workspace, value = split(value)  # `other` (beyond a top N) has no workspace
                    if workspace is not None:
                        labels["workspace"] = workspace
                labels[label] = value
            copy.samples.append(sample._replace(labels=labels))
        out.append(copy)
    return out
