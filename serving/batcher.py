"""Dynamic batcher: a bounded queue of requests, batched by rows, run in a worker thread.

Requests carry [n, ...] float32 arrays. The batcher takes the oldest request, then keeps adding
queued requests while the batch has room (``max_batch`` rows) and the oldest has waited less than
``max_queue_delay`` (0: take what is already queued, wait for nothing). The batch runs on the
runtime in a dedicated thread (one runtime context per thread); results are split back per
request. A full queue (``QueueFull``) and a request still queued past its deadline
(``QueueTimeout``) become 503 with Retry-After upstream; a request whose client went away before
dispatch is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


class QueueFull(RuntimeError):
    pass


class QueueTimeout(RuntimeError):
    pass


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    def __init__(self, runtime, *, max_batch: int, max_queue: int, max_queue_delay_s: float, queue_timeout_s: float,
                 metrics=None, delay_s: float = 0.0, on_batch=None) -> None:
        self.runtime = runtime
        self.max_batch, self.max_queue = max_batch, max_queue
        self.max_queue_delay_s, self.queue_timeout_s = max_queue_delay_s, queue_timeout_s
        self.metrics = metrics
        self.delay_s = delay_s
        self.on_batch = on_batch  # called once per executed batch: (requests, rows, compute s, longest queued s)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max_queue)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fdkd-runtime")
        self._task: asyncio.Task | None = None
        self.in_flight = 0  # requests accepted and not yet answered

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pool.shutdown(wait=True)

    async def submit(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """Queue ``x`` and wait for its logits; returns (logits, seconds spent queued)."""
        item = _Item(x, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            raise QueueFull(f"queue full ({self.max_queue} requests waiting)") from None
        self.in_flight += 1
        self._gauge()
        try:
            return await item.future
        finally:
            self.in_flight -= 1
            self._gauge()

    def _gauge(self) -> None:
        if self.metrics:
            self.metrics.pending.set(self.in_flight)

    def _take(self, item: _Item, batch: list[_Item], rows: int) -> int:
        now = time.perf_counter()
        if item.future.done():  # cancelled: the client went away before dispatch
            return rows
        if now - item.enqueued > self.queue_timeout_s:
            item.future.set_exception(QueueTimeout(f"request waited {now - item.enqueued:.2f} s in the queue"))
            return rows
        batch.append(item)
        return rows + len(item.x)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        carry: _Item | None = None
        while True:
            first = carry or await self._queue.get()
            carry = None
            batch: list[_Item] = []
            rows = self._take(first, batch, 0)
            deadline = first.enqueued + self.max_queue_delay_s
            while rows < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(self._queue.get(), remaining)
                    except asyncio.TimeoutError:
                        break
                if rows + len(nxt.x) > self.max_batch and batch:
                    carry = nxt  # does not fit: it opens the next batch
                    break
                rows = self._take(nxt, batch, rows)
            if not batch:
                continue
            x = np.concatenate([i.x for i in batch]) if len(batch) > 1 else batch[0].x
            started = time.perf_counter()
            try:
                logits = await loop.run_in_executor(self._pool, self._run, x)
            except Exception as e:  # the runtime failed: every request of the batch gets the error
                for i in batch:
                    if not i.future.done():
                        i.future.set_exception(e)
                continue
            if self.metrics:
                self.metrics.compute.observe(time.perf_counter() - started)
                self.metrics.batch_size.observe(len(x))
                self.metrics.executions.inc()
                self.metrics.rows.inc(len(x))
            offset = 0
            for i in batch:
                n = len(i.x)
                if not i.future.done():
                    i.future.set_result((logits[offset : offset + n], started - i.enqueued))
                offset += n
            if self.on_batch:
                self.on_batch(len(batch), len(x), time.perf_counter() - started, started - batch[0].enqueued)

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.runtime(x)
