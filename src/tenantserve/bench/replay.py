"""Offline replay: a trace through the real ModelCache with each eviction policy, and Belady's."""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from tenantserve.cache import LRU, CostAware, EvictionPolicy, MemoryBudget, ModelCache
from tenantserve.errors import InsufficientMemory
from tenantserve.metrics import Metrics
from tenantserve.runtimes import Runtime, SharedUsage
from tenantserve.runtimes.base import LoadedModel
from tenantserve.store.base import LocalArtifact
from tenantserve.types import ModelId, ModelManifest, Tensors, TensorSpec

P = ParamSpec("P")
T = TypeVar("T")

POLICIES = ("lru", "cost", "belady")


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


class _Inline(Executor):
    """Runs work at once on the calling thread: a replay has nothing to overlap."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


class _SimModel:
    platform = "simulated"
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()

    def predict(self, tensors: Tensors) -> Tensors:
        return tensors

    def close(self) -> None:
        return None


class _SimRuntime:
    name = "onnx"

    def warm_up(self) -> None:
        return None

    def shared_usage(self) -> SharedUsage:
        return SharedUsage()

    def shared_estimate(self, manifest: ModelManifest, artifact_path: Path) -> int:
        return 0

    def load(self, path: Path, manifest: ModelManifest) -> LoadedModel:
        return _SimModel()


class _SimStore:
    """Every model of the fleet, by size; nothing is read from disk."""

    url = "simulated://"

    def __init__(self, sizes: Mapping[str, int]) -> None:
        self._sizes = sizes

    def fetch(self, model_id: ModelId) -> LocalArtifact:
        size = self._sizes[model_id.value]
        return LocalArtifact(model_id, Path("."), ModelManifest(memory_hint_bytes=size), size)

    def list(self, prefix: str = "") -> list[str]:
        return sorted(m for m in self._sizes if m.startswith(prefix))

    def check(self) -> None:
        return None


class _GivenLoadCost:
    """Hands the policy each model's real load time; simulated loads take none."""

    def __init__(self, inner: EvictionPolicy[ModelId], load_seconds: Mapping[str, float]) -> None:
        self._inner = inner
        self._load_seconds = load_seconds

    def add(self, key: ModelId, *, nbytes: int, load_seconds: float) -> None:
        self._inner.add(key, nbytes=nbytes, load_seconds=self._load_seconds.get(key.value, 0.0))

    def touch(self, key: ModelId) -> None:
        self._inner.touch(key)

    def remove(self, key: ModelId, *, evicted: bool = False) -> None:
        self._inner.remove(key, evicted=evicted)

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
    return asyncio.run(
        _replay(
            trace, sizes, budget_bytes, policy, dict(load_seconds or {}), min_residency_s,
            record_hits,
        )
    )  # fmt: skip


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
    inner: EvictionPolicy[ModelId]
    if belady is not None:
        inner = belady
    elif policy_name == "cost":
        inner = CostAware(min_residency_s=min_residency_s, clock=lambda: now[0])
    else:
        inner = LRU()
    metrics = Metrics()
    runtimes: dict[str, Runtime] = {"onnx": _SimRuntime()}
    inline = _Inline()
    cache = ModelCache(
        store=_SimStore(sizes), runtimes=runtimes, budget=MemoryBudget(budget_bytes),
        metrics=metrics, io_executor=inline, load_executor=inline,
        policy=_GivenLoadCost(inner, load_seconds), max_concurrent_loads=1,
        load_wait_s=1.0, failed_load_ttl_s=0.0, measure_memory=False,
    )  # fmt: skip
    hits = loads = bytes_loaded = refused = 0
    flags: list[bool] = []
    ids: dict[str, ModelId] = {}
    for position, (t_s, raw) in enumerate(trace):
        now[0] = t_s
        if belady is not None:
            belady.position = position
        model_id = ids.get(raw) or ids.setdefault(raw, ModelId.parse(raw))
        resident = cache.is_resident(model_id)
        if record_hits:
            flags.append(resident)
        if resident:
            hits += 1
        else:
            loads += 1
            bytes_loaded += sizes[raw]
        try:
            async with cache.lease(model_id):
                pass
        except InsufficientMemory:
            refused += 1
    evictions = int(_counter(metrics, "tenantserve_model_evictions_total"))
    await cache.close()
    return ReplayResult(
        policy_name, len(trace), hits, loads, bytes_loaded, evictions, refused, tuple(flags)
    )


def _counter(metrics: Metrics, name: str) -> float:
    value: Any = metrics.registry.get_sample_value(name)
    return float(value or 0.0)
