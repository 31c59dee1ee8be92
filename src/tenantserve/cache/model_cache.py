"""ModelCache: lease(model) — a hit, or one shared load that makes room within the byte budget."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Literal

from tenantserve.activity import CacheEvent
from tenantserve.cache.budget import MemoryBudget
from tenantserve.cache.closing import Closing
from tenantserve.cache.eviction import LRU, EvictionPolicy
from tenantserve.cache.load_queue import LoadQueue
from tenantserve.cache.loader import Loader
from tenantserve.cache.resident import Resident
from tenantserve.cache.room import Room
from tenantserve.errors import ModelAlreadyLoaded, ModelNotFound, ModelNotReady, TenantServeError
from tenantserve.metrics import CacheSnapshot, Metrics
from tenantserve.runtimes import LoadedModel
from tenantserve.types import ModelId, ModelStatus

log = logging.getLogger(__name__)


class ModelCache:
    """Which models are resident. All state is touched on the event loop thread only.

    A load waits its turn in ``queue``; ``loader`` fetches and measures it once room is made
    (it charges shared parts to ``budget``, where the cache charges models). ``load_wait_s``
    bounds a caller's wait for a load, and a load's wait for room.
    """

    def __init__(
        self,
        *,
        loader: Loader,
        queue: LoadQueue[Resident],
        budget: MemoryBudget,
        metrics: Metrics,
        policy: EvictionPolicy[ModelId] | None = None,
        load_wait_s: float = 60.0,
        events: Callable[[CacheEvent], None] | None = None,
    ) -> None:
        self._loader = loader
        self._queue = queue
        self._budget = budget
        self._metrics = metrics
        self._policy: EvictionPolicy[ModelId] = policy if policy is not None else LRU()
        self._load_wait_s = load_wait_s
        self._events = events  # loads, evictions, unloads, failures: for /v1/status
        self._entries: dict[ModelId, Resident] = {}
        self._closing = Closing(
            loader=loader, budget=budget, metrics=metrics, freed=lambda: self._room.freed()
        )
        self._room = Room(
            budget=budget, policy=self._policy, metrics=metrics, entries=self._entries,
            overhead=self._loader.overhead_bytes, close=self._closing.close, wait_s=load_wait_s,
            detach=lambda entry, why: self._detach(entry, evicted=True, detail=why),
        )  # fmt: skip

    async def start(self) -> None:
        """Initialise runtimes, then take the process's baseline resident size (no models)."""
        await self._loader.start()

    # -- reading -----------------------------------------------------------------------------

    def is_resident(self, model_id: ModelId) -> bool:
        return model_id in self._entries

    def labels_of(self, model_id: ModelId) -> tuple[str, ...] | None:
        entry = self._entries.get(model_id)
        return entry.labels if entry else None

    def status(self) -> list[ModelStatus]:
        return sorted((e.status() for e in self._entries.values()), key=lambda s: s.model_id)

    def tenant_memory(self, tenant: str) -> tuple[int, int | None]:
        """(bytes ``tenant``'s models hold, the cap on them or ``None``: the whole budget)."""
        return self._budget.used_by(tenant), self._budget.cap_of(tenant)

    def snapshot(self) -> CacheSnapshot:
        return CacheSnapshot(
            loaded_models=len(self._entries),
            used_bytes=self._budget.used_bytes,
            budget_bytes=self._budget.capacity_bytes,
            pinned_bytes=sum(e.nbytes for e in self._entries.values() if e.pinned),
            shared_bytes=self._loader.shared_bytes,
            logical_bytes=sum(e.nbytes for e in self._entries.values())
            + self._loader.shared_logical_bytes(),
            queued_loads=self._queue.queued,
        )

    # -- the data path ---------------------------------------------------------------------

    @asynccontextmanager
    async def lease(self, model_id: ModelId, *, counted: bool = True) -> AsyncIterator[LoadedModel]:
        """Hold the model for one request; it cannot be evicted until the block exits.

        ``counted=False`` (a metadata read) leaves hit and miss counts and recency alone: they
        describe inference requests.
        """
        entry = self._entries.get(model_id)
        if entry is not None:
            if counted:
                self._metrics.cache_hits.inc()
        else:
            if counted:
                self._metrics.cache_misses.inc()
            started = time.perf_counter()
            entry = await self._get_or_load(model_id, explicit=False)
            if counted:
                self._metrics.loading_wait.observe(time.perf_counter() - started)
        entry.leases += 1
        if counted:
            entry.hits += 1
            entry.last_used_s = time.time()
            self._policy.touch(model_id)
        try:
            yield entry.model
        finally:
            entry.leases -= 1
            if entry.leases == 0:
                if entry.draining:
                    await self._closing.close(entry)
                self._room.freed()

    async def _get_or_load(self, model_id: ModelId, *, explicit: bool) -> Resident:
        # Loops because a model loaded for us can, rarely, be evicted before we resume.
        for _ in range(3):
            entry = self._entries.get(model_id)
            if entry is not None:
                return entry
            if not explicit:
                self._refuse_new_load(model_id)
            late = f"model {model_id} is still loading; retry shortly"
            entry = await self._queue.join(
                model_id, lambda: self._load(model_id), timeout_s=self._load_wait_s,
                timeout_message=late,
            )  # fmt: skip
            # Between the load finishing and this waiter resuming, another load may have
            # evicted the model: a lease on a draining entry would run a closed session.
            if not entry.draining:
                return entry
        raise ModelNotReady(f"model {model_id} is under memory pressure; retry shortly")

    def refuse_early(self, model_id: ModelId) -> None:
        """Raise now what a lease would raise at once for a model that is not resident (being
        unloaded, failed recently, too many loads pending); a resident model passes.

        Raises:
            ModelNotReady, LoadFailed: as :meth:`lease` would before waiting for anything.
        """
        if model_id not in self._entries:
            self._refuse_new_load(model_id)

    def refuses_new_loads(self, tenant: str, starting: int = 0) -> bool:
        """Whether the load queue refuses a new load of ``tenant`` now (``starting`` more of
        its loads about to join it)."""
        return self._queue.refuses_new_loads(tenant, starting)

    def refuse_unread(self, model_id: ModelId, starting: int = 0) -> None:
        """Raise now what a new load of any version of ``model_id`` would be told (for a model
        whose versions were never read, so none of them is resident), with ``starting`` more
        of the tenant's loads about to join the queue.

        Raises:
            ModelNotReady, TenantLimitExceeded: the queue, or the tenant's share of it, is full.
        """
        self._queue.refuse_any_version(model_id, starting)

    def _refuse_new_load(self, model_id: ModelId) -> None:
        if model_id in self._closing.unloading:
            raise ModelNotReady(
                f"model {model_id} is being unloaded; retry shortly", retry_after_s=1.0
            )
        self._queue.refuse(model_id)

    # -- loading ---------------------------------------------------------------------------

    async def _load(self, model_id: ModelId) -> Resident:
        tenant = model_id.tenant
        reserved = 0  # bytes this load holds in the budget, released on any failure
        try:
            async with self._queue.slot(model_id):
                began = time.perf_counter()  # a load's own time, not its wait for a slot
                fetched = await self._loader.fetch(model_id)
                victims: list[Resident] = []  # closed on the load's thread, just before it
                why = f"loading {model_id}"
                await self._room.make(model_id, fetched.estimate, why=why, deferred=victims)
                taken = self._closing.take(victims)
                self._budget.reserve(fetched.estimate, tenant)
                reserved = fetched.estimate
                closed: list[float] = []  # the seconds closing them took, once they are
                try:
                    model, measured, load_seconds = await self._loader.load(
                        fetched, [victim.model for victim in taken], closed
                    )
                finally:
                    self._closing.settle(taken, closed)
                try:
                    await self._room.make_for_measured(model_id, measured, reserved)
                except BaseException:
                    await self._loader.discard(model)  # a model that cannot fit is closed (507)
                    raise
            self._metrics.loading.observe(load_seconds)
        except BaseException as exc:
            self._budget.release(reserved, tenant)
            # Counted and reported unless the store has no such model (a 404, not a failure)
            # or the load was not started (its slot came too late: nothing failed).
            if (
                isinstance(exc, TenantServeError)
                and not isinstance(exc, ModelNotReady)
                and self._queue.failed(model_id, exc)
            ):
                self._emit(CacheEvent("load_failed", model_id.value, detail=str(exc)))
            raise
        self._budget.release(reserved, tenant)
        self._budget.reserve(measured, tenant)
        self._loader.sync_shared()
        held_s = time.perf_counter() - began
        self._metrics.load_slot.observe(held_s)
        self._queue.finished(model_id, held_s)
        entry = Resident(model_id, model, measured, fetched.labels, load_seconds, fetched.note)
        old = self._entries.get(model_id)
        if old is not None:  # a reload: the new copy takes over, the old one drains
            entry.pinned = old.pinned
            self._detach(old, detail="replaced by a reload")
            if old.leases == 0:
                self._closing.soon(old)
        self._entries[model_id] = entry
        self._policy.add(model_id, nbytes=measured, load_seconds=load_seconds)
        for victim in self._room.shed(model_id):
            self._closing.soon(victim)
        log.info("loaded %s (%d bytes in %.3fs)", model_id, measured, load_seconds)
        self._emit(CacheEvent("load", model_id.value, measured, load_seconds, fetched.note))
        return entry

    def _detach(self, entry: Resident, *, evicted: bool = False, detail: str = "") -> None:
        """Take a model out of the index; its bytes stay counted until it is closed."""
        del self._entries[entry.model_id]
        self._policy.remove(entry.model_id, evicted=evicted)
        self._closing.add(entry)
        kind: Literal["evict", "unload"] = "evict" if evicted else "unload"
        self._emit(CacheEvent(kind, entry.model_id.value, entry.nbytes, detail=detail))

    def _emit(self, event: CacheEvent) -> None:
        if self._events is not None:
            self._events(event)

    # -- management ------------------------------------------------------------------------

    async def load(
        self, model_id: ModelId, *, pin: bool = False, exist_ok: bool = True, reload: bool = False
    ) -> None:
        """Load ``model_id`` now unless resident (``exist_ok=False``: ModelAlreadyLoaded).

        With ``reload``, a resident model is loaded again from the store beside the copy that
        serves; the new copy takes over once loaded (keeping its pin) and the old one closes
        when its requests finish. A failed reload raises and leaves the old copy serving.
        """
        resident = model_id in self._entries
        if resident and not exist_ok:
            raise ModelAlreadyLoaded(f"model {model_id} is already loaded")
        self._queue.forget_failure(model_id)  # an operator's explicit load always retries
        if resident and reload:
            late = f"model {model_id} is still reloading; the old copy serves meanwhile"
            entry = await self._queue.join(
                model_id, lambda: self._load(model_id), timeout_s=self._load_wait_s,
                timeout_message=late,
            )  # fmt: skip
        else:
            entry = await self._get_or_load(model_id, explicit=True)
        if pin:
            entry.pinned = True

    def pin(self, model_id: ModelId, pinned: bool = True) -> None:
        entry = self._entries.get(model_id)
        if entry is None:
            raise ModelNotFound(f"model {model_id} is not loaded")
        entry.pinned = pinned
        if not pinned:
            self._room.freed()

    async def unload(self, model_id: ModelId) -> None:
        """Unload now; requests in flight finish first, and until they have, new requests
        for the model get ModelNotReady (retry) instead of loading it again."""
        entry = self._entries.get(model_id)
        if entry is None:
            raise ModelNotFound(f"model {model_id} is not loaded")
        self._detach(entry)
        if entry.leases == 0:
            await self._closing.close(entry)
        else:
            self._closing.unloading[model_id] = entry

    async def close(self) -> None:
        """Wait for loads in flight, then release every model (shutdown)."""
        await self._queue.drain()
        for entry in list(self._entries.values()):
            self._detach(entry)
        await self._closing.drain()
        self._loader.close()
