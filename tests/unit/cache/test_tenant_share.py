"""Per-tenant memory share and the bounded load queue of ModelCache (fake store and runtime)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import pytest
from prometheus_client import CollectorRegistry

from tenantserve.cache import Loader, LoadQueue, MemoryBudget, ModelCache
from tenantserve.errors import InsufficientMemory, ModelNotReady, TenantLimitExceeded
from tenantserve.metrics import Metrics
from tenantserve.runtimes import LoadedModel, Runtime
from tenantserve.runtimes.base import Prepared, SharedUsage
from tenantserve.store.base import LocalArtifact
from tenantserve.store.versions import ModelVersions
from tenantserve.types import ModelId, ModelManifest, Tensors, TensorSpec

MB = 1_000_000


class _Model:
    platform = "fake"
    inputs = (TensorSpec("x", "FP32", (-1,)),)
    outputs = (TensorSpec("y", "FP32", (-1,)),)

    def predict(self, tensors: Tensors) -> Tensors:
        return dict(tensors)

    def close(self) -> None:
        return None


class _Runtime:
    name = "onnx"

    def warm_up(self) -> None:
        return None

    def shared_usage(self) -> SharedUsage:
        return SharedUsage()

    def shared_estimate(self, manifest: ModelManifest, artifact_path: Path) -> int:
        return 0

    def prepare(self, path: Path, manifest: ModelManifest) -> Prepared:
        return Prepared()

    def load(self, path: Path, manifest: ModelManifest) -> LoadedModel:
        return _Model()


class _Store:
    """``<tenant>/<name>-<megabytes>`` takes that many MB; ``gate`` holds every fetch."""

    url = "fake://"

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.gate: threading.Event | None = None

    def fetch(self, model_id: ModelId) -> LocalArtifact:
        if self.gate is not None:
            self.gate.wait(10)
        size = int(model_id.value.rsplit("-", 1)[1]) * MB
        return LocalArtifact(model_id, self.tmp, ModelManifest(memory_hint_bytes=size), size)

    def versions(self, model_id: ModelId) -> ModelVersions | None:
        return None  # no versioned models

    def list(self, prefix: str = "") -> list[str]:
        return []

    def check(self) -> None:
        return None


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as executor:
        yield executor


@pytest.fixture
def store(tmp_path: Path) -> _Store:
    return _Store(tmp_path)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


CacheFactory = Callable[..., ModelCache]


@pytest.fixture
async def make_cache(
    store: _Store, pool: ThreadPoolExecutor, metrics: Metrics
) -> AsyncIterator[CacheFactory]:
    made: list[ModelCache] = []

    def make(budget: MemoryBudget, **queue_options: object) -> ModelCache:
        cache = ModelCache(
            loader=Loader(
                store=store, runtimes={"onnx": cast(Runtime, _Runtime())}, budget=budget,
                metrics=metrics, io_executor=pool, load_executor=pool, measure_memory=False,
            ),
            queue=LoadQueue(metrics=metrics, **queue_options),  # type: ignore[arg-type]
            budget=budget, metrics=metrics, load_wait_s=0.2,
        )  # fmt: skip
        made.append(cache)
        return cache

    yield make
    for cache in made:
        await cache.close()


def mid(raw: str) -> ModelId:
    return ModelId.parse(raw)


async def _use(cache: ModelCache, raw: str) -> None:
    async with cache.lease(mid(raw)):
        pass


def test_budget_keeps_a_ledger_per_tenant() -> None:
    budget = MemoryBudget(100, tenant_cap_bytes=30, tenant_caps={"big": 80})
    budget.reserve(20, "acme")
    budget.reserve(5, "globex")
    assert budget.used_bytes == 25
    assert budget.used_by("acme") == 20
    assert budget.tenant_fits("acme", 10)
    assert not budget.tenant_fits("acme", 11)
    assert budget.tenant_can_ever_fit("big", 80)
    assert not budget.tenant_can_ever_fit("acme", 31)
    budget.release(20, "acme")
    assert budget.used_by("acme") == 0
    with pytest.raises(AssertionError):
        budget.release(1, "acme")


@pytest.mark.anyio
async def test_a_tenant_at_its_share_evicts_its_own_models_first(
    make_cache: CacheFactory,
) -> None:
    cache = make_cache(MemoryBudget(100 * MB, tenant_cap_bytes=30 * MB))
    for raw in ("globex/g-10", "acme/a1-10", "acme/a2-10", "globex/h-10"):
        await _use(cache, raw)
    # acme holds 20 MB; 15 more is over its 30 MB share although the budget has room: acme's
    # own least recently used model goes, not globex's older one.
    await _use(cache, "acme/a3-15")
    resident = {s.model_id for s in cache.status()}
    assert resident == {"globex/g-10", "globex/h-10", "acme/a2-10", "acme/a3-15"}


@pytest.mark.anyio
async def test_global_pressure_still_evicts_across_tenants(make_cache: CacheFactory) -> None:
    cache = make_cache(MemoryBudget(40 * MB, tenant_cap_bytes=30 * MB))
    for raw in ("globex/g-15", "acme/a1-10", "acme/a2-10"):
        await _use(cache, raw)
    await _use(cache, "other/o-10")  # 45 > 40: the global LRU (globex) goes
    assert {s.model_id for s in cache.status()} == {"acme/a1-10", "acme/a2-10", "other/o-10"}


@pytest.mark.anyio
async def test_a_model_over_the_tenants_share_fails_fast(make_cache: CacheFactory) -> None:
    cache = make_cache(MemoryBudget(100 * MB, tenant_cap_bytes=30 * MB, tenant_caps={"big": 90}))
    await _use(cache, "acme/a1-10")
    with pytest.raises(InsufficientMemory, match="tenant acme may hold at most"):
        await _use(cache, "acme/huge-31")
    assert [s.model_id for s in cache.status()] == ["acme/a1-10"]


@pytest.mark.anyio
async def test_a_share_held_by_pins_refuses_the_load(make_cache: CacheFactory) -> None:
    cache = make_cache(MemoryBudget(100 * MB, tenant_cap_bytes=30 * MB))
    await cache.load(mid("acme/p1-20"), pin=True)
    with pytest.raises(InsufficientMemory, match="share"):
        await _use(cache, "acme/a-15")
    await _use(cache, "globex/g-15")  # another tenant is not affected


@pytest.mark.anyio
async def test_load_queue_refuses_new_loads_fast_and_counts_them(
    make_cache: CacheFactory, store: _Store, metrics: Metrics
) -> None:
    metrics.tenants.observe("storm")
    cache = make_cache(MemoryBudget(100 * MB), max_concurrent_loads=1, max_queued_loads=1)
    store.gate = threading.Event()
    running = asyncio.ensure_future(_use(cache, "storm/m1-1"))
    queued = asyncio.ensure_future(_use(cache, "calm/m2-1"))
    joined = asyncio.ensure_future(_use(cache, "calm/m2-1"))  # joins a pending load: no error
    await asyncio.sleep(0.01)
    with pytest.raises(ModelNotReady) as refused:
        await _use(cache, "storm/m3-1")
    assert refused.value.retry_after_s > 0
    assert cache.snapshot().queued_loads == 1
    store.gate.set()
    await asyncio.gather(running, queued, joined)
    await _use(cache, "storm/m3-1")  # room again once loads finished
    value = metrics.registry.get_sample_value(
        "tenantserve_rejected_requests_total", {"reason": "load_queue_full", "tenant": "storm"}
    )
    assert value == 1


@pytest.mark.anyio
async def test_a_tenant_holds_at_most_half_the_load_queue_and_others_still_load(
    make_cache: CacheFactory, store: _Store, metrics: Metrics
) -> None:
    metrics.tenants.observe("noisy")
    cache = make_cache(MemoryBudget(100 * MB), max_concurrent_loads=1, max_queued_loads=3)
    store.gate = threading.Event()
    noisy = [asyncio.ensure_future(_use(cache, f"noisy/m{i}-1")) for i in (1, 2)]
    await asyncio.sleep(0.01)
    # Misses (new ids, or ids not in the store at all) are part of the tenant's quota: 429.
    with pytest.raises(TenantLimitExceeded) as refused:
        await _use(cache, "noisy/m3-1")
    assert refused.value.retry_after_s > 0
    calm = asyncio.ensure_future(_use(cache, "calm/m4-1"))  # another tenant still finds room
    await asyncio.sleep(0.01)
    assert cache.snapshot().queued_loads == 2
    store.gate.set()
    await asyncio.gather(*noisy, calm)
    value = metrics.registry.get_sample_value(
        "tenantserve_rejected_requests_total", {"reason": "tenant_loads", "tenant": "noisy"}
    )
    assert value == 1


@pytest.mark.anyio
async def test_a_model_not_yet_resolved_is_refused_when_no_version_of_it_could_load(
    make_cache: CacheFactory, store: _Store, metrics: Metrics
) -> None:
    metrics.tenants.observe("noisy")
    cache = make_cache(MemoryBudget(100 * MB), max_concurrent_loads=1, max_queued_loads=3)
    store.gate = threading.Event()
    cache.refuse_unread(ModelId.parse("noisy/a"), starting=1)  # 1 of its 2: room
    with pytest.raises(TenantLimitExceeded):
        cache.refuse_unread(ModelId.parse("noisy/a"), starting=2)  # first reads count
    pending = asyncio.ensure_future(_use(cache, "noisy/v/2-1"))  # version 2 of noisy/v
    other = asyncio.ensure_future(_use(cache, "noisy/w-1"))
    await asyncio.sleep(0.01)
    cache.refuse_unread(ModelId.parse("noisy/v"))  # its version loads: a caller may join
    with pytest.raises(TenantLimitExceeded) as refused:
        cache.refuse_unread(ModelId.parse("noisy/x-1"))
    assert refused.value.retry_after_s > 0
    cache.refuse_unread(ModelId.parse("calm/y-1"))  # another tenant still finds room
    store.gate.set()
    await asyncio.gather(pending, other)
    cache.refuse_unread(ModelId.parse("noisy/x-1"))


@pytest.mark.anyio
async def test_before_any_load_finished_the_refused_are_told_a_tenth_of_a_second_a_load(
    metrics: Metrics,
) -> None:
    queue: LoadQueue[None] = LoadQueue(metrics=metrics, max_concurrent_loads=2, max_queued_loads=0)
    gate = asyncio.Event()

    async def load() -> None:
        await gate.wait()

    pending = [
        asyncio.ensure_future(
            queue.join(ModelId.parse(f"a/m{i}"), load, timeout_s=5, timeout_message="")
        )
        for i in (1, 2)
    ]
    await asyncio.sleep(0.01)
    told = []
    for _ in range(3):
        with pytest.raises(ModelNotReady) as refused:
            queue.refuse(ModelId.parse("b/new"))
        told.append(refused.value.retry_after_s)
    # 2 slots at 0.1 s a load: the refused come back in 0.05 s steps, not seconds apart.
    assert told == pytest.approx([0.05, 0.1, 0.15], abs=0.01)
    gate.set()
    await asyncio.gather(*pending)
