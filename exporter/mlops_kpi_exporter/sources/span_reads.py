"""Reading the spans of ended traces ahead of folding them: each chunk's batch reads are sent at once, up
to `mlflow.concurrency` in flight, while the search goes on to the next chunks (CHUNKS_AHEAD at most,
which bounds memory). A chunk is folded, in order, only once all its spans came, so a failed read fails
the poll with none of its chunk folded, and the figures are those of a read one batch at a time."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

CHUNKS_AHEAD = 2  # chunks of ended traces whose spans are being read while the search goes on

Reads = Callable[[list[Any]], tuple[int, list[Callable[[], dict]]]]  # a chunk -> (traces to read, batch reads)
Fold = Callable[[list[Any], int, dict], None]  # (chunk, traces read, spans by trace id)


def _at_once(read: Callable[[], Any]) -> Future:
    """A read made now, in this thread (a local store: its queries run in this process anyway)."""
    future: Future = Future()
    future.set_result(read())
    return future


def fold_ahead(chunks: Iterable[list[Any]], reads: Reads, fold: Fold, workers: int) -> None:
    """Fold every chunk in order, its spans read by up to `workers` threads (0: in this thread)."""
    pool = ThreadPoolExecutor(workers, thread_name_prefix="trace-spans") if workers else None
    submit = pool.submit if pool else _at_once
    waiting: deque[tuple[list[Any], int, list[Future]]] = deque()

    def fold_next() -> None:
        chunk, count, futures = waiting.popleft()
        spans: dict = {}
        for future in futures:
            spans.update(future.result())  # the first failed read fails the poll here
        fold(chunk, count, spans)

    try:
        for chunk in chunks:
            count, batch_reads = reads(chunk)
            waiting.append((chunk, count, [submit(r) for r in batch_reads]))
            while len(waiting) > CHUNKS_AHEAD:
                fold_next()
        while waiting:
            fold_next()
    finally:
        if pool:  # after an error, the batches not yet started are dropped, not read for nothing
            pool.shutdown(wait=True, cancel_futures=True)
