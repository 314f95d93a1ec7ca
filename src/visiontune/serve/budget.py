"""The pixel budget: how many pixels all requests together may be decoding at one time.

`max_pixels` bounds one image, but sixteen 36-megapixel PNGs at once each pass it and together
hold gigabytes while the CPUs thrash. So each image takes its pixel count (read from the header,
before decoding) out of one shared budget and gives it back once it is model-sized; an image
that does not fit waits for others to finish, for at most `wait_s`, then its request gets a 503
with Retry-After. Small images (the common case) fit beside anything, so a burst of large ones
slows only itself. Waiting happens on the event loop, so it holds no worker thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

from visiontune.errors import VisiontuneError

RETRY_AFTER_S = 1
TRIM_PIXELS = 4_000_000  # an image this large leaves tens of MB in malloc's free lists once decoded


def _libc_malloc_trim() -> Callable[[], object]:
    """glibc's malloc_trim(0), or a no-op where there is no glibc (macOS, musl, Windows)."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


return_freed_memory = _libc_malloc_trim()
"""Hand memory that is free but kept in malloc's arenas back to the OS (worker thread: it walks them all).

glibc keeps what a large decode freed for reuse (its mmap threshold rises after the first large
free, so later image buffers come from the arenas), and a server that decoded a few 36-megapixel
images would stay hundreds of MB larger for good; bench/serve_load.py --mixed measures it.
"""


class ServerBusyError(VisiontuneError):
    """The pixel budget stayed full for the whole wait: the client should retry (503)."""


class PixelBudget:
    """A counting semaphore in pixels, for coroutines of one event loop (no locks: no await between check and take).

    Example:
        >>> budget = PixelBudget(100_000_000, wait_s=10.0)  # doctest: +SKIP
        >>> async with budget.hold(width * height):  # doctest: +SKIP
        ...     pixels = await run_in_threadpool(decode, data)
    """

    def __init__(self, total: int, *, wait_s: float) -> None:
        self.total = total
        self.wait_s = wait_s
        self.in_use = 0
        self._freed: asyncio.Future[None] | None = None  # done when pixels are given back; then replaced

    async def acquire(self, pixels: int) -> None:
        """Take `pixels`, waiting up to `wait_s` for them; ServerBusyError if they never fit."""
        assert 0 < pixels <= self.total, "max_pixels <= pixel_budget is checked by ServeConfig"
        deadline = time.monotonic() + self.wait_s
        while self.in_use + pixels > self.total:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerBusyError(
                    f"busy: other images fill the pixel budget ({self.in_use:,} of {self.total:,} pixels being"
                    f" decoded) and this one needs {pixels:,}; retry in {RETRY_AFTER_S} s"
                )
            if self._freed is None:
                self._freed = asyncio.get_running_loop().create_future()
            with suppress(TimeoutError):  # then the loop checks once more and gives up
                # shielded: one waiter timing out must not cancel the others' wake-up
                await asyncio.wait_for(asyncio.shield(self._freed), remaining)
        self.in_use += pixels

    def release(self, pixels: int) -> None:
        """Give `pixels` back and wake every waiter (each checks whether it now fits)."""
        self.in_use -= pixels
        if self._freed is not None and not self._freed.done():
            self._freed.set_result(None)
        self._freed = None

    @asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        """`pixels` taken for the body of the `async with`, and given back however it ends."""
        await self.acquire(pixels)
        try:
            yield
        finally:
            self.release(pixels)
