"""Offline replay: a trace through the real ModelCache with each eviction policy, and Belady's."""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tenantserve.cache import (
    EvictionPolicy,
    Loader,
    LoadQueue,
    MemoryBudget,
    ModelCache,
)
from tenantserve.cache.policies import NAMES
from tenantserve.cache.policies import make_policy as make_server_policy
from tenantserve.errors import InsufficientMemory
from tenantserve.metrics import Metrics
from tenantserve.tools.bench.simulated import Inline, SimRuntime, SimStore
from tenantserve.types import ModelId

POLICIES = (*NAMES, "belady")


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What one policy did with one trace and budget."""

    policy: str
    requests: int
    hits: int
    loads: int
    bytes_loaded: int
    evictions: int
    refused: int
    hit_flags: tuple[bool, ...] = ()
    """Per request, whether its model was resident on arrival (with ``record_hits``)."""

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0


class _GivenLoadCost:
    """Hands the policy each model's real load time; simulated loads take none."""

    def __init__(
        self,
        inner: EvictionPolicy[ModelId],
        load_seconds: Mapping[str, float],
        on_change: Callable[[str, bool], None] | None = None,
    ) -> None:
        self._inner = inner
        self._load_seconds = load_seconds
        self._on_change = on_change
        self.resident = 0  # the router ranks instances by it (fewer models first)

    def add(self, key: ModelId, *, nbytes: int, load_seconds: float) -> None:
        self.resident += 1
        self._inner.add(key, nbytes=nbytes, load_seconds=self._load_seconds.get(key.value, 0.0))
        if self._on_change is not None:
            self._on_change(key.value, True)

    def touch(self, key: ModelId) -> None:
        self._inner.touch(key)

    def remove(self, key: ModelId, *, evicted: bool = False) -> None:
        self.resident -= 1
        self._inner.remove(key, evicted=evicted)
        if self._on_change is not None:
            self._on_change(key.value, False)

    def candidates(self) -> Iterator[ModelId]:
        return self._inner.candidates()


class Belady:
    """Clairvoyant: evicts the resident model whose next request is furthest in the future."""

    def __init__(self, model_ids: Sequence[str]) -> None:
        self._uses: dict[str, list[int]] = {}
        for index, model_id in enumerate(model_ids):
            self._uses.setdefault(model_id, []).append(index)
        self._resident: set[ModelId] = set()
        self.position = 0

    def _next_use(self, key: ModelId) -> int:
        uses = self._uses.get(key.value, [])
        at = bisect.bisect_right(uses, self.position)
        return uses[at] if at < len(uses) else len(uses) + 1 << 40

    def add(self, key: ModelId, *, nbytes: int = 0, load_seconds: float = 0.0) -> None:
        self._resident.add(key)

    def touch(self, key: ModelId) -> None:
        return None

    def remove(self, key: ModelId, *, evicted: bool = False) -> None:
        self._resident.discard(key)

    def candidates(self) -> Iterator[ModelId]:
        return iter(sorted(self._resident, key=self._next_use, reverse=True))


