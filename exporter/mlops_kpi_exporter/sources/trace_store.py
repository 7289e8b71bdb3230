"""MLflow's trace APIs, as the traces source reads them: the only module that touches them.

Trace infos by search and by id, the spans of ended traces in batches (`traces/batchGet`, its JSON
read directly from a plain http(s) server; through a plugin's store, the store's own batch_get_traces),
and the server's aggregation (`traces/metrics`). Several of these are MLflow's private or REST-level
APIs (the tracing client's store, `http_request`): kept apart so that a change of MLflow's shapes is
met in one place, and the sync (sources/traces.py) reads as what it does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any

from mlflow.exceptions import MlflowException

from mlops_kpi_exporter.mlflow_workspaces import in_workspace, within
from mlops_kpi_exporter.mlflow_client import paged, reads_mlflow_rest
from mlops_kpi_exporter.trace_facts import SpanLite

SPANS_LOCATION, TRACKING_STORE = "mlflow.trace.spansLocation", "TRACKING_STORE"  # MLflow's TraceTagKey
SEARCH_PAGE = 500  # the largest page search_traces gives
SPAN_BATCH = 50  # traces per traces/batchGet request (their ids go in the query string)
EXPERIMENT_CHUNK = 100  # experiment ids per search_traces call


def is_unsupported(exc: BaseException) -> bool:
    """The server has no such API (an older MLflow): a state to report, not an error to retry."""
    code = getattr(exc, "error_code", "")
    return code in ("ENDPOINT_NOT_FOUND", "NOT_IMPLEMENTED") or type(exc).__name__ == "MlflowNotImplementedException" \
        or isinstance(exc, NotImplementedError)


def _is_gone(exc: BaseException) -> bool:
    """A trace whose spans cannot be loaded (missing or corrupted data, deleted meanwhile)."""
    return getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "BAD_REQUEST",
                                              "INVALID_PARAMETER_VALUE")


def each_once(infos: Iterable[Any]) -> Iterator[Any]:
    """Each trace once: search pages may overlap when traces are written meanwhile."""
    seen: set[str] = set()
    for info in infos:
        if info.trace_id not in seen:
            seen.add(info.trace_id)
            yield info


class TraceStore:
    """The traces of an MLflow server. `client` gives the MlflowClient, asked at every call (the
    source opens it lazily, and may replace it)."""

    def __init__(self, client: Callable[[], Any], workspace_of: Callable[[str], str | None] = lambda experiment_id: None):
        self._client = client
        self.workspace_of = workspace_of  # experiment id -> its MLflow workspace: each call is made in it

    def _by_workspace(self, items: Sequence[Any], experiment_of: Callable[[Any], str]) -> dict[str | None, list[Any]]:
        out: dict[str | None, list[Any]] = {}
        for item in items:
            out.setdefault(self.workspace_of(str(experiment_of(item))), []).append(item)
        return out

    @property
    def client(self) -> Any:
        return self._client()

    @property
    def store(self) -> Any:
        return self.client._tracing_client.store  # the REST store, or the SQL store of a sqlite:/// URI

    def probe(self, experiment_ids: Sequence[str]) -> None:
        """One trace info of the first experiment: raises what the server raises (no traces API)."""
        if experiment_ids:
            first = sorted(experiment_ids)[:1]
            within(self.workspace_of(first[0]), self.client.search_traces)(locations=first, max_results=1,
                                                                             include_spans=False)

    def search(self, experiment_ids: Sequence[str], filter_string: str | None = None) -> Iterator[Any]:
        """Trace infos (no spans) of the experiments, oldest first, page by page."""
        for workspace, ids in sorted(self._by_workspace(sorted(experiment_ids), str).items(), key=lambda i: i[0] or ""):
            search = within(workspace, self.client.search_traces)
            for start in range(0, len(ids), EXPERIMENT_CHUNK):
                for trace in paged(search, locations=ids[start : start + EXPERIMENT_CHUNK],
                                   filter_string=filter_string, max_results=SEARCH_PAGE, include_spans=False,
                                   order_by=["timestamp_ms ASC", "request_id ASC"]):
                    yield trace.info

    def trace_infos(self, traces: list[tuple[str, str]]) -> list[Any]:
        """Trace infos by (trace id, experiment id); the ones deleted are left out."""
        out = []
        for workspace, pairs in self._by_workspace(traces, lambda pair: pair[1]).items():
            with in_workspace(workspace):
                out += self._trace_infos([trace_id for trace_id, _ in pairs])
        return out

    def _trace_infos(self, trace_ids: list[str]) -> list[Any]:
        out = []
        for start in range(0, len(trace_ids), SPAN_BATCH):
            chunk = trace_ids[start : start + SPAN_BATCH]
            try:
                out += self.store.batch_get_trace_infos(chunk)
                continue
            except (AttributeError, MlflowException) as exc:
                if isinstance(exc, MlflowException) and not is_unsupported(exc):
                    raise
            for trace_id in chunk:  # servers before batchGetInfos: one by one
                try:
                    out.append(self.client._tracing_client.get_trace_info(trace_id))
                except MlflowException as exc:
                    if not _is_gone(exc):
                        raise
        return out

    def span_reads(self, infos: list[Any]) -> list[Callable[[], dict[str, list[Any] | None]]]:
        """The requests that read the spans of these traces, each made in its trace's workspace and safe
        to run in any thread (in_workspace binds only the calling thread's context): one per SPAN_BATCH
        traces kept in the tracking store, one per trace whose spans are an artifact. Each gives trace
        id -> its spans; None for a trace whose spans cannot be loaded (its own totals count). The
        batches hold disjoint traces: their results merge in any order."""
        reads: list[Callable[[], dict[str, list[Any] | None]]] = []
        by_workspace = self._by_workspace(infos, lambda info: info.experiment_id)
        for workspace, some in sorted(by_workspace.items(), key=lambda item: item[0] or ""):
            in_store = [i.trace_id for i in some if (i.tags or {}).get(SPANS_LOCATION) == TRACKING_STORE]
            for start in range(0, len(in_store), SPAN_BATCH):
                reads.append(within(workspace, partial(self.batch_spans, in_store[start : start + SPAN_BATCH])))
            stored = set(in_store)
            reads += [within(workspace, partial(self._artifact_spans, i.trace_id)) for i in some
                      if i.trace_id not in stored]
        return reads

    def _artifact_spans(self, trace_id: str) -> dict[str, list[Any] | None]:
        """Older clients wrote spans as an artifact: one request each."""
        try:
            return {trace_id: list(self.client.get_trace(trace_id, display=False).data.spans)}
        except MlflowException as exc:
            if not _is_gone(exc):
                raise
            return {trace_id: None}

    def batch_spans(self, trace_ids: list[str]) -> dict[str, list[Any]]:
        """The spans of traces kept in the tracking store, by trace id. From a plain http(s) server, the
        reply's JSON is read directly (the same request, auth, TLS and timeout as MLflow's client, without
        its pure-Python protobuf parse, which cost half of a full read); a local store (sqlite:///) or a
        plugin's store (managed MLflow: its own signing and routes) is asked through its own method."""
        store = self.store
        if not reads_mlflow_rest(self.client, store):
            return {t.info.trace_id: list(t.data.spans) for t in store.batch_get_traces(trace_ids)}
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        endpoint = "/api/3.0/mlflow/traces/batchGet"
        response = http_request(store.get_host_creds(), endpoint, "GET", params={"trace_ids": trace_ids})
        reply = verify_rest_response(response, endpoint).json()
        out: dict[str, list[Any]] = {}
        for trace in reply.get("traces") or [] if isinstance(reply, dict) else []:
            trace_id = (trace.get("trace_info") or {}).get("trace_id")
            if trace_id:
                out[str(trace_id)] = [SpanLite.of(span) for span in trace.get("spans") or [] if isinstance(span, dict)]
        return out

    def metric(self, exp_id: str, metric: str, aggregation: str, dimensions: list[str] | None,
               filters: list[str] | None, end_ms: int | None) -> list[Any]:
        from mlflow.entities.trace_metrics import AggregationType, MetricAggregation, MetricViewType

        with in_workspace(self.workspace_of(exp_id)):
            return list(self.store.query_trace_metrics(
                experiment_ids=[exp_id], view_type=MetricViewType.TRACES, metric_name=metric,
                aggregations=[MetricAggregation(AggregationType(aggregation))], dimensions=dimensions, filters=filters,
                start_time_ms=0 if end_ms is not None else None, end_time_ms=end_ms,
            ))

    def count_by_state(self, exp_id: str, end_ms: int | None) -> Counter[str]:
        """The server's count of the experiment's traces by state (those started up to end_ms, if given)."""
        points = self.metric(exp_id, "trace_count", "COUNT", ["trace_status"], None, end_ms)
        return Counter({str(p.dimensions.get("trace_status")): int(p.values.get("COUNT") or 0) for p in points})

    def tokens_of_state(self, exp_id: str, state: str, end_ms: int) -> int:
        """The server's sum of total_tokens of the experiment's traces in that state, started up to end_ms."""
        points = self.metric(exp_id, "total_tokens", "SUM", None, [f"trace.status = '{state}'"], end_ms)
        return int(sum(p.values.get("SUM") or 0 for p in points))
