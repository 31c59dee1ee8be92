"""LoadQueue: pending loads, one per model; their slots and pace, refusals, failures remembered."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Generic, Literal, Protocol, TypeVar

from tenantserve.cache.failed_loads import FailedLoads
from tenantserve.cache.single_flight import SingleFlight
from tenantserve.errors import (
    ModelNotFound,
    ModelNotReady,
    StoreUnavailable,
    TenantLimitExceeded,
    TenantServeError,
)
from tenantserve.metrics import Metrics
from tenantserve.types import ModelId

log = logging.getLogger(__name__)

_STORE_FAILURE_TTL_S = 5.0
_FIRST_CALL_S = 0.1
"""A first call's seconds (fetch, conversion, load) until loads that waited say how fast a
full queue drains: a storm of 300 small models measured 2 slots x 300 / 12 s = 0.08 s."""

V = TypeVar("V")


class WaitJudge(Protocol):
    """How long a wait in a queue may be now (CoDel, ``scheduling/codel.py``)."""

    def observe(self, waited_s: float, tenant: str | None = None) -> None: ...

    def limit_s(self, default_s: float, tenant: str | None = None) -> float: ...


class LoadQueue(Generic[V]):
    """Pending loads, one per model and shared by its callers, each producing a ``V``: at most
    ``max_concurrent_loads`` run at once, started at most ``max_loads_per_s``; new ones are
    refused while ``max_queued_loads`` wait, and a failed load is answered from memory.

    With a ``judge`` (CoDel), the wait for a slot is bounded in time too: while loads have
    stood in the queue past the judge's target for a whole interval, a load that waited
    past the limit is not started (its callers get a retryable 503 at once rather than a
    model seconds later). A first call then costs at most the limit in the queue: 512
    closed-loop clients measured a fifth of first calls waiting over a second behind 32 queued
    loads. (Refusing at arrival the loads the drain rate said would wait too long changed
    nothing there, p99 864 against 839 ms, and refused cold starts that would have loaded.)
    """

    def __init__(
        self,
        *,
        metrics: Metrics,
        max_concurrent_loads: int = 2,
        max_queued_loads: int | None = None,
        max_loads_per_s: float = 0.0,
        failed_load_ttl_s: float = 30.0,
        judge: WaitJudge | None = None,
    ) -> None:
        self._metrics = metrics
        self._judge = judge
        self._max_concurrent_loads = max_concurrent_loads
        self._max_queued_loads = max_queued_loads
        self._max_loads_per_s = max_loads_per_s  # 0: loads start as soon as a slot is free
        self._failed_load_ttl_s = failed_load_ttl_s
        self._next_load_at = 0.0
        self._load_s_ewma: float | None = None  # a load's seconds, for Retry-After when full
        # Seconds between loads finishing while others waited: the rate a full queue drains at.
        self._gap_s_ewma: float | None = None
        self._last_finished = 0.0
        self._waiting_at_last_finish = False
        self._told_to_retry = 0.0  # refused first calls expected back, draining at the load rate
        self._told_at = 0.0
        self._flights: SingleFlight[ModelId, V] = SingleFlight()
        self._failures = FailedLoads(log=log)
        self._slots: asyncio.Semaphore | None = None

    @property
    def queued(self) -> int:
        """Loads waiting for a slot."""
        return max(0, len(self._flights) - self._max_concurrent_loads)

    async def join(
        self,
        model_id: ModelId,
        load: Callable[[], Coroutine[Any, Any, V]],
        *,
        timeout_s: float,
        timeout_message: str,
    ) -> V:
        """Start ``load()`` unless ``model_id`` has a load pending, and wait for that load.

        Raises:
            ModelNotReady: with ``timeout_message``, when it did not finish within
                ``timeout_s`` (it goes on running without this caller).
        """
        try:
            return await self._flights.do(model_id, load, timeout_s=timeout_s)
        except TimeoutError:
            raise ModelNotReady(timeout_message, retry_after_s=1.0) from None

    def refuse(self, model_id: ModelId) -> None:
        """Raise at once for a new load of ``model_id`` that failed recently or finds it full.

        Raises:
            ModelNotReady, TenantLimitExceeded: the queue, or the tenant's half of it, is full.
            TenantServeError: the error of a load that failed recently, again.
        """
        self._failures.raise_if_recent(model_id)
        self._raise_if_full(model_id)

    def refuses_new_loads(self, tenant: str, starting: int = 0) -> bool:
        """Whether a new load of ``tenant`` joining none would be refused now (``starting``
        more of its loads about to join): the tenant's state, not any model's."""
        return self._full(tenant, starting) is not None

    def refuse_any_version(self, model_id: ModelId, starting: int = 0) -> None:
        """Raise at once, as :meth:`refuse` would for room, when a new load of any version of
        ``model_id`` (``acme/m``, ``acme/m/2`` …) would be refused: none of them is loading
        (a caller may join that load), and the queue or the tenant's share of it is full,
        counting ``starting`` loads of the tenant about to join it.

        Raises:
            ModelNotReady, TenantLimitExceeded: the queue, or the tenant's half of it, is full.
        """
        if not self.refuses_new_loads(model_id.tenant, starting):
            return
        versions = model_id.value + "/"
        if any(p == model_id or p.value.startswith(versions) for p in self._flights):
            return
        self._raise_if_full(model_id, starting)

    @asynccontextmanager
    async def slot(self, model_id: ModelId) -> AsyncIterator[None]:
        """Hold one of the ``max_concurrent_loads`` slots for loading ``model_id``, taken at
        the pace loads may start.

        Raises:
            ModelNotReady: the load waited for its slot past the judge's limit.
        """
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max_concurrent_loads)
        arrived = time.monotonic()
        async with self._slots:
            if self._judge is not None:
                waited_s = time.monotonic() - arrived
                self._judge.observe(waited_s)
                if waited_s > self._judge.limit_s(math.inf):
                    self._metrics.reject("load_queue_full", model_id.tenant)
                    raise ModelNotReady(
                        f"model {model_id} waited {waited_s:.2f} s for a load slot while "
                        "loads queue past their target; retry shortly",
                        retry_after_s=self._retry_after_s(self.queued),
                    )
            await self._pace()
            yield

    def finished(self, model_id: ModelId, took_s: float) -> None:
        """``model_id`` loaded in ``took_s``: its own time, not its wait for a slot."""
        ewma = self._load_s_ewma
        self._load_s_ewma = took_s if ewma is None else ewma + 0.2 * (took_s - ewma)
        # A gap counts only between two finishes with loads waiting at both: one after an idle
        # spell says nothing of how fast a full queue drains.
        now, waiting = time.monotonic(), self.queued > 0
        if waiting and self._waiting_at_last_finish:
            gap, ewma = now - self._last_finished, self._gap_s_ewma
            self._gap_s_ewma = gap if ewma is None else ewma + 0.2 * (gap - ewma)
        self._last_finished, self._waiting_at_last_finish = now, waiting
        self._failures.forget(model_id)

    def failed(self, model_id: ModelId, error: TenantServeError) -> bool:
        """Remember why ``model_id`` did not load; False when the store has no such model."""
        # A broken artifact stays broken; a store outage already had its retries and may
        # pass at any moment, so it is remembered only briefly (and said so in Retry-After).
        ttl_s = self._failed_load_ttl_s
        if isinstance(error, StoreUnavailable):
            ttl_s = min(ttl_s, _STORE_FAILURE_TTL_S)
        self._failures.record(model_id, error, ttl_s)
        if isinstance(error, ModelNotFound):
            # No artifact is a 404 for the caller, not a load that failed: the failure
            # counter (and the alert on it) is for models that exist and do not load.
            log.debug("load of %s: %s", model_id, error)
            return False
        self._metrics.load_failures.inc()
        self._failures.warn("load of %s failed: %s", model_id, error)
        return True

    def forget_failure(self, model_id: ModelId) -> None:
        self._failures.forget(model_id)

    async def drain(self) -> None:
        """Wait for every pending load (shutdown)."""
        await self._flights.drain()

    def _raise_if_full(self, model_id: ModelId, starting: int = 0) -> None:
        """Refuse a new load at once when ``max_queued_loads`` loads already wait for a slot,
        or when the model's tenant already has half of all pending loads.

        A storm of first calls to distinct models is then admitted at the rate loads finish;
        the rest get a fast retryable answer instead of holding a request slot for minutes.
        A tenant sending ids that miss (new, or not in the store at all) pays store round
        trips from its own half: its misses are part of its quota (429), and other tenants'
        first calls still find room.
        """
        if model_id in self._flights:
            return  # joining a load that runs costs nothing
        tenant = model_id.tenant
        full = self._full(tenant, starting)
        if full == "queue":
            pending = len(self._flights) + starting
            self._metrics.reject("load_queue_full", tenant)
            raise ModelNotReady(
                f"model {model_id} is not loaded and {pending} other loads are pending; "
                "retry shortly",
                retry_after_s=self._retry_after_s(pending - self._max_concurrent_loads),
            )
        if full == "tenant":
            own = starting + self._pending_of(tenant)
            self._metrics.reject("tenant_loads", tenant)
            raise TenantLimitExceeded(
                f"tenant {tenant} has {own} model loads pending, its share of the load queue; "
                "retry shortly",
                retry_after_s=self._retry_after_s(own),
            )

    def _full(self, tenant: str, starting: int) -> Literal["queue", "tenant"] | None:
        """Which bound a new load of ``tenant`` (joining none) meets now, with ``starting``
        more of its loads about to join: the whole queue's, the tenant's half, or neither."""
        if self._max_queued_loads is None:
            return None
        room = self._max_concurrent_loads + self._max_queued_loads
        if len(self._flights) + starting >= room:
            return "queue"
        if starting + self._pending_of(tenant) >= max(1, room // 2):
            return "tenant"
        return None

    def _pending_of(self, tenant: str) -> int:
        return sum(1 for pending_id in self._flights if pending_id.tenant == tenant)

    def _retry_after_s(self, ahead: int) -> float:
        """When to come back, with ``ahead`` loads to finish first. Each refused caller is told
        a later time than the one before, in step with the rate loads finish, so retries come
        back spread out rather than as one more storm."""
        rate = self._max_loads_per_s
        if not rate:
            load_s = self._load_s_ewma if self._load_s_ewma is not None else _FIRST_CALL_S
            if self._gap_s_ewma is None:
                # Nothing says yet how fast a full queue drains: the loads seen (preloads of
                # converted models) took milliseconds and promised hundreds of first calls a
                # second, and the refused came back at once (a 300-model storm, Retry-After
                # 1 s, 1,500 attempts); with none seen, 1 s a load told the first refused 72 s.
                load_s = max(load_s, _FIRST_CALL_S)
            rate = self._max_concurrent_loads / max(load_s, 1e-3)
            if self._gap_s_ewma is not None:
                # Loads of a few ms would promise hundreds a second; a storm drains at the rate
                # first calls get through, HTTP and fetches included. Told the faster one, the
                # refused came back at once and were refused again.
                rate = min(rate, 1.0 / max(self._gap_s_ewma, 1e-3))
        now = time.monotonic()
        drained = (now - self._told_at) * rate
        self._told_to_retry = max(0.0, self._told_to_retry - drained) + 1.0
        self._told_at = now
        return (ahead + self._told_to_retry) / rate

    async def _pace(self) -> None:
        """Start loads no faster than ``max_loads_per_s``: loads take CPU from warm traffic."""
        if not self._max_loads_per_s:
            return
        now = time.monotonic()
        start_at = max(now, self._next_load_at)
        self._next_load_at = start_at + 1.0 / self._max_loads_per_s
        if start_at > now:
            await asyncio.sleep(start_at - now)
