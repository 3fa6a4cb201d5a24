"""Dynamic batcher: a bounded queue of requests, batched by rows, run in a worker thread, supervised.

Requests carry [n, ...] float32 arrays. The batcher takes the oldest request, then keeps adding
queued requests while the batch has room (``max_batch`` rows) and the oldest has waited less than
``max_queue_delay`` (0: take what is already queued, wait for nothing). The batch runs on the
runtime in one dedicated daemon thread (one runtime context per thread; a hung call never keeps
the process from exiting); results are split back per request.

A request may also carry raw rows (``submit(waves, raw=True)``: audio clips from ``/v1/classify``)
that the batcher's ``featurize`` (the model's log-mel front end) turns into model input: the raw
rows of a whole batch go through it in one vectorized call, in the runtime thread (off the event
loop), beside the rows that came as features. A raw row whose features are not finite fails its
own request (``RejectedRow``, a 400 upstream); the others are answered.

Every way the batcher cannot answer raises a subclass of :class:`Unavailable` (503 with
Retry-After upstream; ``reason`` labels the metric): a full queue (``QueueFull``), a request still
queued past its deadline (``QueueTimeout``), a batch still running after ``batch_timeout_s``
(``RuntimeHung``: the batch and everything queued fail at once, new requests fail fast, and
``failure`` says why until the runtime returns), a batcher task that died (``BatcherDown``:
permanent; the traceback goes to the log), and a shutdown that cut a request off
(``ShuttingDown``). ``failure`` is what readiness reports. A request whose client went away before
dispatch is dropped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("fdkd.serve")


class Unavailable(RuntimeError):
    """The batcher cannot take or answer this request now: 503 with Retry-After."""

    reason = "unavailable"


class RejectedRow(ValueError):
    """A raw row's features came out non-finite: that request is refused (400), the batch goes on."""


class QueueFull(Unavailable):
    reason = "queue_full"


class QueueTimeout(Unavailable):
    reason = "queue_timeout"


# The next three subclass QueueTimeout so that a handler written against (QueueFull, QueueTimeout)
# still answers 503 for them; handlers should catch Unavailable and use its ``reason``.
class RuntimeHung(QueueTimeout):
    reason = "runtime_hung"


class BatcherDown(QueueTimeout):
    reason = "batcher_down"


class ShuttingDown(QueueTimeout):
    reason = "shutting_down"


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    raw: bool = False  # x holds raw rows (waves) that the batcher's ``featurize`` turns into model input