def replay(
    trace: Sequence[tuple[float, str]],
    *,
    sizes: Mapping[str, int],
    budget_bytes: int,
    policy: str,
    load_seconds: Mapping[str, float] | None = None,
    min_residency_s: float = 0.0,
    record_hits: bool = False,
) -> ReplayResult:
    """Run ``trace`` (``(t_s, model_id)`` in time order) through a ModelCache under ``policy``.

    The cache is the server's own code; only the store, the runtime and the clock are
    simulated (sizes given, loads instant, time taken from the trace).
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    with quiet_cache_log():
        return asyncio.run(
            _replay(
                trace, sizes, budget_bytes, policy, dict(load_seconds or {}), min_residency_s,
                record_hits,
            )
        )  # fmt: skip


@contextmanager
def quiet_cache_log() -> Iterator[None]:
    """The load queue warns of each refused load; replayed, thousands would bury the answer (the
    refusals are counted instead)."""
    logger = logging.getLogger("tenantserve.cache.load_queue")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class CacheSim:
    """One instance's ModelCache, fed one request at a time (create and use it in one loop).

    A hit only moves the model in the eviction policy's order, so :meth:`hit` does that
    directly: a lease would do the same at seven times the cost (the planner's hot spot).
    Misses go through :meth:`load`, the cache's own lease: admission, eviction, the budget.
    ``on_change(model_id, resident)`` hears each model arrive and leave.
    """

    def __init__(
        self,
        sizes: Mapping[str, int],
        budget_bytes: int,
        policy: EvictionPolicy[ModelId],
        load_seconds: Mapping[str, float],
        clock: list[float],
        on_change: Callable[[str, bool], None] | None = None,
    ) -> None:
        self._sizes = sizes
        self._now = clock
        self._policy = _GivenLoadCost(policy, load_seconds, on_change)
        self._metrics = Metrics()
        self._budget = MemoryBudget(budget_bytes)
        inline = Inline()
        self._cache = ModelCache(
            loader=Loader(
                store=SimStore(sizes), runtimes={"onnx": SimRuntime()}, budget=self._budget,
                metrics=self._metrics, io_executor=inline, load_executor=inline,
                measure_memory=False,
            ),
            queue=LoadQueue(metrics=self._metrics, max_concurrent_loads=1, failed_load_ttl_s=0.0),
            budget=self._budget, metrics=self._metrics, policy=self._policy, load_wait_s=1.0,
        )  # fmt: skip
        self._ids: dict[str, ModelId] = {}
        self.hits = self.loads = self.bytes_loaded = self.refused = 0

    def _id(self, raw: str) -> ModelId:
        return self._ids.get(raw) or self._ids.setdefault(raw, ModelId.parse(raw))

    def holds(self, raw: str) -> bool:
        return self._cache.is_resident(self._id(raw))

    @property
    def free_bytes(self) -> int:
        return self._budget.free_bytes

    @property
    def models(self) -> int:
        return self._policy.resident

    def hit(self, t_s: float, raw: str) -> bool:
        """Serve ``raw`` at ``t_s`` if resident (True); else the caller awaits :meth:`load`."""
        model_id = self._id(raw)
        if not self._cache.is_resident(model_id):
            return False
        self._now[0] = t_s
        self._policy.touch(model_id)
        self.hits += 1
        return True

    async def load(self, t_s: float, raw: str) -> None:
        """A request for a model that is not resident: the cache loads it, evicting for room."""
        self._now[0] = t_s
        self.loads += 1
        self.bytes_loaded += self._sizes[raw]
        try:
            async with self._cache.lease(self._id(raw)):
                pass
        except InsufficientMemory:
            self.refused += 1

    @property
    def evictions(self) -> int:
        return int(_counter(self._metrics, "tenantserve_model_evictions_total"))

    async def close(self) -> None:
        await self._cache.close()


async def _replay(
    trace: Sequence[tuple[float, str]],
    sizes: Mapping[str, int],
    budget_bytes: int,
    policy_name: str,
    load_seconds: dict[str, float],
    min_residency_s: float,
    record_hits: bool,
) -> ReplayResult:
    now = [0.0]
    belady = Belady([model_id for _, model_id in trace]) if policy_name == "belady" else None
    sim = CacheSim(sizes, budget_bytes, make_policy(policy_name, min_residency_s, now, belady),
                   load_seconds, now)  # fmt: skip
    flags: list[bool] = []
    for position, (t_s, raw) in enumerate(trace):
        if belady is not None:
            belady.position = position
        resident = sim.hit(t_s, raw)
        if not resident:
            await sim.load(t_s, raw)
        if record_hits:
            flags.append(resident)
    evictions = sim.evictions
    await sim.close()
    return ReplayResult(
        policy_name, len(trace), sim.hits, sim.loads, sim.bytes_loaded, evictions, sim.refused,
        tuple(flags),
    )  # fmt: skip


def make_policy(
    name: str, min_residency_s: float, clock: list[float], belady: Belady | None = None
) -> EvictionPolicy[ModelId]:
    """The server's eviction policy ``name`` on the trace's clock (Belady's needs the trace)."""
    if name == "belady" and belady is not None:
        return belady
    return make_server_policy(name, min_residency_s=min_residency_s, clock=lambda: clock[0])


def _counter(metrics: Metrics, name: str) -> float:
    value: Any = metrics.registry.get_sample_value(name)
    return float(value or 0.0)
