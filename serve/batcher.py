"""The asyncio dynamic batcher: rows of concurrent requests merged into batches that run on worker threads.

`Predictor` is the interface the HTTP app calls; `DynamicBatcher` is the one fusion-serve plugs in. Another
batching (Ray Serve's `@serve.batch`, say) plugs in by giving `create_app` a factory of its own Predictor.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from textclassify.runtime.bundle import Bundle
from textclassify.runtime.llm.usage import usage_sum
from textclassify.serve.metrics import ModelMetrics


class QueueFullError(Exception):
    """More rows are waiting than the server's --max-queue allows (503)."""


class RequestTimeoutError(Exception):
    """The request was not answered within --timeout-s (504)."""


@dataclass(frozen=True)
class RowAnswer:
    """One text's answer: its label(s), probabilities [C], why it is degraded (None: it is not), gate skip."""

    prediction: Any
    probabilities: np.ndarray
    degraded: str | None
    llm_skipped: bool
    batch: int
    batch_usage: dict[str, Any]  # the LLM usage of the whole batch this row ran in (one dict per batch)


@dataclass
class Answer:
    """A request's rows, in its order, and the LLM usage of the batches that served them (shared with others)."""

    rows: list[RowAnswer]
    usage: dict[str, Any] = field(default_factory=dict)


class Predictor(Protocol):
    """What the HTTP app needs from a batching strategy."""

    async def predict(self, texts: Sequence[str], timeout_s: float) -> Answer:
        """Answer `texts` (validated), raising QueueFullError, RequestTimeoutError, or the bundle's error."""

    def queue_depth(self) -> int:
        """Rows waiting to start."""

    async def close(self, timeout_s: float) -> None:
        """Stop taking rows; finish what is queued or running (up to `timeout_s`)."""


class _Row:
    __slots__ = ("text", "future", "waiters", "enqueued", "started")

    def __init__(self, text: str, future: asyncio.Future[RowAnswer], now: float) -> None:
        self.text = text
        self.future = future
        self.waiters = 0
        self.enqueued = now
        self.started = False