class _RuntimeThread:
    """One daemon thread that runs every batch, so that a runtime call that never returns cannot
    block the interpreter's exit (a ThreadPoolExecutor's worker would be joined at exit)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="fdkd-runtime", daemon=True)
        self._thread.start()

    def submit(self, fn, *args) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((fut, fn, args))
        return fut

    def stop(self) -> None:
        self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fut, fn, args = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except (KeyboardInterrupt, SystemExit) as e:  # would stop the event loop if re-raised there
                fut.set_exception(RuntimeError(f"runtime raised {type(e).__name__}"))
            except BaseException as e:  # noqa: BLE001 - handed to the batcher, which decides
                fut.set_exception(e)


class DynamicBatcher:
    def __init__(self, runtime, *, max_batch: int, max_queue: int, max_queue_delay_s: float, queue_timeout_s: float,
                 metrics=None, delay_s: float = 0.0, batch_timeout_s: float = 10.0, on_batch=None,
                 featurize=None) -> None:
        self.runtime = runtime
        self.featurize = featurize  # [n, samples] raw rows -> [n, ...] model input, one call per batch
        self.max_batch, self.max_queue = max_batch, max_queue
        self.max_queue_delay_s, self.queue_timeout_s = max_queue_delay_s, queue_timeout_s
        self.batch_timeout_s = batch_timeout_s
        self.metrics = metrics
        self.delay_s = delay_s
        self.on_batch = on_batch  # called once per executed batch: (requests, rows, compute s, longest queued s)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max_queue)
        self._worker: _RuntimeThread | None = None
        self._task: asyncio.Task | None = None
        self._batch: list[_Item] = []  # the batch now on the runtime
        self._stopping = False
        self._hung: str | None = None
        self._down: str | None = None
        self.in_flight = 0  # requests accepted and not yet answered

    @property
    def failure(self) -> str | None:
        """Why the batcher cannot serve now (readiness reports it), or None when it can."""
        return self._down or self._hung

    def start(self) -> None:
        self._worker = _RuntimeThread()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="fdkd-batcher")
        self._task.add_done_callback(self._on_task_done)

    async def stop(self) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.abort("server is shutting down", ShuttingDown)
        if self._worker:
            self._worker.stop()  # never joined: a hung runtime call must not hold the exit

    def mark_stopping(self) -> None:
        """The process is exiting without :meth:`stop` (a forced exit): the task's cancellation is no failure."""
        self._stopping = True

    def abort(self, message: str, kind: type[Unavailable] = ShuttingDown) -> int:
        """Fail every queued and running request with ``kind`` (answered 503, not dropped); returns how many."""
        items = list(self._batch)
        while True:
            try:
                items.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        failed = 0
        for i in items:
            if not i.future.done():
                i.future.set_exception(kind(message))
                failed += 1
        return failed

    async def submit(self, x: np.ndarray, raw: bool = False) -> tuple[np.ndarray, float]:
        """Queue ``x`` (model input, or raw rows for ``featurize`` if ``raw``) and wait for its logits;
        returns (logits, seconds spent queued)."""
        if raw and self.featurize is None:
            raise ValueError("raw rows submitted to a batcher without a featurize function")
        if self.failure:
            raise (BatcherDown if self._down else RuntimeHung)(self.failure)
        item = _Item(x, asyncio.get_running_loop().create_future(), raw=raw)
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

    def _on_task_done(self, task: asyncio.Task) -> None:
        if self._stopping:
            return
        exc = None if task.cancelled() else task.exception()
        what = "was cancelled" if exc is None else f"died: {type(exc).__name__}"
        self._down = f"the batcher task {what}"
        log.error('{"event": "batcher_down", "reason": "%s"}', self._down,
                  exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None)
        self.abort(self._down, BatcherDown)

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
            if batch:
                self._batch = batch  # kept on a BaseException: the task's done-callback fails them
                try:
                    await self._run_batch(batch)
                except Exception as e:  # this batch's own fault (bad shapes, a runtime error): its requests get it
                    for i in batch:
                        if not i.future.done():
                            i.future.set_exception(e)
                self._batch = []

    async def _run_batch(self, batch: list[_Item]) -> None:
        rows = sum(len(i.x) for i in batch)
        started = time.perf_counter()
        rejected: set[int] = set()
        if any(i.raw for i in batch):
            running = asyncio.wrap_future(self._worker.submit(self._run_raw, [(i.x, i.raw) for i in batch]))
        else:
            x = np.concatenate([i.x for i in batch]) if len(batch) > 1 else batch[0].x
            running = asyncio.wrap_future(self._worker.submit(self._run, x))
        try:
            out = await asyncio.wait_for(asyncio.shield(running), self.batch_timeout_s)
        except asyncio.TimeoutError:
            await self._wait_out_hang(running, rows)
            return
        logits, rejected = out if isinstance(out, tuple) else (out, rejected)
        if len(logits) != rows:
            raise RuntimeError(f"runtime returned {len(logits)} rows for a batch of {rows}")
        if self.metrics:
            self.metrics.compute.observe(time.perf_counter() - started)
            self.metrics.batch_size.observe(rows)
            self.metrics.executions.inc()
            self.metrics.rows.inc(rows)
        offset = 0
        for k, i in enumerate(batch):
            n = len(i.x)
            if not i.future.done():
                if k in rejected:
                    i.future.set_exception(RejectedRow("preprocessing produced non-finite features (is the "
                                                       "file's signal in range?)"))
                else:
                    i.future.set_result((logits[offset : offset + n], started - i.enqueued))
            offset += n
        if self.on_batch:
            self.on_batch(len(batch), len(x), time.perf_counter() - started, started - batch[0].enqueued)

    async def _wait_out_hang(self, running: asyncio.Future, rows: int) -> None:
        """The runtime is past its deadline: fail the batch and the queue now, refuse new requests
        (fast 503s, readiness 503) until the call returns; then serve again."""
        self._hung = f"runtime hung: a batch of {rows} rows still running after {self.batch_timeout_s:g} s"
        log.error('{"event": "runtime_hung", "rows": %d, "deadline_s": %g}', rows, self.batch_timeout_s)
        self.abort(self._hung, RuntimeHung)
        with contextlib.suppress(Exception):
            await running
        self._hung = None
        log.warning('{"event": "runtime_recovered"}')

    def _run_raw(self, parts: list[tuple[np.ndarray, bool]]) -> tuple[np.ndarray, set[int]]:
        """A batch with raw rows (runtime thread): every raw row featurized in one call, then one run;
        returns the logits and the indices (into ``parts``) of requests whose features are not finite."""
        raw = [x for x, is_raw in parts if is_raw]
        feats = self.featurize(np.concatenate(raw) if len(raw) > 1 else raw[0])
        chunks, rejected, at = [], set(), 0
        for k, (x, is_raw) in enumerate(parts):
            if is_raw:
                x, at = feats[at : at + len(x)], at + len(x)
                if not np.isfinite(x).all():
                    rejected.add(k)
                    x = np.zeros_like(x)  # its rows run (shapes stay), its answer is the refusal
            chunks.append(x)
        x = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
        return self._run(np.ascontiguousarray(x, dtype=np.float32)), rejected

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.runtime(x)
