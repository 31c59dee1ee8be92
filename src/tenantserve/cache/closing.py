"""Closing: models on their way out of the cache — detached from its index, each closed once
(whoever asks first: its last lease, an eviction, an unload, shutdown), its bytes then given
back to the budget and the heap."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from tenantserve.cache.budget import MemoryBudget
from tenantserve.cache.loader import Loader
from tenantserve.cache.resident import Resident
from tenantserve.metrics import Metrics
from tenantserve.types import ModelId


class Closing:
    """The cache's draining models (event loop thread only). ``freed`` is called when a
    model has closed: a load waiting for room looks again."""

    def __init__(
        self, *, loader: Loader, budget: MemoryBudget, metrics: Metrics, freed: Callable[[], None]
    ) -> None:
        self._loader = loader
        self._budget = budget
        self._metrics = metrics
        self._freed = freed
        self.draining: set[Resident] = set()
        # Explicitly unloaded, closed once their last lease ends; until then new requests for
        # the model are told to retry rather than load a second copy beside the closing one.
        self.unloading: dict[ModelId, Resident] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, entry: Resident) -> None:
        """``entry`` left the index: it closes when its last lease ends (or now, if none)."""
        entry.draining = True
        self.draining.add(entry)

    async def close(self, entry: Resident) -> None:
        """Close ``entry`` on the load executor, unless someone already has."""
        if not self.starts(entry):
            return
        started = time.perf_counter()
        await self._loader.release(entry.model, entry.nbytes)
        self._budget.release(entry.nbytes, entry.model_id.tenant)
        self.done(entry, time.perf_counter() - started)

    def soon(self, entry: Resident) -> None:
        """:meth:`close` in a task of its own."""
        task = asyncio.get_running_loop().create_task(self.close(entry))
        self._tasks.add(task)  # hold a reference until done, or the task may be collected
        task.add_done_callback(self._tasks.discard)

    def starts(self, entry: Resident) -> bool:
        """Whether ``entry`` is the caller's to close (closing once, whoever asks first);
        a caller that closes it itself calls :meth:`done` after."""
        if entry not in self.draining:
            return False
        self.draining.discard(entry)
        if self.unloading.get(entry.model_id) is entry:
            del self.unloading[entry.model_id]
        return True

    def done(self, entry: Resident, seconds: float) -> None:
        """``entry`` closed in ``seconds`` (its budget bytes already released)."""
        self._loader.sync_shared()  # the last user of a shared part frees it
        self._metrics.unloading.observe(seconds)
        self._freed()

    def take(self, victims: list[Resident]) -> list[Resident]:
        """Of ``victims``, those the caller closes itself (on its load's thread, before the
        load): their bytes count as gone now, since nothing is loaded before they close."""
        taken = [victim for victim in victims if self.starts(victim)]
        for victim in taken:
            self._budget.release(victim.nbytes, victim.model_id.tenant)
        return taken

    def settle(self, taken: list[Resident], closed: list[float]) -> None:
        """After the load that took ``taken``: ``closed`` holds the seconds closing them took
        when they were closed; empty, the load never ran, so their bytes are counted again
        and they close as any other."""
        for victim in taken:
            if closed:
                self._loader.freed(victim.nbytes)
                self.done(victim, closed[0] / len(taken))
            else:
                self._budget.reserve(victim.nbytes, victim.model_id.tenant)
                self.draining.add(victim)
                self.soon(victim)

    async def drain(self) -> None:
        """Wait for closes in flight, then close every draining model no lease holds."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for entry in list(self.draining):
            if entry.leases == 0:
                await self.close(entry)
