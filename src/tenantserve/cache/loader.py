"""Loader: a model from the store into its runtime, and the bytes it really holds (measured)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass

from tenantserve import memory
from tenantserve.cache.budget import MemoryBudget
from tenantserve.metrics import Metrics
from tenantserve.runtimes import LoadedModel, Runtime, runtime_for
from tenantserve.store.base import LocalArtifact, ModelStore
from tenantserve.types import ModelId

# Before the first load of a model its resident size is unknown; an ONNX Runtime session was
# seen to hold 1.5-1.6x its file, so reserve 2x and settle to the measured size.
_FIRST_LOAD_FACTOR = 2
_KNOWN_SIZES_MAX = 100_000
# A model file's identity for its measured size: the id and the file's size (a replaced
# artifact of another size is measured again).
_SizeKey = tuple[ModelId, int]
_OVERHEAD_SHARE = 4  # non-model resident bytes charged to the budget: at most 1/4 of it


@dataclass(frozen=True, slots=True)
class Fetched:
    """An artifact on local disk, the runtime that loads it, and the bytes to reserve first."""

    artifact: LocalArtifact
    runtime: Runtime
    size_key: _SizeKey
    known: int | None  # this file's size as measured before, if it was
    estimate: int

    @property
    def labels(self) -> tuple[str, ...] | None:
        return self.artifact.manifest.labels


class Loader:
    """Fetches on the I/O executor, loads and measures on the load executor.

    Counts the runtimes' shared parts (a base model, a tokenizer) in the budget once, apart
    from the models that use them; the models' own bytes are the caller's to count.
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
    ) -> None:
        self._store = store
        self._runtimes = dict(runtimes)
        self._budget = budget
        self._metrics = metrics
        self._io = io_executor
        self._load_executor = load_executor
        self._measure_memory = measure_memory
        self._known_sizes: OrderedDict[_SizeKey, int] = OrderedDict()
        # RSS deltas are only meaningful when one runtime load runs at a time.
        self._measure_lock = threading.Lock()
        self._rss_baseline: int | None = None
        self._shared_bytes = 0  # what the budget holds for shared parts (counted once)

    async def start(self) -> None:
        """Initialise runtimes, then take the process's baseline resident size (no models)."""
        loop = asyncio.get_running_loop()
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
        return max(0, min(beyond, self._budget.capacity_bytes // _OVERHEAD_SHARE))

    async def fetch(self, model_id: ModelId) -> Fetched:
        """Fetch the artifact, pick its runtime and estimate what loading it will take."""
        loop = asyncio.get_running_loop()
        artifact = await loop.run_in_executor(self._io, self._store.fetch, model_id)
        self._metrics.downloading.observe(artifact.download_seconds)
        runtime = runtime_for(self._runtimes, artifact.manifest)
        size_key = _size_key(artifact)
        known = self._known_sizes.get(size_key)
        return Fetched(artifact, runtime, size_key, known, self._estimate(artifact, runtime, known))

    async def load(self, fetched: Fetched) -> tuple[LoadedModel, int, float]:
        """Load on the load executor: (the model, the bytes it holds, the seconds it took)."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        model, measured = await loop.run_in_executor(
            self._load_executor, self._load_measured, fetched
        )
        load_seconds = time.perf_counter() - started
        # A model is measured once (the same file, the same size on every load after).
        self._remember_size(fetched.size_key, measured)
        return model, measured, load_seconds

    async def discard(self, model: LoadedModel) -> None:
        """Close a model that was loaded but will not be resident."""
        await asyncio.get_running_loop().run_in_executor(self._load_executor, model.close)

    async def release(self, model: LoadedModel) -> None:
        """Close a resident model and give its heap back to the OS."""
        await asyncio.get_running_loop().run_in_executor(self._load_executor, self._release, model)

    def sync_shared(self) -> None:
        """Count shared parts once: the budget follows the runtimes' total of shared bytes."""
        held = sum(rt.shared_usage().held_bytes for rt in self._runtimes.values())
        if held > self._shared_bytes:
            self._budget.reserve(held - self._shared_bytes)
        elif held < self._shared_bytes:
            self._budget.release(self._shared_bytes - held)
        self._shared_bytes = held

    def _estimate(self, artifact: LocalArtifact, runtime: Runtime, known: int | None) -> int:
        """The model's own bytes (as measured before, else hinted, else guessed from its
        file), plus whatever shared part it needs that is not resident yet."""
        shared = runtime.shared_estimate(artifact.manifest, artifact.path)
        if known is not None:
            return known + shared
        if artifact.manifest.memory_hint_bytes:
            return artifact.manifest.memory_hint_bytes + shared
        return _own_file_bytes(artifact) * _FIRST_LOAD_FACTOR + shared

    def _load_measured(self, fetched: Fetched) -> tuple[LoadedModel, int]:
        """Load in a worker thread and measure what the model really holds (RSS delta), unless
        this file was measured before: then its size is that, and no lock is needed."""
        runtime, artifact, known = fetched.runtime, fetched.artifact, fetched.known
        if not self._measure_memory:  # offline replay: sizes are given, nothing is resident
            model = runtime.load(artifact.path, artifact.manifest)
            return model, artifact.manifest.memory_hint_bytes or artifact.nbytes
        if known is not None:
            model = runtime.load(artifact.path, artifact.manifest)
            memory.trim()  # the parsed model file is garbage glibc would otherwise keep
            return model, known
        with self._measure_lock:
            memory.trim()
            before = memory.rss_bytes()
            shared_before = runtime.shared_usage().held_bytes
            model = runtime.load(artifact.path, artifact.manifest)
            memory.trim()  # the parsed model file is garbage glibc would otherwise keep
            grown = memory.rss_bytes() - before
            # A shared part created by this load is the runtime's to count, once.
            grown -= runtime.shared_usage().held_bytes - shared_before
        return model, max(grown, _own_file_bytes(artifact))

    def _remember_size(self, key: _SizeKey, nbytes: int) -> None:
        self._known_sizes[key] = nbytes
        self._known_sizes.move_to_end(key)
        if len(self._known_sizes) > _KNOWN_SIZES_MAX:
            self._known_sizes.popitem(last=False)

    def _release(self, model: LoadedModel) -> None:
        # Under the measurement lock: memory freed here during a load's measurement would
        # make that model look smaller than it is.
        with self._measure_lock:
            model.close()
            memory.trim()


def _size_key(artifact: LocalArtifact) -> _SizeKey:
    return artifact.model_id, _own_file_bytes(artifact)


def _own_file_bytes(artifact: LocalArtifact) -> int:
    """The model file's size: a floor for what its session holds (a shared base excluded)."""
    try:
        return (artifact.path / artifact.manifest.model_file).stat().st_size
    except OSError:
        return artifact.nbytes
