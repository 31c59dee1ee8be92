"""Loader: a model from the store into its runtime, and the bytes it really holds."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

from tenantserve import memory
from tenantserve.cache.budget import MemoryBudget
from tenantserve.cache.sizes import Plan, Sizes
from tenantserve.cache.trimmer import HeapTrimmer
from tenantserve.metrics import Metrics
from tenantserve.runtimes import LoadedModel, Prepared, Runtime, runtime_for
from tenantserve.store.base import LocalArtifact, ModelStore
from tenantserve.types import ModelId

OVERHEAD_SHARE = 4  # non-model resident bytes charged to the budget: at most 1/4 of it
_TRIM_SHARE = 8  # the heap is trimmed after closing models worth 1/8 of the budget


@dataclass(frozen=True, slots=True)
class Fetched:
    """An artifact on local disk, the runtime that loads it, what it said of it, and how the
    load is sized."""

    artifact: LocalArtifact
    runtime: Runtime
    prepared: Prepared
    plan: Plan

    @property
    def estimate(self) -> int:
        return self.plan.estimate

    @property
    def labels(self) -> tuple[str, ...] | None:
        return self.artifact.manifest.labels

    @property
    def note(self) -> str:
        """How the model loads when not the fast way, and why ("" when it does)."""
        return self.prepared.note


class Loader:
    """Fetches on the I/O executor; prepares, loads and closes on the load executor, as many
    at once as it has threads, each model's size known (its runtime maps its file) or
    measured alone once (see :class:`Sizes`).

    Counts the runtimes' shared parts (a base model, a tokenizer) in the budget once, apart
    from the models that use them; the models' own bytes are the caller's to count. Freed
    memory goes back to the OS as it is freed, and a trim runs in the background now and then
    (see :class:`HeapTrimmer`), never on a load's or a close's way.
    """

    def __init__(
        self,
        *,
        store: ModelStore,
        runtimes: Mapping[str, Runtime],
        budget: MemoryBudget,
        metrics: Metrics,
        io_executor: Executor,
        load_executor: Executor,
        measure_memory: bool = True,
        trimmer_nice: int = 0,
    ) -> None:
        self._store = store
        self._runtimes = dict(runtimes)
        self._budget = budget
        self._metrics = metrics
        self._io = io_executor
        self._load_executor = load_executor
        self._measure_memory = measure_memory
        self._sizes = Sizes(measure_memory=measure_memory)
        self._trimmer = HeapTrimmer(
            self._sizes.lock,
            threshold_bytes=budget.capacity_bytes // _TRIM_SHARE,
            nice=trimmer_nice,
        )
        self._rss_baseline: int | None = None
        self._shared_bytes = 0  # what the budget holds for shared parts (counted once)

    async def start(self) -> None:
        """Initialise runtimes, then take the process's baseline resident size (no models)."""
        loop = asyncio.get_running_loop()
        if self._measure_memory:
            memory.return_freed_memory()
            self._trimmer.start()
        for runtime in self._runtimes.values():
            await loop.run_in_executor(self._load_executor, runtime.warm_up)
        await loop.run_in_executor(self._load_executor, memory.trim)
        self._rss_baseline = memory.rss_bytes()

    @property
    def shared_bytes(self) -> int:
        return self._shared_bytes

    def shared_logical_bytes(self) -> int:
        return sum(rt.shared_usage().logical_bytes for rt in self._runtimes.values())

    def overhead_bytes(self) -> int:
        """Resident bytes beyond baseline + ledger (heap fragmentation after churn, buffers),
        counted up to a quarter of the budget.

        Counting it makes the budget hold for the process (RSS ≤ baseline + budget), not only
        for the sum of measured model sizes. The cap is there because most of it is not the
        models': a soak at 2x capacity held ~40 MB in connections, and charged in full that
        emptied a small budget and turned every request into a load.
        """
        if self._rss_baseline is None:
            return 0
        beyond = memory.rss_bytes() - self._rss_baseline - self._budget.used_bytes
        return max(0, min(beyond, self._budget.capacity_bytes // OVERHEAD_SHARE))

    async def fetch(self, model_id: ModelId) -> Fetched:
        """Fetch the artifact (on the I/O executor), pick its runtime, let it prepare (on the
        load executor: making a fast-load file is CPU work) and size the load.

        The I/O thread hands the artifact straight to the load executor: one wake-up of the
        event loop for both steps, not one each. A load holds its slot across every wake-up,
        and on a busy loop each costs a turn of it (a 16 kB model held its slot ~9 ms for
        2-3 ms of work, and first calls queued for slots behind that).
        """
        chained: concurrent.futures.Future[tuple[LocalArtifact, Runtime, Prepared]]
        chained = concurrent.futures.Future()

        def prepare(artifact: LocalArtifact) -> tuple[LocalArtifact, Runtime, Prepared]:
            runtime = runtime_for(self._runtimes, artifact.manifest)
            return artifact, runtime, runtime.prepare(artifact.path, artifact.manifest)

        def fetched(done: concurrent.futures.Future[LocalArtifact]) -> None:
            if chained.set_running_or_notify_cancel():
                try:
                    then = self._load_executor.submit(prepare, done.result())
                except BaseException as exc:  # the fetch failed, or the executor is shut
                    chained.set_exception(exc)
                else:
                    then.add_done_callback(lambda ready: _settle(chained, ready))

        self._io.submit(self._store.fetch, model_id).add_done_callback(fetched)
        artifact, runtime, prepared = await asyncio.wrap_future(chained)
        self._metrics.downloading.observe(artifact.download_seconds)
        shared = runtime.shared_estimate(artifact.manifest, artifact.path)
        return Fetched(artifact, runtime, prepared, self._sizes.plan(artifact, prepared, shared))

    async def load(
        self,
        fetched: Fetched,
        closing: Sequence[LoadedModel] = (),
        closed: list[float] | None = None,
    ) -> tuple[LoadedModel, int, float]:
        """Load on the load executor: (the model, the bytes it holds, the seconds it took).

        ``closing`` (evicted to make room) are closed first in the same executor call, so the
        process never holds both and the event loop wakes once for both; ``closed`` gets the
        seconds that took as soon as they are (a load cancelled before its call ran has not
        closed them)."""

        def close_then_load() -> tuple[LoadedModel, int, float]:
            started = time.perf_counter()
            for victim in closing:
                self._close(victim)
            if closed is not None:
                closed.append(time.perf_counter() - started)
            started = time.perf_counter()
            model, nbytes = self._sizes.load(
                fetched.runtime, fetched.artifact, fetched.prepared, fetched.plan
            )
            return model, nbytes, time.perf_counter() - started

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._load_executor, close_then_load)

    def freed(self, nbytes: int) -> None:
        """``nbytes`` of closed models went back to the heap (a trim follows past a share)."""
        self._trimmer.freed(nbytes)

    async def discard(self, model: LoadedModel) -> None:
        """Close a model that was loaded but will not be resident."""
        await asyncio.get_running_loop().run_in_executor(self._load_executor, self._close, model)

    async def release(self, model: LoadedModel, nbytes: int) -> None:
        """Close a resident model that held ``nbytes``; its memory goes back to the OS."""
        await asyncio.get_running_loop().run_in_executor(self._load_executor, self._close, model)
        self.freed(nbytes)

    def close(self) -> None:
        """Stop the background trim (shutdown)."""
        self._trimmer.close()

    def sync_shared(self) -> None:
        """Count shared parts once: the budget follows the runtimes' total of shared bytes."""
        held = sum(rt.shared_usage().held_bytes for rt in self._runtimes.values())
        if held > self._shared_bytes:
            self._budget.reserve(held - self._shared_bytes)
        elif held < self._shared_bytes:
            self._budget.release(self._shared_bytes - held)
        self._shared_bytes = held

    def _close(self, model: LoadedModel) -> None:
        # Beside other loads, never during a measurement: memory freed then would make the
        # measured model look smaller than it is.
        with self._sizes.lock.shared():
            model.close()


def _settle(
    chained: concurrent.futures.Future[tuple[LocalArtifact, Runtime, Prepared]],
    ready: concurrent.futures.Future[tuple[LocalArtifact, Runtime, Prepared]],
) -> None:
    if ready.cancelled():  # the executor shut down under it
        chained.set_exception(concurrent.futures.CancelledError())
        return
    error = ready.exception()
    if error is not None:
        chained.set_exception(error)
    else:
        chained.set_result(ready.result())
