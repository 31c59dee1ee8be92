"""Admission: a bounded number of requests in flight and a bounded wait, else Overloaded (503)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from tenantserve.errors import Overloaded
from tenantserve.metrics import Metrics
from tenantserve.scheduling.codel import CoDel
from tenantserve.scheduling.fair_queue import FairQueue


@dataclass(frozen=True, slots=True)
class Ticket:
    """An admitted request and the queue time it has left (``queue_timeout_s`` in all)."""

    waited_s: float  # time spent waiting for admission
    queue_timeout_s: float

    def deadline(self) -> float:
        """Monotonic time past which the request, queued from now on, must not start.

        Called when the request joins its next queue, so time spent waiting for its model
        to load is not counted as queue time (the load has its own limit).
        """
        return time.monotonic() + max(0.0, self.queue_timeout_s - self.waited_s)


class Admission:
    """Caps requests in flight; the rest wait up to ``queue_timeout_s`` in a bounded queue.

    Shedding early with Retry-After keeps latency of admitted requests bounded instead of
    letting every request slow down together (a brown-out). Waiters are per tenant and a freed
    slot goes to the next tenant in deficit-round-robin order, so a flooding tenant's queue does
    not stand in front of everyone else's. When the queue is full, the newest waiter of the
    longest queue is shed, not the newcomer of a tenant with less queued (longest queue drop).
    """

    def __init__(
        self,
        *,
        max_in_flight: int,
        max_queued: int,
        queue_timeout_s: float,
        metrics: Metrics,
        codel: CoDel | None = None,
    ) -> None:
        self._max_in_flight = max_in_flight
        self._max_queued = max_queued
        self._queue_timeout_s = queue_timeout_s
        self._metrics = metrics
        self._codel = codel  # while the queue stands, a waiter past its limit is refused
        self._in_flight = 0
        self._by_tenant: dict[str, int] = {}
        self._waiting: FairQueue[_Waiter] = FairQueue()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def slots_by_tenant(self) -> dict[str, int]:
        """Slots held, by tenant (a request waiting for its model to load holds none)."""
        return dict(self._by_tenant)

    async def acquire(self, tenant: str) -> Ticket:
        """Take one of the slots for ``tenant``'s request, waiting in its fair turn if all are
        taken; every acquire that returns is followed by one :meth:`release`.

        Raises:
            Overloaded: the queue is full, or the wait passed ``queue_timeout_s``.
        """
        if self._in_flight < self._max_in_flight and not self._waiting:
            self._in_flight += 1
            waited_s = 0.0
        else:
            arrived = time.monotonic()
            await self._wait(tenant)  # on success the releasing request handed its slot over
            waited_s = time.monotonic() - arrived
        self._by_tenant[tenant] = self._by_tenant.get(tenant, 0) + 1
        return Ticket(waited_s, self._queue_timeout_s)

    def release(self, tenant: str) -> None:
        left = self._by_tenant[tenant] - 1
        if left:
            self._by_tenant[tenant] = left
        else:
            del self._by_tenant[tenant]
        self._release()

    @asynccontextmanager
    async def admit(self, tenant: str) -> AsyncIterator[Ticket]:
        """:meth:`acquire` for the block's length (raises as it does)."""
        ticket = await self.acquire(tenant)
        try:
            yield ticket
        finally:
            self.release(tenant)

    def would_refuse(self, tenant: str) -> bool:
        """Whether a request of ``tenant`` arriving now would be refused at once (every slot
        taken, the queue full, no longer queue to shed for it); counted as refused when so.
        Lets the HTTP layer refuse it before it becomes a request at all."""
        if self._in_flight < self._max_in_flight or len(self._waiting) < self._max_queued:
            return False
        if self._shed_instead_of(tenant) is not None:
            return False
        self._metrics.reject("queue_full", tenant)
        return True

    async def _wait(self, tenant: str) -> None:
        if len(self._waiting) >= self._max_queued:
            self._shed_for(tenant)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), time.monotonic())
        self._waiting.push(tenant, waiter)
        timer = loop.call_later(self._queue_timeout_s, self._expire, tenant, waiter)
        try:
            await waiter.future
        except asyncio.CancelledError:
            # The caller went away (client disconnect). If a slot was handed over just before,
            # pass it on; otherwise leave the queue.
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                self._release()
            else:
                self._waiting.remove(tenant, waiter)
            raise
        finally:
            timer.cancel()

    def _shed_instead_of(self, tenant: str) -> str | None:
        """The tenant whose newest waiter a full queue sheds to make room for ``tenant``: one
        with a longer queue than ``tenant`` would have; ``None`` refuses ``tenant`` itself."""
        longest = self._waiting.longest()
        if longest is not None and longest[1] > self._waiting.len_of(tenant) + 1:
            return longest[0]
        return None

    def _shed_for(self, tenant: str) -> None:
        victim = self._shed_instead_of(tenant)
        if victim is not None:
            shed = self._waiting.pop_newest(victim).future
            if shed.done():
                # Cancelled a moment ago (its client left) and not yet unwound: taking it out
                # made the room, and no one is refused.
                return
            self._metrics.reject("queue_full", victim)
            shed.set_exception(_full())
            return
        self._metrics.reject("queue_full", tenant)
        raise _full()

    def _expire(self, tenant: str, waiter: _Waiter) -> None:
        if waiter.future.done() or not self._waiting.remove(tenant, waiter):
            return
        self._metrics.reject("timeout", tenant)
        waiter.future.set_exception(_too_long())

    def _release(self) -> None:
        now = time.monotonic()
        while self._waiting:
            tenant, waiter = self._waiting.pop()
            if waiter.future.done():
                continue
            if self._codel is not None and now - waiter.arrived > self._codel.limit_s(
                math.inf, tenant
            ):
                # The queue stands (CoDel): one that waited this long is answered now, so
                # the slot goes to a request that can still be served in time.
                self._metrics.reject("timeout", tenant)
                waiter.future.set_exception(_too_long())
                continue
            waiter.future.set_result(None)  # the slot passes to it; in_flight stays the same
            return
        self._in_flight -= 1


@dataclass(eq=False, slots=True)
class _Waiter:
    future: asyncio.Future[None]
    arrived: float  # time.monotonic()


def _too_long() -> Overloaded:
    return Overloaded("request waited too long for capacity; retry shortly", retry_after_s=1.0)


def _full() -> Overloaded:
    return Overloaded("server is at capacity; retry shortly", retry_after_s=1.0)
