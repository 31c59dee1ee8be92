"""Admission: a bounded number of requests in flight and a bounded wait, else Overloaded (503)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tenantserve.errors import Overloaded
from tenantserve.metrics import Metrics


class Admission:
    """Caps requests in flight; the rest wait up to ``queue_timeout_s`` in a bounded queue.

    Shedding early with Retry-After keeps latency of admitted requests bounded instead of
    letting every request slow down together (a brown-out).
    """

    def __init__(
        self, *, max_in_flight: int, max_queued: int, queue_timeout_s: float, metrics: Metrics
    ) -> None:
        self._max_in_flight = max_in_flight
        self._max_queued = max_queued
        self._queue_timeout_s = queue_timeout_s
        self._metrics = metrics
        self._slots: asyncio.Semaphore | None = None
        self._queued = 0

    @property
    def queued(self) -> int:
        return self._queued

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        if self._slots is None:  # created on the serving loop, not at construction
            self._slots = asyncio.Semaphore(self._max_in_flight)
        slots = self._slots
        if slots.locked():
            if self._queued >= self._max_queued:
                self._metrics.rejected.labels("queue_full").inc()
                raise Overloaded("server is at capacity; retry shortly", retry_after_s=1.0)
            self._queued += 1
            try:
                await asyncio.wait_for(slots.acquire(), self._queue_timeout_s)
            except TimeoutError:
                self._metrics.rejected.labels("timeout").inc()
                raise Overloaded(
                    "request waited too long for capacity; retry shortly", retry_after_s=1.0
                ) from None
            finally:
                self._queued -= 1
        else:
            await slots.acquire()
        self._metrics.in_flight.inc()
        try:
            yield
        finally:
            self._metrics.in_flight.dec()
            slots.release()
