"""Dynamic batching: concurrent requests become model batches, run on one worker thread.

Requests wait in a bounded queue. A collector coroutine takes the oldest request, adds queued requests
of the same role until ``max_batch_size`` items are gathered or the oldest request has waited
``max_wait_ms``, and runs the batch on the model thread while the event loop keeps accepting
requests. Whatever arrived during a model call is batched at once on the next round, so under load the
batch size grows by itself and at low load latency grows by at most ``max_wait_ms``.

A failed batch is retried request by request, so one bad request never fails its neighbours. A full
queue raises :class:`QueueFull`; after :meth:`DynamicBatcher.close` new requests raise
:class:`ShuttingDown` while everything already queued or running still finishes.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """The request queue is at capacity; the client should retry later."""


class ShuttingDown(Exception):
    """The server is shutting down and accepts no new work."""


@dataclass
class _Request:
    items: list
    role: str
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)


@dataclass
class BatcherStats:
    requests: int = 0
    items: int = 0
    batches: int = 0
    rejected: int = 0
    max_batch_items: int = 0

    def as_dict(self) -> dict:
        mean = self.items / self.batches if self.batches else 0.0
        return {"requests": self.requests, "items": self.items, "batches": self.batches, "rejected": self.rejected,
                "mean_batch_items": round(mean, 2), "max_batch_items": self.max_batch_items}


class DynamicBatcher:
    """Group ``submit(items, role)`` calls into ``encode_fn(items, role)`` calls.

    ``encode_fn`` returns a per-item result indexable along its first axis (an array of shape (N, ...))
    or a tuple of such arrays; each request receives the slice for its own items, in order.
    """

    def __init__(self, encode_fn: Callable[[list, str], Any], max_batch_size: int = 32, max_wait_ms: float = 5.0,
                 max_queue: int = 1024):
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_wait_ms >= 0")
        self.encode_fn = encode_fn
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.stats = BatcherStats()
        self._pending: deque[_Request] = deque()
        self._queued_items = 0
        self._closing = False
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def queued_items(self) -> int:
        return self._queued_items

    @property
    def closing(self) -> bool:
        return self._closing

    def start(self) -> None:
        """Start the collector on the running event loop (idempotent)."""
        if self.running:
            return
        self._closing = False
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlmbed-model")
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="vlmbed-batcher")

    async def close(self) -> None:
        """Refuse new requests, finish every queued and running one, then stop the model thread."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._task = self._executor = None

    # ------------------------------------------------------------------ submitting
    async def submit(self, items: Sequence, role: str):
        """Queue ``items`` for ``role`` and wait for their results (raises QueueFull / ShuttingDown)."""
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        if not self.running:
            self.start()
        items = list(items)
        if self._queued_items + len(items) > self.max_queue:
            self.stats.rejected += 1
            raise QueueFull(f"the request queue is full ({self._queued_items} items waiting, limit {self.max_queue})")
        request = _Request(items, role, asyncio.get_running_loop().create_future())
        self._pending.append(request)
        self._queued_items += len(items)
        self._wakeup.set()
        return await request.future

    # ------------------------------------------------------------------ collecting
    async def _collect(self) -> None:
        try:
            await self._collect_forever()
        except BaseException as exc:  # cancelled or crashed: nobody may wait forever
            self._closing = True
            self._fail_pending(exc)
            raise

    def _fail_pending(self, exc: BaseException) -> None:
        while self._pending:
            request = self._take()
            if not request.future.done():
                request.future.set_exception(ShuttingDown(f"the batcher stopped ({type(exc).__name__})"))

    async def _collect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if batch is None:
                return
            results = await loop.run_in_executor(self._executor, self._run_batch, batch)
            for request, result in zip(batch, results, strict=True):
                if request.future.done():  # the client went away
                    continue
                if isinstance(result, BaseException):
                    request.future.set_exception(result)
                else:
                    request.future.set_result(result)

    async def _next_batch(self) -> list[_Request] | None:
        """Wait for work; return the next batch, or None once closed and drained."""
        while not self._live_head():
            if self._closing:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        first = self._take()
        batch, size = [first], len(first.items)
        deadline = first.arrived + self.max_wait
        while size < self.max_batch_size:
            request = self._take_fitting(first.role, self.max_batch_size - size)
            if request is not None:
                batch.append(request)
                size += len(request.items)
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or self._closing or self._has_blocking_head(first.role):
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return batch

    def _live_head(self) -> bool:
        while self._pending and self._pending[0].future.done():  # cancelled while waiting
            self._queued_items -= len(self._pending.popleft().items)
        return bool(self._pending)

    def _take(self) -> _Request:
        request = self._pending.popleft()
        self._queued_items -= len(request.items)
        return request

    def _take_fitting(self, role: str, room: int) -> _Request | None:
        """Remove and return the oldest live queued request of ``role`` with at most ``room`` items."""
        for request in self._pending:
            if request.future.done() or request.role != role or len(request.items) > room:
                continue
            self._pending.remove(request)
            self._queued_items -= len(request.items)
            return request
        return None

    def _has_blocking_head(self, role: str) -> bool:
        """True when a request of another role (or one too big) is waiting: run now, do not keep it waiting."""
        return self._live_head() and (time.perf_counter() - self._pending[0].arrived) >= self.max_wait

    # ------------------------------------------------------------------ model thread
    def _run_batch(self, batch: list[_Request]) -> list:
        """Encode a batch on the model thread; on failure retry each request alone so errors stay local."""
        items = [item for request in batch for item in request.items]
        try:
            result = self.encode_fn(items, batch[0].role)
        except Exception as exc:  # noqa: BLE001 - isolated below, re-raised per request
            if len(batch) == 1:
                return [exc]
            return [self._run_one(request) for request in batch]
        self._count(batch, len(items))
        out, start = [], 0
        for request in batch:
            stop = start + len(request.items)
            out.append(_slice(result, start, stop))
            start = stop
        return out

    def _run_one(self, request: _Request):
        try:
            result = self.encode_fn(request.items, request.role)
        except Exception as exc:  # noqa: BLE001 - delivered to the request's own future
            return exc
        self._count([request], len(request.items))
        return result

    def _count(self, batch: list[_Request], n_items: int) -> None:
        self.stats.batches += 1
        self.stats.requests += len(batch)
        self.stats.items += n_items
        self.stats.max_batch_items = max(self.stats.max_batch_items, n_items)


def _slice(result, start: int, stop: int):
    if isinstance(result, tuple):
        return tuple(part[start:stop] for part in result)
    return result[start:stop]
