"""Micro-batching: requests that arrive close together are compressed in one ``compress_batch`` call.

Every request is queued with a key (method, rate, target tokens). One worker task takes the first waiting request,
gathers whatever else arrives within ``max_wait`` seconds (at most ``max_batch`` requests), and runs each key's
group in one call on a single worker thread, so the model is never used by two threads at once and the event loop
stays free to accept requests while a batch runs. Requests that queue up during a batch form the next one.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..errors import MMCompressError

RunBatch = Callable[[Hashable, Sequence[Any]], Sequence[Any]]


@dataclass
class _Entry:
    key: Hashable
    item: Any
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class BatchInfo:
    """What a request's batch looked like: returned with its result."""

    size: int
    queue_seconds: float
    batch_seconds: float


class MicroBatcher:
    """``await batcher.submit(key, item)`` -> ``(result, BatchInfo)``; ``run(key, items)`` does the work."""

    def __init__(self, run: RunBatch, *, max_batch: int = 16, max_wait: float = 0.005):
        if max_batch < 1 or max_wait < 0:
            raise ValueError("max_batch must be >= 1 and max_wait >= 0")
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait
        self.batch_sizes: list[int] = []  # one entry per model call, for monitoring and tests
        self._queue: asyncio.Queue[_Entry] | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmcompress-batch")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the batch thread (e.g. warming up the model) without racing a batch."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def submit(self, key: Hashable, item: Any) -> tuple[Any, BatchInfo]:
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        entry = _Entry(key, item, asyncio.get_running_loop().create_future())
        await self._queue.put(entry)
        return await entry.future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:
                    break
            groups: dict[Hashable, list[_Entry]] = {}
            for entry in batch:
                groups.setdefault(entry.key, []).append(entry)
            for key, entries in groups.items():
                started = time.perf_counter()
                outcomes = await loop.run_in_executor(self._executor, self._run_group, key,
                                                      [e.item for e in entries])
                seconds = time.perf_counter() - started
                self.batch_sizes.append(len(entries))
                for entry, outcome in zip(entries, outcomes):
                    if entry.future.done():  # the client went away
                        continue
                    if isinstance(outcome, BaseException):
                        entry.future.set_exception(outcome)
                    else:
                        entry.future.set_result((outcome, BatchInfo(len(entries), started - entry.queued_at,
                                                                    seconds)))

    def _run_group(self, key: Hashable, items: list[Any]) -> list[Any]:
        """Results, or per-item exceptions: a bad item (e.g. a budget below its kept text) must not fail the
        others, so a failing batch is retried one item at a time."""
        try:
            return list(self.run(key, items))
        except MMCompressError as e:
            if len(items) == 1:
                return [e]
        except Exception as e:  # a bug: every request of the group gets it
            return [e] * len(items)
        outcomes: list[Any] = []
        for item in items:
            try:
                outcomes.append(self.run(key, [item])[0])
            except Exception as e:
                outcomes.append(e)
        return outcomes