class DynamicBatcher:
    """Merge rows into batches of at most `max_batch_size`, waiting at most `max_delay_ms` for the batch to fill.

    At most `max_concurrent_batches` batches run at once, each as one `bundle.predict` call on `executor`, so
    ONNX Runtime and the LLM client (shared by all batches: one concurrency limit, one cache) never block the
    event loop. A text already queued or running is not queued again: its row answers every request holding it.
    A row whose requests all gave up (timeout, disconnect) before its batch started is dropped.
    """

    def __init__(self, bundle: Bundle, *, executor: Executor, max_batch_size: int, max_delay_ms: float,
                 max_queue: int, max_concurrent_batches: int, metrics: ModelMetrics | None = None) -> None:
        self._bundle = bundle
        self._executor = executor
        self._max_batch = max_batch_size
        self._max_delay = max_delay_ms / 1000.0
        self._max_queue = max_queue
        self._metrics = metrics
        self._pending: deque[_Row] = deque()
        self._queued = 0  # rows in _pending that someone still waits for
        self._live: dict[str, _Row] = {}  # text -> its row, while queued or running
        self._slots: asyncio.Semaphore | None = None
        self._max_concurrent = max_concurrent_batches
        self._arrived: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._batches = 0
        self._closing = False

    def queue_depth(self) -> int:
        return self._queued

    async def predict(self, texts: Sequence[str], timeout_s: float) -> Answer:
        if self._closing:
            raise QueueFullError("the server is shutting down")
        if not texts:
            return Answer([])
        self._start()
        loop = asyncio.get_running_loop()
        now = loop.time()
        fresh = {t for t in texts if t not in self._live}
        if self._queued + len(fresh) > self._max_queue:
            raise QueueFullError(f"{self._queued} rows are waiting and the queue holds at most {self._max_queue}")
        rows: dict[str, _Row] = {}
        for text in texts:
            if text in rows:
                continue
            row = self._live.get(text)
            if row is None:
                row = _Row(text, loop.create_future(), now)
                self._live[text] = row
                self._pending.append(row)
                self._queued += 1
            row.waiters += 1
            rows[text] = row
        if self._metrics is not None:
            self._metrics.deduplicated(len(texts) - len(fresh))
            self._metrics.queue_depth(self._queued)
        assert self._arrived is not None
        self._arrived.set()
        try:
            futures = [row.future for row in rows.values()]
            done, not_done = await asyncio.wait(futures, timeout=timeout_s, return_when=asyncio.FIRST_EXCEPTION)
            for fut in done:
                if fut.exception() is not None:
                    raise fut.exception()  # type: ignore[misc]
            if not_done:
                raise RequestTimeoutError(f"no answer within {timeout_s:g} s")
        finally:
            for row in rows.values():
                row.waiters -= 1
                if row.waiters == 0 and not row.started and not row.future.done():
                    self._abandon(row)
        answers = [rows[t].future.result() for t in texts]
        return Answer(answers, usage_sum({a.batch: a.batch_usage for a in answers}.values()))  # once per batch

    async def close(self, timeout_s: float) -> None:
        self._closing = True
        deadline = time.monotonic() + timeout_s
        while (self._queued or self._running) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._loop_task is not None:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except asyncio.CancelledError:
                pass

    # -- internals ------------------------------------------------------------------------------
    def _start(self) -> None:
        if self._loop_task is None:
            self._arrived = asyncio.Event()
            self._slots = asyncio.Semaphore(self._max_concurrent)
            self._loop_task = asyncio.get_running_loop().create_task(self._batch_loop(), name="textclassify-batcher")

    def _abandon(self, row: _Row) -> None:
        """Nobody waits for this row any more: it leaves the queue (lazily) and the in-flight map."""
        self._queued -= 1
        if self._live.get(row.text) is row:
            del self._live[row.text]
        row.future.cancel()
        if self._metrics is not None:
            self._metrics.queue_depth(self._queued)

    async def _batch_loop(self) -> None:
        assert self._arrived is not None and self._slots is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._queued:
                self._arrived.clear()
                await self._arrived.wait()
            # Wait for the batch to fill, but never past max_delay after its oldest row arrived.
            oldest = next(row.enqueued for row in self._pending if not row.future.done())
            while self._queued < self._max_batch:
                remaining = oldest + self._max_delay - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            await self._slots.acquire()  # a free worker; rows that arrive meanwhile join this batch
            batch = self._take()
            if not batch:
                self._slots.release()
                continue
            task = loop.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _take(self) -> list[_Row]:
        batch: list[_Row] = []
        while self._pending and len(batch) < self._max_batch:
            row = self._pending.popleft()
            if row.future.done():  # abandoned: already counted out of _queued
                continue
            row.started = True
            batch.append(row)
        self._queued -= len(batch)
        if self._metrics is not None:
            self._metrics.queue_depth(self._queued)
        return batch

    async def _run(self, batch: list[_Row]) -> None:
        assert self._slots is not None
        loop = asyncio.get_running_loop()
        self._batches += 1
        batch_id = self._batches
        start = loop.time()
        try:
            result = await loop.run_in_executor(self._executor, self._bundle.predict, [r.text for r in batch])
        except BaseException as e:  # noqa: BLE001 - handed to every request holding a row of this batch
            for row in batch:
                if not row.future.done():
                    row.future.set_exception(e)
                    row.future.exception()  # marked retrieved: a request that gave up must not log it as lost
            if isinstance(e, asyncio.CancelledError):
                raise
        else:
            seconds = loop.time() - start
            meta = result.metadata
            degraded_reasons = meta.get("degraded_reasons") or {}
            degraded = set(meta.get("degraded") or [])
            skipped = set(meta.get("llm_skipped", []) or [])
            probs = np.asarray(result.probabilities, dtype=np.float32)
            usage = {k: v for k, v in (meta.get("llm_usage") or {}).items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for i, row in enumerate(batch):
                reason = None
                if i in degraded:
                    reason = str(degraded_reasons.get(i) or degraded_reasons.get(str(i)) or "the LLM failed")
                if not row.future.done():
                    row.future.set_result(RowAnswer(result.predictions[i], probs[i], reason, i in skipped, batch_id,
                                                     usage))
            if self._metrics is not None:
                self._metrics.batch(len(batch), [start - r.enqueued for r in batch], seconds, meta)
        finally:
            for row in batch:
                if self._live.get(row.text) is row:
                    del self._live[row.text]
            self._slots.release()


__all__ = ["Answer", "DynamicBatcher", "Predictor", "QueueFullError", "RequestTimeoutError", "RowAnswer"]
