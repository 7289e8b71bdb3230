"""The gateway source: the budget policies of MLflow's AI Gateway (MLflow 3.11 on) and the spend of
their current windows, read from the tracking server's REST API each `gateway.poll_interval`.

Two reads a poll: `gateway/budgets/list` (every page) and `gateway/budgets/windows`, through MLflow's
own HTTP client with the exporter's MLflow set-up (credentials, CA file, timeout; mlflow_client.py).
The replies are parsed in gateway_budgets.py and rendered by metrics/gateway.py.

A server without the gateway API (an older MLflow: 404; a server started with the gateway off:
NOT_IMPLEMENTED) is a state, logged once at info, never a failed poll, and shows no gateway series.
A read refused (403) is logged once as a warning; with `gateway.enabled: true` it fails the poll.
Through an MLflow plugin's store (managed MLflow) nothing is read, as there is no gateway API through
the plugin (MLflow's client has no call for these routes, and a request beside the store would miss the
plugin's signing): logged once at info, never a failed poll.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

from prometheus_client.metrics_core import Metric

from mlops_kpi_exporter.bad_data import BadData
from mlops_kpi_exporter.config import Config
from mlops_kpi_exporter.gateway_budgets import (
    BudgetPolicy,
    BudgetWindow,
    nearest_their_limit,
    policies_page,
    windows_of,
)
from mlops_kpi_exporter.metrics.gateway import GatewayView, families
from mlops_kpi_exporter.mlflow_client import (
    MlflowConnection,
    MlflowReader,
    SourceError,
    dropped_connection,
    reads_mlflow_rest,
)
from mlops_kpi_exporter.mlflow_workspaces import discover, in_workspace, qualified

log = logging.getLogger(__name__)

# MLflow serves every route under both; a proxy in front of it may pass only the UI's (ajax-api)
PREFIXES = ("/api/3.0/mlflow/gateway/budgets", "/ajax-api/3.0/mlflow/gateway/budgets")
PAGE = 1000  # MLflow's largest page of policies
MAX_PAGES = 100


class NoGatewayApi(Exception):
    """The server has no such route, or runs with its gateway off."""


class ThroughPlugin(NoGatewayApi):
    """MLflow is read through a plugin's store, whose client has no gateway API."""


class ReadRefused(Exception):
    """The server refuses the caller the read (403)."""


def _error_code(body: str) -> str:
    try:
        reply = json.loads(body)
    except ValueError:
        return ""
    return str(reply.get("error_code") or "") if isinstance(reply, dict) else ""


