"""Admission: how many requests an entry process segments at once, and how many may wait.

A request that would wait beyond the queue is refused at once with 503 and ``Retry-After`` (the
seconds the queue ahead of it should take, from recent request times), so an overloaded service
sheds load instead of holding every upload and decoded layer in memory.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pbf_core.serving.uploads import UploadError

#: Weight of the newest request time in the running mean behind ``Retry-After``.
SMOOTHING = 0.2


class Admission:
    """At most ``active`` requests at once and ``queued`` more waiting (one event loop)."""

    def __init__(self, active: int, queued: int) -> None:
        if active < 1 or queued < 0:
            raise ValueError(f"need active >= 1 and queued >= 0, got {active} and {queued}")
        self.active, self.queued = active, queued
        self._slots = asyncio.Semaphore(active)
        self._waiting = 0
        self._mean_s = 1.0  # until a request has been timed

    def retry_after(self) -> int:
        """Whole seconds until the requests now waiting should be done (at least 1)."""
        return max(1, math.ceil(self._mean_s * (self._waiting + 1) / self.active))

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the body of the ``async with``.

        Raises:
            UploadError: 503 (kind ``busy``, with ``Retry-After``) when the queue is full.
        """
        if self._slots.locked() and self._waiting >= self.queued:
            reason = (
                f"busy: {self.active} layers in work and {self._waiting} waiting; "
                "retry after the time in Retry-After"
            )
            headers = {"Retry-After": str(self.retry_after())}
            raise UploadError(503, None, reason, "busy", headers=headers)
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        start = time.perf_counter()
        try:
            yield
        finally:
            self._slots.release()
            took = time.perf_counter() - start
            self._mean_s += SMOOTHING * (took - self._mean_s)
