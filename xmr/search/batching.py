"""Micro-batching of search queries for the server: queries that arrive together are encoded together.

One worker thread takes the first waiting query, collects what else arrives within ``window_s``
(at most ``max_batch`` queries), and answers each group of the same kind, ``k`` and ``binary`` with
one batched search (``Searcher.search_texts`` / ``search_images``: one encoder pass, one faiss
search), so every answer equals the unbatched one. Callers await their query's future from the
event loop (``MicroBatcher.search``); no model work runs there. Queries are validated before they
are queued; a group whose batched search fails anyway is searched again one query at a time, so an
error reaches only the query that causes it.
"""
from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import defaultdict
from concurrent.futures import Future
from typing import Any, Callable

WINDOW_MS = 5.0  # the server's default window (xmr serve --batch-window-ms)
MAX_BATCH = 32
_STOP = object()


class MicroBatcher:
    """Groups concurrent queries into batched searches on one worker thread.

    ``searches`` maps a kind (e.g. ``"text"``) to its batched search, ``(queries, k, binary) ->
    one answer per query``. The thread starts with ``start()`` (or the first query) and ends
    with ``stop()``.
    """

    def __init__(self, searches: dict[str, Callable[[list, int, bool], list]], window_s: float,
                 max_batch: int = MAX_BATCH):
        if window_s <= 0 or max_batch < 1:
            raise ValueError(f"batching needs window_s > 0 and max_batch >= 1, got {window_s}, {max_batch}")
        self.searches, self.window_s, self.max_batch = searches, window_s, max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="xmr-batcher", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Let the worker finish the batch at hand, fail what is still queued, and join it."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout)

    def submit(self, kind: str, query: Any, k: int, binary: bool = False) -> Future:
        """Queue one (validated) query; the future resolves to its answer or its search's error."""
        if kind not in self.searches:
            raise ValueError(f"unknown query kind {kind!r}; one of {sorted(self.searches)}")
        self.start()  # an ASGI host that runs no lifespan still gets a worker
        future: Future = Future()
        self._queue.put((kind, query, k, binary, future))
        return future

    async def search(self, kind: str, query: Any, k: int, binary: bool = False):
        """The answer to one query, awaited on the event loop while the worker searches."""
        return await asyncio.wrap_future(self.submit(kind, query, k, binary))

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stopping = self._collect(first)
            self._answer(batch)
            if stopping:
                self._fail_queued()
                return

    def _collect(self, first) -> tuple[list, bool]:
        """``first`` and what arrives within the window (up to ``max_batch``); whether stop came."""
        batch, deadline = [first], time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _answer(self, batch: list) -> None:
        groups = defaultdict(list)
        for kind, query, k, binary, future in batch:
            if future.set_running_or_notify_cancel():  # a cancelled request (client gone) is dropped
                groups[kind, k, binary].append((query, future))
        for (kind, k, binary), members in groups.items():
            self._answer_group(self.searches[kind], members, k, binary)

    def _answer_group(self, search: Callable, members: list, k: int, binary: bool) -> None:
        """One batched search for queries of the same kind, k and binary, each future resolved."""
        try:
            answers = search([query for query, _ in members], k, binary)
        except Exception as e:  # noqa: BLE001 - delivered to the callers
            if len(members) == 1:
                members[0][1].set_exception(e)
            else:  # one query failed the batch: each alone gets its own answer or error
                for member in members:
                    self._answer_group(search, [member], k, binary)
            return
        for (_, future), answer in zip(members, answers):
            future.set_result(answer)

    def _fail_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP and item[4].set_running_or_notify_cancel():
                item[4].set_exception(RuntimeError("the server is shutting down"))

