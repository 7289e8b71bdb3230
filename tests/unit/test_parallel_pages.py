"""Reading several paged MLflow searches at once (mlflow_client.pages_in_parallel), and the sync's
use of it: every page once, errors raised, threads stopped, a bounded number of pages waiting, and
the incremental sync's merge order independent of which search answered first."""

from __future__ import annotations

import threading

import pytest
import requests

from mlops_kpi_exporter.config import config_from_dict
from mlops_kpi_exporter.mlflow_client import MlflowConnection, pages, pages_in_parallel
from mlops_kpi_exporter.sources.run_sync import RunSync
from mlops_kpi_exporter.resolved import run_rules


class Page(list):
    def __init__(self, items, token=None):
        super().__init__(items)
        self.token = token


def stream(name, count, gate=None, served=None):
    def read():
        for number in range(count):
            if gate is not None:
                assert gate.wait(10)
            if served is not None:
                served.append((name, number))
            yield [f"{name}{number}"]
    return read


@pytest.mark.parametrize("workers", [0, 1, 2, 5])
def test_every_page_of_every_stream_arrives_once_with_its_stream(workers):
    streams = [stream("a", 3), stream("b", 0), stream("c", 4)]
    got = list(pages_in_parallel(streams, workers))
    assert sorted(got) == sorted([(0, ["a0"]), (0, ["a1"]), (0, ["a2"])] + [(2, [f"c{i}"]) for i in range(4)])
    assert [p for i, p in got if i == 0] == [["a0"], ["a1"], ["a2"]]  # a stream's pages keep their order
    assert not [t for t in threading.enumerate() if t.name.startswith("mlflow-pages")]


def test_an_error_in_one_stream_is_raised_and_every_thread_stops():
    def broken():
        yield ["x0"]
        raise OSError("MLflow went away")

    with pytest.raises(OSError, match="went away"):
        list(pages_in_parallel([stream("a", 1000), broken, stream("c", 1000)], 3))
    assert not [t for t in threading.enumerate() if t.name.startswith("mlflow-pages")]


def test_pages_read_ahead_are_bounded_and_a_caller_that_leaves_stops_the_readers():
    served: list = []
    reader = pages_in_parallel([stream("a", 1000, served=served), stream("b", 1000, served=served)], 2)
    first = next(reader)
    assert first[1] in (["a0"], ["b0"])
    # one page waiting, one more in each worker's hand: never the whole history
    assert len(served) <= 1 + 2 + 1
    reader.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("mlflow-pages")]
    assert len(served) <= 1 + 2 + 1


class Info:
    def __init__(self, run_id, status, end_time):
        self.run_id, self.experiment_id, self.run_name, self.status = run_id, "1", run_id, status
        self.start_time, self.end_time, self.lifecycle_stage = 1_800_000_000_000, end_time, "active"


class Run:
    def __init__(self, run_id, status, end_time=None):
        self.info = Info(run_id, status, end_time)
        self.data = type("Data", (), {"tags": {}, "params": {}, "metrics": {}})()


class TwoFacedClient:
    """MLflow answering the RUNNING search last, with the run as it was before it ended."""

    def __init__(self):
        self.ended_answered = threading.Event()

    def search_runs(self, experiment_ids, filter_string, run_view_type, max_results, page_token=None):
        if "status = 'RUNNING'" in filter_string:
            assert self.ended_answered.wait(10)
            return Page([Run("r1", "RUNNING")])
        if "end_time" in filter_string:
            self.ended_answered.set()
            return Page([Run("r1", "FINISHED", 1_800_000_360_000)])
        return Page([])


def test_a_run_seen_both_running_and_ended_in_one_incremental_sync_keeps_its_ended_self():
    config = config_from_dict({"mlflow": {"tracking_uri": "http://127.0.0.1:9", "concurrency": 3}})
    sync = RunSync(config, MlflowConnection("http://127.0.0.1:9", 5.0, None), run_rules(config))
    sync._client = TwoFacedClient()
    sync.watermark_ms = 1_800_000_000_000
    sync.experiments = {"1": "exp"}
    changes = sync._read_changes({"1": "exp"}, sync.new_ledger())
    assert changes.fetched["r1"].info.status == "FINISHED"


def mlflow_error_from(cause: Exception) -> Exception:
    """What MLflow's REST client raises: its own exception, the requests error only as context."""
    from mlflow.exceptions import MlflowException

    try:
        try:
            raise cause
        except Exception as e:
            raise MlflowException(f"API request failed with exception {e}")
    except MlflowException as wrapped:
        return wrapped


@pytest.mark.parametrize("cause, retried", [
    (requests.exceptions.ConnectionError("('Connection aborted.', ConnectionResetError(104))"), True),
    (requests.exceptions.ReadTimeout("read timed out"), False),  # a slow MLflow: fail within the timeout
    (ValueError("bad reply"), False),
])
def test_a_page_whose_connection_broke_is_asked_once_more(cause, retried):
    calls = []

    def fetch(page_token=None):
        calls.append(page_token)
        if len(calls) == 1:
            raise mlflow_error_from(cause)
        return Page(["run"])

    if retried:
        assert list(pages(fetch)) == [["run"]] and calls == [None, None]
    else:
        with pytest.raises(Exception):
            list(pages(fetch))
        assert calls == [None]


def test_a_connection_that_breaks_twice_fails_the_read():
    def fetch(page_token=None):
        raise mlflow_error_from(requests.exceptions.ConnectionError("connection refused"))

    with pytest.raises(Exception, match="connection refused"):
        list(pages(fetch))
