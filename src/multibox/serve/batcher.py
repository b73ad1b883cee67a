"""Micro-batching for ``multibox serve``: requests that arrive close together share one forward pass.

A :class:`MicroBatcher` holds a bounded queue of waiting images. One worker task takes the oldest image, then
waits at most ``max_wait_s`` for more until it has ``max_batch``; the batch runs in the batcher's own thread (the
event loop keeps accepting requests meanwhile), and each request's future gets its own result. A full queue is
refused at once (:class:`QueueFull`, HTTP 503), so latency under overload stays bounded by the queue length
instead of growing.

The batch function must give each image the result it would give alone (``multibox serve`` runs
``Detector.detect_arrays`` at one fixed score threshold and filters per request afterwards, see docs/serve.md).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MicroBatcher", "QueueFull"]


class QueueFull(RuntimeError):
    """The batcher's queue holds ``max_queue`` images already; the request is refused, not queued."""


@dataclass
class _Job:
    item: Any
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Gathers submitted items into batches for ``run_batch``.

    Args:
        run_batch: ``items -> results`` (same length and order), run in a dedicated thread, one batch at a time.
        max_batch: most items per call of ``run_batch`` (1: no batching).
        max_wait_s: how long the first item of a batch waits for more (0: take what is queued, never wait).
        max_queue: most items waiting (not counting the batch being run); beyond it :meth:`submit` raises
            :class:`QueueFull`.
        on_batch: called in the event loop after each batch with ``(batch size, seconds)`` (metrics).
        name: the worker thread's name.
    """

    def __init__(self, run_batch: Callable[[list[Any]], Sequence[Any]], max_batch: int = 8, max_wait_s: float = 0.005,
                 max_queue: int = 64, on_batch: Callable[[int, float], None] | None = None,
                 name: str = "batcher") -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch and max_queue must be >= 1 and max_wait_s >= 0, got {max_batch}, "
                             f"{max_queue}, {max_wait_s}")
        self.run_batch, self.max_batch, self.max_wait_s, self.max_queue = run_batch, max_batch, max_wait_s, max_queue
        self.on_batch = on_batch
        self._pending: deque[_Job] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"multibox-{name}")
        self.batches = 0  # batches run so far
        self.in_flight = 0  # items in the batch being run

    @property
    def depth(self) -> int:
        """Items waiting for a batch."""
        return len(self._pending)

    def start(self) -> None:
        """Start the worker task on the running event loop."""
        if self._task is None:
            self._arrived = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        """Stop the worker; waiting requests fail with ``RuntimeError`` (the service is shutting down)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the service is shutting down"))
        self._executor.shutdown(wait=False)

    async def submit(self, item: Any) -> Any:  # noqa: ANN401
        """Queue ``item`` and wait for its result; :class:`QueueFull` at once when ``max_queue`` items wait."""
        if self._task is None or self._arrived is None:
            raise RuntimeError("the batcher is not running")
        if len(self._pending) >= self.max_queue:
            raise QueueFull(f"{len(self._pending)} requests are waiting already (max queue {self.max_queue})")
        job = _Job(item, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._arrived.set()
        return await job.future

    async def _next_batch(self) -> list[_Job]:
        assert self._arrived is not None
        while not self._pending:
            self._arrived.clear()
            await self._arrived.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(self._pending) < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:  # waiting on an Event is safe to cancel: no item is ever taken by the timed-out wait
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        batch = []
        while self._pending and len(batch) < self.max_batch:
            job = self._pending.popleft()
            if not job.future.done():  # a client that went away (cancelled) is not computed
                batch.append(job)
        return batch

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            t0 = time.perf_counter()
            self.in_flight = len(batch)
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch, [j.item for j in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"the batch function gave {len(results)} results for {len(batch)} items")
            except Exception as e:  # one failed batch fails its requests, never the worker
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            finally:
                self.in_flight = 0
                self.batches += 1
                if self.on_batch is not None:
                    self.on_batch(len(batch), time.perf_counter() - t0)
            for job, result in zip(batch, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)
