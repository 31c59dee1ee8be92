"""Room: making room in the byte budget for a load — who is evicted, and waiting for leases."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from tenantserve.cache.budget import MemoryBudget
from tenantserve.cache.eviction import EvictionPolicy
from tenantserve.cache.resident import Resident
from tenantserve.errors import InsufficientMemory
from tenantserve.metrics import Metrics
from tenantserve.types import ModelId

log = logging.getLogger(__name__)


class Room:
    """Evicts idle, unpinned models in the policy's order until a load fits, or waits for
    leases to end. Reads the cache's index; the cache takes victims out of it and closes them
    (``detach(victim, why)``, ``close(victim)``). Event loop thread only."""

    def __init__(
        self,
        *,
        budget: MemoryBudget,
        policy: EvictionPolicy[ModelId],
        metrics: Metrics,
        entries: Mapping[ModelId, Resident],
        overhead: Callable[[], int],
        detach: Callable[[Resident, str], None],
        close: Callable[[Resident], Awaitable[None]],
        wait_s: float,
    ) -> None:
        self._budget = budget
        self._policy = policy
        self._metrics = metrics
        self._entries = entries
        self._overhead = overhead  # resident bytes beyond the ledger, charged to the budget
        self._detach = detach
        self._close = close
        self._wait_s = wait_s
        self._room_freed: asyncio.Event | None = None

    def freed(self) -> None:
        """A lease ended, a pin went or a model closed: a load waiting for room looks again."""
        if self._room_freed is not None:
            self._room_freed.set()

    async def make(
        self, model_id: ModelId, nbytes: int, *, why: str, deferred: list[Resident] | None = None
    ) -> None:
        """Evict until ``nbytes`` fit. A resident copy of ``model_id`` (a reload) is never a
        victim: it serves until the new one is in, so both are counted for that moment.
        ``why`` is what needs the room, said in each eviction's event.

        With ``deferred``, victims that make it fit at once are not closed here but put there:
        the caller closes them on its load's own thread, just before the load (one executor
        call and one wake-up of the event loop for both), and releases their bytes as it takes
        them. Victims that do not make it fit are closed here, as without it."""
        tenant = model_id.tenant
        self._refuse_if_never_fits(model_id, nbytes)
        deadline = time.monotonic() + self._wait_s
        while True:
            # Close victims before loading, so the process never holds both at once. A tenant
            # at its share gives up its own models first; only then do others make room.
            picked: list[Resident] = []
            if not self._budget.tenant_fits(tenant, nbytes):
                share = (
                    f"{why} needed {nbytes} bytes; tenant {tenant}'s share "
                    f"({self._budget.cap_of(tenant)} bytes) was full"
                )
                picked += self._evict(nbytes, protect=model_id, tenant=tenant, why=share)
            full = (
                f"{why} needed {nbytes} bytes; the memory budget "
                f"({self._budget.capacity_bytes} bytes) was full"
            )
            freeing = sum(victim.nbytes for victim in picked)
            picked += self._evict(nbytes - freeing, protect=model_id, why=full)
            if deferred is not None:
                freeing = sum(victim.nbytes for victim in picked)
                own = sum(victim.nbytes for victim in picked if victim.model_id.tenant == tenant)
                if self._budget.fits(nbytes - freeing) and self._budget.tenant_fits(
                    tenant, nbytes - own
                ):
                    deferred += picked
                    return
            await asyncio.gather(*(self._close(victim) for victim in picked))
            if self._budget.fits(nbytes) and self._budget.tenant_fits(tenant, nbytes):
                return
            # What is left is pinned, busy or loading. Busy models free up in milliseconds;
            # wait for a lease to end rather than fail the load.
            if not self._could_free(model_id, nbytes) or time.monotonic() >= deadline:
                raise InsufficientMemory(self._no_room(model_id, nbytes))
            if self._room_freed is None:
                self._room_freed = asyncio.Event()
            self._room_freed.clear()
            try:
                await asyncio.wait_for(self._room_freed.wait(), deadline - time.monotonic())
            except TimeoutError:
                continue

    async def make_for_measured(self, model_id: ModelId, measured: int, reserved: int) -> None:
        """Make room for what a load measured beyond its estimate before it is counted, so
        the ledger never passes the budget (InsufficientMemory when it cannot fit)."""
        if measured <= reserved:
            return
        self._refuse_if_never_fits(model_id, measured)
        await self.make(model_id, measured - reserved, why=f"loading {model_id}, measured larger")

    def shed(self, model_id: ModelId) -> list[Resident]:
        """Detach victims for what the process holds beyond the ledger after ``model_id``'s
        load; the caller closes them."""
        # Overhead beyond the ledger may have grown with this load: shed others now, not on
        # the next load.
        why = f"after loading {model_id}, process memory beyond the models' ledger"
        own = self._evict(0, protect=model_id, tenant=model_id.tenant, why=why)
        freeing = sum(victim.nbytes for victim in own)
        return [*own, *self._evict(-freeing, protect=model_id, why=why)]

    def _refuse_if_never_fits(self, model_id: ModelId, nbytes: int) -> None:
        tenant = model_id.tenant
        if not self._budget.can_ever_fit(nbytes):
            raise InsufficientMemory(
                f"model {model_id} needs about {nbytes} bytes; the whole memory budget is "
                f"{self._budget.capacity_bytes} bytes"
            )
        if not self._budget.tenant_can_ever_fit(tenant, nbytes):
            raise InsufficientMemory(
                f"model {model_id} needs about {nbytes} bytes; tenant {tenant} may hold at "
                f"most {self._budget.cap_of(tenant)} bytes"
            )

    def _could_free(self, model_id: ModelId, nbytes: int) -> bool:
        """Would ``nbytes`` fit once every lease and load in flight ended? Only pins stay,
        and the resident copy of a model being reloaded."""
        tenant = model_id.tenant
        kept = [e for e in self._entries.values() if e.pinned or e.model_id == model_id]
        if sum(e.nbytes for e in kept) + nbytes > self._budget.capacity_bytes:
            return False
        cap = self._budget.cap_of(tenant)
        own = sum(e.nbytes for e in kept if e.model_id.tenant == tenant)
        return cap is None or own + nbytes <= cap

    def _no_room(self, model_id: ModelId, nbytes: int) -> str:
        tenant = model_id.tenant
        # A reload needs room beside the copy that keeps serving meanwhile.
        beside = " beside its resident copy" if model_id in self._entries else ""
        if not self._budget.tenant_fits(tenant, nbytes):
            return (
                f"model {model_id} needs about {nbytes} bytes{beside} and tenant {tenant} "
                f"already holds {self._budget.used_by(tenant)} of its "
                f"{self._budget.cap_of(tenant)}-byte share in pinned or busy models"
            )
        return (
            f"model {model_id} needs about {nbytes} bytes{beside} and only "
            f"{max(self._budget.free_bytes, 0)} can be freed: the rest of the budget "
            "is held by pinned or busy models"
        )

    def _evict(
        self, nbytes: int, *, protect: ModelId | None, why: str, tenant: str | None = None
    ) -> list[Resident]:
        """Detach idle, unpinned victims until ``nbytes`` more would fit once they close.

        With ``tenant``, only that tenant's models go, until it fits within its own share;
        the policy's order is kept, filtered to the tenant. ``why`` goes in each eviction's
        event (what needed the room, and which budget was full).
        """
        victims: list[Resident] = []
        freeing = 0
        if tenant is None:
            need = self._budget.used_bytes + self._overhead() + nbytes
            limit = self._budget.capacity_bytes
        else:
            cap = self._budget.cap_of(tenant)
            if cap is None:
                return victims
            need, limit = self._budget.used_by(tenant) + nbytes, cap
        if need <= limit:
            return victims  # it fits: no need to rank every resident model (10,000 of them)
        # A model just loaded for requests that have not yet resumed to take it goes last:
        # policies that admit by frequency rank it first, and its waiters would find it gone.
        # The whole order is read first: some policies move models as their order is read.
        now = time.monotonic()
        later: list[Resident] = []
        for victim in list(self._policy.candidates()):
            if need - freeing <= limit:
                break
            entry = self._entries.get(victim)
            if entry is None or entry.pinned or entry.leases > 0 or victim == protect:
                continue
            if tenant is not None and victim.tenant != tenant:
                continue
            if entry.fresh(now):
                later.append(entry)
                continue
            freeing += self._take(entry, why, victims)
        for entry in later:
            if need - freeing <= limit:
                break
            freeing += self._take(entry, why, victims)
        return victims

    def _take(self, entry: Resident, why: str, victims: list[Resident]) -> int:
        """Detach ``entry`` as a victim, into ``victims``; the bytes it frees."""
        self._metrics.evictions.inc()
        log.info("evicting %s (%d bytes): %s", entry.model_id, entry.nbytes, why)
        self._detach(entry, why)
        victims.append(entry)
        return entry.nbytes
