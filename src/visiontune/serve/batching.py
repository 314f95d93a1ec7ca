"""Dynamic batching: requests that arrive within a few milliseconds share one forward pass.

On a CPU a batch of 16 images costs far less than 16 batches of one (the weights are read
once, the kernels run wide), so under load the service gathers what is waiting into one batch:

- the first request waits at most `max_wait_ms` for company, counted from its arrival, so a
  lone request is answered almost at once;
- a batch never exceeds `max_batch`; while one runs, the next gathers, so a busy server's
  batches fill up without waiting at all;
- the model runs in one dedicated thread, so the event loop keeps accepting and decoding
  requests, and the model (not thread-safe everywhere) is never entered twice at once.

`max_batch=1` turns batching off (one pass per request): bench/serve_load.py compares the two.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from visiontune.config import check_range

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class BatchStats:
    """What the batcher has done: items answered, forward passes, the largest batch."""

    items: int = 0
    passes: int = 0
    largest: int = 0

    def to_dict(self) -> dict[str, Any]:
        mean = self.items / self.passes if self.passes else 0.0
        return {
            "items": self.items,
            "forward_passes": self.passes,
            "mean_batch": round(mean, 2),
            "largest": self.largest,
        }


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    arrived: float


class DynamicBatcher(Generic[T, R]):
    """Collects submitted items into batches for `run(items) -> results` (same length, same order).

    Example:
        >>> batcher = DynamicBatcher(lambda xs: [x * 2 for x in xs], max_batch=8, max_wait_ms=5)  # doctest: +SKIP
        >>> await batcher.start(); await batcher.submit(21)  # doctest: +SKIP
        42
    """

    def __init__(self, run: Callable[[list[T]], Sequence[R]], *, max_batch: int = 32, max_wait_ms: float = 5.0) -> None:
        check_range("max_batch", max_batch, 1, 4096)
        check_range("max_wait_ms", max_wait_ms, 0.0, 10_000.0)
        self.run = run
        self.max_batch = int(max_batch)
        self.max_wait = max_wait_ms / 1000.0
        self.stats = BatchStats()
        self._pending: deque[_Pending[T, R]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Start gathering batches on the running event loop."""
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="visiontune-model")
        self._task = asyncio.create_task(self._loop(), name="visiontune-batcher")

    async def stop(self) -> None:
        """Stop, failing whatever still waits (the server is shutting down)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for pending in self._pending:
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("the server is shutting down"))
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, item: T) -> R:
        """The result for `item`, computed in a batch with whatever else arrives within the wait."""
        if self._wakeup is None:
            raise RuntimeError("DynamicBatcher.start() was not called")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(item, future, time.monotonic()))
        self._wakeup.set()
        return await future

    async def submit_many(self, items: Sequence[T]) -> list[R]:
        """Results for several items, queued together so they share passes."""
        return list(await asyncio.gather(*(self.submit(item) for item in items)))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            try:
                results = await loop.run_in_executor(self._executor, self.run, [p.item for p in batch])
            except Exception as exc:  # one failing pass fails its own requests, not the server
                log.exception("forward pass of %d items failed", len(batch))
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            self.stats.items += len(batch)
            self.stats.passes += 1
            self.stats.largest = max(self.stats.largest, len(batch))
            for pending, result in zip(batch, results, strict=True):
                if not pending.future.done():  # the client may have gone
                    pending.future.set_result(result)

    async def _gather(self) -> list[_Pending[T, R]]:
        """Wait for a first item, then for company until it has waited `max_wait` or the batch is full."""
        assert self._wakeup is not None
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = self._pending[0].arrived + self.max_wait
            while len(self._pending) < self.max_batch and (remaining := deadline - time.monotonic()) > 0:
                self._wakeup.clear()
                try:  # the items live in the deque, so a timed-out wait loses nothing
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            count = min(self.max_batch, len(self._pending))
            batch = [self._pending.popleft() for _ in range(count)]
            live = [p for p in batch if not p.future.cancelled()]  # cancelled: the client went away
            if live:
                return live