class GatewaySource(MlflowReader):
    name = "gateway"

    def __init__(self, config: Config, mlflow: MlflowConnection):
        super().__init__(config, mlflow)
        self.cfg = config.gateway
        self.mlflow_cfg = config.mlflow
        self.interval = self.cfg.poll_interval
        self.refusal_fails = self.cfg.enabled == "true"  # asked for explicitly: a refused read is a failure
        self.prefix = PREFIXES[0]
        self.workspaces: tuple[str, ...] | None = None  # the server's, read each poll (None: it has none)
        self.unavailable = ""  # why nothing was read last poll (logged once on entering it), else ""

    # -- the poller's interface --------------------------------------------------------------------
    def check(self) -> str:
        try:
            policies, invalid = self._in_every_workspace(self._policies)
        except ThroughPlugin:
            return "no gateway API through this plugin: nothing to read"
        except NoGatewayApi as exc:
            return f"no gateway API on this MLflow server ({exc}): nothing to read"
        except ReadRefused as exc:
            if self.refusal_fails:
                raise SourceError(self._refused_text(exc)) from None
            return self._refused_text(exc)
        except BadData as exc:
            raise SourceError(f"MLflow's gateway/budgets/list reply cannot be read: {exc}") from None
        return f"gateway budgets API answers: {len(policies)} budget policies ({len(invalid)} unreadable)"

    def poll(self) -> tuple[list[Metric], str]:
        try:
            policies, invalid = self._in_every_workspace(self._policies)
            windows, bad_windows = self._in_every_workspace(self._windows)
        except ThroughPlugin:
            self._enter("plugin", logging.INFO, "MLflow at %s is read through an MLflow plugin: no gateway API through "
                        "this plugin, so no gateway budgets are read", self.mlflow.uri_for_humans)
            return [], "no gateway API through this plugin: nothing read"
        except NoGatewayApi as exc:
            self._enter("no_api", logging.INFO, "MLflow at %s has no gateway API (%s): no gateway budgets to read",
                        self.mlflow.uri_for_humans, exc)
            return [], f"no gateway API on this MLflow server ({exc}): nothing read"
        except ReadRefused as exc:
            if self.refusal_fails:
                raise SourceError(self._refused_text(exc)) from None
            self._enter("refused", logging.WARNING, "%s", self._refused_text(exc))
            return [], self._refused_text(exc)
        except BadData as exc:
            raise SourceError(f"MLflow's gateway budgets reply cannot be read: {exc}") from None
        if windows is not None:
            self._enter("", logging.INFO, "MLflow at %s answers the gateway budgets API again", self.mlflow.uri_for_humans)
        unreadable = [*invalid, *bad_windows]
        if unreadable:  # one line a poll, not one per entry
            log.warning("gateway budgets: %d policies or windows cannot be read, e.g.: %s", len(unreadable),
                        str(unreadable[0])[:200])
        known = windows or {}
        shown = nearest_their_limit(policies, known, self.cfg.max_policies)
        skipped = {"invalid_data": len(unreadable), "over_max_policies": len(policies) - len(shown)}
        view = GatewayView(shown=tuple(shown), windows=known, listed=len(policies) + len(invalid), skipped=skipped)
        with_window = sum(1 for p in shown if p.policy_id in known)
        return families(view), (f"{len(policies)} budget policies, {len(shown)} shown, {with_window} with a current "
                                f"window; {len(unreadable)} entries unreadable")

    # -- reading -----------------------------------------------------------------------------------
    def _in_every_workspace(self, read: Any) -> tuple[Any, list[BadData]]:
        """`read()` in every watched workspace (MLflow with workspaces keeps policies per workspace and
        refuses a windows read that names none), policy ids qualified as workspace/id; as it is without."""
        spaces = discover(self.client, self.mlflow_cfg.workspaces, self.mlflow_cfg.exclude_workspaces)
        self.workspaces = spaces
        if spaces is None:
            return read()
        found: Any = [] if read == self._policies else None
        invalid: list[BadData] = []
        for workspace in spaces:
            with in_workspace(workspace):
                got, bad = read()
            invalid += bad
            if isinstance(got, dict):  # windows by policy id (None: no windows route)
                found = {**(found or {}), **{qualified(workspace, k): v for k, v in got.items()}}
            elif got is not None:
                found = [*found, *(replace(p, policy_id=qualified(workspace, p.policy_id)) for p in got)]
        return found, invalid

    def _policies(self) -> tuple[list[BudgetPolicy], list[BadData]]:
        """Every page of policies, each policy once (pages are offsets: one may repeat as policies are added)."""
        by_id: dict[str, BudgetPolicy] = {}
        invalid: list[BadData] = []
        token: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            params: dict[str, Any] = {"max_results": PAGE} | ({"page_token": token} if token else {})
            page, bad, token = policies_page(self._get("/list", params))
            by_id.update((p.policy_id, p) for p in page)
            invalid += bad
            if token is None:
                return list(by_id.values()), invalid
            if token in seen:
                raise SourceError("MLflow's gateway/budgets/list gives the same page token twice")
            seen.add(token)
        raise SourceError(f"MLflow lists more than {MAX_PAGES * PAGE:,} gateway budget policies")

    def _windows(self) -> tuple[dict[str, BudgetWindow] | None, list[BadData]]:
        """The current windows; None from an MLflow that lists policies but has no windows route."""
        try:
            return windows_of(self._get("/windows", {}))
        except NoGatewayApi as exc:
            self._enter("no_windows", logging.INFO, "MLflow at %s has no gateway budget windows API (%s): limits are "
                        "shown without spend", self.mlflow.uri_for_humans, exc)
            return None, []

    def _get(self, route: str, params: dict[str, Any]) -> Any:
        """The JSON of a GET under the budgets routes, on the prefix that answered last."""
        from mlflow.utils.rest_utils import http_request

        store = self.client._tracking_client.store
        if not reads_mlflow_rest(self.client, store):
            raise ThroughPlugin()
        host_creds = store.get_host_creds()
        for prefix in (self.prefix, *(p for p in PREFIXES if p != self.prefix)):
            try:
                response = http_request(host_creds, prefix + route, "GET", params=params)
            except Exception as exc:
                if not dropped_connection(exc):
                    raise
                response = http_request(host_creds, prefix + route, "GET", params=params)  # a closed keep-alive
            if response.status_code != 404:
                self.prefix = prefix
                break
        code = _error_code(response.text)
        if response.status_code == 404 or code == "NOT_IMPLEMENTED" or response.status_code == 501:
            raise NoGatewayApi(code or "ENDPOINT_NOT_FOUND")
        if response.status_code == 403 or code == "PERMISSION_DENIED":
            raise ReadRefused(code or "HTTP 403")
        if response.status_code != 200:
            detail = " ".join(response.text.split())[:200]
            raise SourceError(f"MLflow answered gateway/budgets{route} with HTTP {response.status_code}"
                              f"{f' {code}' if code else ''}: {detail}")
        if not response.text.strip():
            return {}
        try:
            return response.json()
        except ValueError:
            raise SourceError(f"MLflow's gateway/budgets{route} reply is not JSON") from None

    def _refused_text(self, exc: Exception) -> str:
        return (f"MLflow at {self.mlflow.uri_for_humans} refuses to list the gateway budgets ({exc}): give the "
                "exporter's MLflow user the right to read them (an admin in some MLflow versions)")

    def _enter(self, state: str, level: int, message: str, *args: Any) -> None:
        """Log a state once, when the source enters it ("": all read, logged only when coming back)."""
        if self.unavailable != state and (state or self.unavailable):
            log.log(level, message, *args)
        self.unavailable = state
