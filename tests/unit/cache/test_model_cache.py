"""ModelCache: hits, single-flight, byte budget, eviction, failures, reload and unload (fakes)."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from tenantserve.cache import (
    Loader,
    LoadQueue,
    MemoryBudget,
    ModelCache,
    failed_loads,
    model_cache,
)
from tenantserve.errors import (
    InsufficientMemory,
    LoadFailed,
    ModelAlreadyLoaded,
    ModelNotFound,
    ModelNotReady,
    StoreUnavailable,
)
from tenantserve.metrics import Metrics
from tenantserve.runtimes import LoadedModel, Prepared, Runtime, SharedUsage
from tenantserve.store.base import LocalArtifact
from tenantserve.store.versions import ModelVersions
from tenantserve.types import ModelId, ModelManifest, Tensors, TensorSpec


class FakeModel:
    platform = "fake"
    inputs = (TensorSpec("x", "FP32", (-1,)),)
    outputs = (TensorSpec("y", "FP32", (-1,)),)

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def predict(self, tensors: Tensors) -> Tensors:
        return dict(tensors)

    def close(self) -> None:
        self.closed = True


class FakeStore:
    """Models named ``<tenant>/<size>`` take ``size`` bytes; ``broken`` fails; ``gate`` blocks.

    Ids in ``corrupt`` fail to load as if their artifact had been replaced by a broken one.
    """

    url = "fake://"

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.fetches: dict[str, int] = {}
        self.gate: threading.Event | None = None
        self.corrupt: set[str] = set()
        self.lock = threading.Lock()

    def fetch(self, model_id: ModelId) -> LocalArtifact:
        with self.lock:
            self.fetches[model_id.value] = self.fetches.get(model_id.value, 0) + 1
        if self.gate is not None:
            self.gate.wait(10)
        name = model_id.value.split("/")[-1]
        if name == "missing":
            raise ModelNotFound(f"no model {model_id}")
        if name == "broken" or model_id.value in self.corrupt:
            raise LoadFailed("not a loadable ONNX model")
        if name == "unreachable":
            raise StoreUnavailable("the model store could not be reached (timed out)")
        size = int(name)
        return LocalArtifact(model_id, self.tmp, ModelManifest(memory_hint_bytes=size), size)

    def versions(self, model_id: ModelId) -> ModelVersions | None:
        return None  # no versioned models

    def list(self, prefix: str = "") -> list[str]:
        return []

    def check(self) -> None:
        return None


class FakeRuntime:
    name = "onnx"

    def __init__(self) -> None:
        self.loaded: list[FakeModel] = []
        self.gate: threading.Event | None = None  # blocks load() until set
        self.loading = threading.Event()  # set when a load() has begun

    def warm_up(self) -> None:
        return None

    def shared_usage(self) -> SharedUsage:
        return SharedUsage()

    def shared_estimate(self, manifest: ModelManifest, artifact_path: Path) -> int:
        return 0

    def prepare(self, path: Path, manifest: ModelManifest) -> Prepared:
        return Prepared()

    def load(self, path: Path, manifest: ModelManifest) -> LoadedModel:
        self.loading.set()
        if self.gate is not None:
            self.gate.wait(10)
        model = FakeModel(str(manifest.memory_hint_bytes))
        self.loaded.append(model)
        return model


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(4)
    yield executor
    executor.shutdown(wait=True)


@pytest.fixture
def store(tmp_path: Path) -> FakeStore:
    return FakeStore(tmp_path)


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime()


def make_cache(
    store: FakeStore,
    runtime: FakeRuntime,
    pool: ThreadPoolExecutor,
    *,
    load_wait_s: float,
    failed_load_ttl_s: float = 30.0,
) -> ModelCache:
    runtimes: dict[str, Runtime] = {"onnx": runtime}
    budget, metrics = MemoryBudget(100 * MB), Metrics()
    return ModelCache(
        loader=Loader(
            store=store, runtimes=runtimes, budget=budget, metrics=metrics, io_executor=pool,
            load_executor=pool,
        ),
        queue=LoadQueue(metrics=metrics, failed_load_ttl_s=failed_load_ttl_s),
        budget=budget, metrics=metrics, load_wait_s=load_wait_s,
    )  # fmt: skip


@pytest.fixture
async def cache(
    store: FakeStore, runtime: FakeRuntime, pool: ThreadPoolExecutor
) -> AsyncIterator[ModelCache]:
    # The budget here is in "fake bytes": measured sizes fall back to the artifact's nbytes
    # because a fake model grows RSS by ~0, so real-sized budgets keep the arithmetic exact.
    cache = make_cache(store, runtime, pool, load_wait_s=5, failed_load_ttl_s=60)
    yield cache
    await cache.close()


MB = 1_000_000


def mid(raw: str) -> ModelId:
    return ModelId.parse(raw)


def size_id(tenant: str, mb: int) -> ModelId:
    return mid(f"{tenant}/{mb * MB}")


@pytest.mark.anyio
async def test_first_call_loads_then_hits(cache: ModelCache, store: FakeStore) -> None:
    for _ in range(3):
        async with cache.lease(size_id("a", 10)) as model:
            assert model.predict({"x": 1}) == {"x": 1}  # type: ignore[dict-item]
    assert store.fetches == {f"a/{10 * MB}": 1}
    assert cache.snapshot().loaded_models == 1
    assert cache.snapshot().used_bytes >= 10 * MB
    # The load's time in its slot is exported (the planner's profile reads it under traffic).
    registry = cache._metrics.registry
    assert registry.get_sample_value("tenantserve_model_load_slot_seconds_count") == 1
    assert (registry.get_sample_value("tenantserve_model_load_slot_seconds_sum") or 0) > 0


@pytest.mark.anyio
async def test_concurrent_first_calls_share_one_load(cache: ModelCache, store: FakeStore) -> None:
    store.gate = threading.Event()

    async def call() -> None:
        async with cache.lease(size_id("a", 5)):
            pass

    tasks = [asyncio.create_task(call()) for _ in range(20)]
    await asyncio.sleep(0.05)
    store.gate.set()
    await asyncio.gather(*tasks)
    assert store.fetches == {f"a/{5 * MB}": 1}


@pytest.mark.anyio
async def test_lru_eviction_keeps_within_budget(cache: ModelCache, runtime: FakeRuntime) -> None:
    for tenant in "abcdef":  # 6 x 30 MB into 100 MB
        async with cache.lease(size_id(tenant, 30)):
            assert cache.snapshot().used_bytes <= 100 * MB
    await asyncio.sleep(0.05)  # let eviction close tasks run
    resident = {s.model_id for s in cache.status()}
    assert resident == {f"{t}/{30 * MB}" for t in "def"}
    assert sum(m.closed for m in runtime.loaded) == 3
    assert cache.snapshot().used_bytes == 90 * MB


@pytest.mark.anyio
async def test_recently_used_model_survives(cache: ModelCache) -> None:
    for tenant in "abc":
        async with cache.lease(size_id(tenant, 30)):
            pass
    async with cache.lease(size_id("a", 30)):  # a is now the most recent
        pass
    async with cache.lease(size_id("d", 30)):
        pass
    resident = {s.model_id for s in cache.status()}
    assert f"a/{30 * MB}" in resident
    assert f"b/{30 * MB}" not in resident


@pytest.mark.anyio
async def test_pinned_model_is_never_evicted(cache: ModelCache) -> None:
    await cache.load(size_id("pinned", 40), pin=True)
    for tenant in "abcdefgh":
        async with cache.lease(size_id(tenant, 30)):
            pass
    assert cache.is_resident(size_id("pinned", 40))
    assert cache.snapshot().pinned_bytes == 40 * MB


@pytest.mark.anyio
async def test_leased_model_is_never_evicted(cache: ModelCache) -> None:
    busy = size_id("busy", 60)
    async with cache.lease(busy):
        # Needs busy's bytes to fit: the load must wait for the lease, not evict it.
        load = asyncio.create_task(cache.load(size_id("b", 60)))
        await asyncio.sleep(0.1)
        assert cache.is_resident(busy)
        assert not load.done()
    await load
    assert not cache.is_resident(busy)
    assert cache.is_resident(size_id("b", 60))


@pytest.mark.anyio
async def test_model_larger_than_budget_fails_fast_and_evicts_nothing(cache: ModelCache) -> None:
    async with cache.lease(size_id("a", 30)):
        pass
    with pytest.raises(InsufficientMemory, match="whole memory budget"):
        await cache.load(size_id("huge", 101))
    assert cache.is_resident(size_id("a", 30))


@pytest.mark.anyio
async def test_budget_full_of_pins_gives_insufficient_memory(cache: ModelCache) -> None:
    await cache.load(size_id("a", 60), pin=True)
    with pytest.raises(InsufficientMemory, match="pinned or busy"):
        await cache.load(size_id("b", 50))


@pytest.mark.anyio
async def test_failed_load_reaches_every_waiter_and_is_remembered(
    cache: ModelCache, store: FakeStore
) -> None:
    store.gate = threading.Event()
    broken = mid("a/broken")

    async def call() -> None:
        async with cache.lease(broken):
            pass

    tasks = [asyncio.create_task(call()) for _ in range(5)]
    await asyncio.sleep(0.05)
    store.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, LoadFailed) for r in results)
    with pytest.raises(LoadFailed):
        await call()
    assert store.fetches == {"a/broken": 1}  # the second call was answered from memory
    assert not cache.is_resident(broken)
    assert cache.snapshot().used_bytes == 0
    with pytest.raises(LoadFailed):  # an explicit load retries at once
        await cache.load(broken)
    assert store.fetches == {"a/broken": 2}


@pytest.mark.anyio
async def test_a_store_outage_is_remembered_briefly_and_retry_after_says_how_long(
    cache: ModelCache, store: FakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cache remembers failed loads for 60 s; an outage of the store only for seconds.
    unreachable = mid("a/unreachable")
    with pytest.raises(StoreUnavailable):
        await cache.load(unreachable, exist_ok=True)
    now = time.monotonic()
    with pytest.raises(StoreUnavailable) as remembered:
        async with cache.lease(unreachable):
            pass
    assert store.fetches == {"a/unreachable": 1}
    assert 0 < remembered.value.retry_after_s <= 5.0
    # The cache's own clock only (the event loop keeps the real one).
    later = SimpleNamespace(monotonic=lambda: now + 5.1, perf_counter=time.perf_counter)
    monkeypatch.setattr(model_cache, "time", later)
    monkeypatch.setattr(failed_loads, "time", later)
    with pytest.raises(StoreUnavailable):  # tried again: the store is asked once more
        async with cache.lease(unreachable):
            pass
    assert store.fetches == {"a/unreachable": 2}


@pytest.mark.anyio
async def test_refuse_early_says_at_once_what_a_lease_would_refuse(
    cache: ModelCache, store: FakeStore
) -> None:
    resident, broken = mid("a/1000"), mid("a/broken")
    await cache.load(resident)
    cache.refuse_early(resident)
    cache.refuse_early(broken)  # never tried: it may well load
    with pytest.raises(LoadFailed):
        await cache.load(broken)
    with pytest.raises(LoadFailed):  # remembered: refused before any request body is read
        cache.refuse_early(broken)
    assert store.fetches["a/broken"] == 1


@pytest.mark.anyio
async def test_slow_load_past_wait_limit_is_not_ready(
    store: FakeStore, runtime: FakeRuntime, pool: ThreadPoolExecutor
) -> None:
    cache = make_cache(store, runtime, pool, load_wait_s=0.05)
    store.gate = threading.Event()
    with pytest.raises(ModelNotReady):
        async with cache.lease(size_id("a", 1)):
            pass
    store.gate.set()
    async with cache.lease(size_id("a", 1)):  # the load went on without the waiter
        pass
    assert store.fetches == {f"a/{MB}": 1}
    await cache.close()


@pytest.mark.anyio
async def test_unload_waits_for_in_flight_request(cache: ModelCache, runtime: FakeRuntime) -> None:
    model_id = size_id("a", 10)
    async with cache.lease(model_id) as model:
        await cache.unload(model_id)
        assert not cache.is_resident(model_id)
        assert isinstance(model, FakeModel)
        assert not model.closed  # still serving the request that holds it
        assert cache.snapshot().used_bytes == 10 * MB
    assert runtime.loaded[0].closed
    assert cache.snapshot().used_bytes == 0


@pytest.mark.anyio
async def test_management_errors(cache: ModelCache) -> None:
    with pytest.raises(ModelNotFound):
        await cache.unload(size_id("a", 1))
    with pytest.raises(ModelNotFound):
        cache.pin(size_id("a", 1))
    await cache.load(size_id("a", 1))
    with pytest.raises(ModelAlreadyLoaded):
        await cache.load(size_id("a", 1), exist_ok=False)
    with pytest.raises(ModelNotFound):
        await cache.load(mid("a/missing"))


@pytest.mark.anyio
async def test_a_lease_never_hands_out_a_closed_model_under_churn(
    cache: ModelCache, runtime: FakeRuntime
) -> None:
    # Three 40 MB models in a 100 MB budget, called at once in a random order: loads evict
    # models whose waiters have not resumed yet; no lease may get one of those.
    rng = random.Random(5)
    order = [size_id(t, 40) for t in "abc"] * 30
    rng.shuffle(order)
    handed_closed = 0

    async def call(model_id: ModelId) -> None:
        nonlocal handed_closed
        async with cache.lease(model_id) as model:
            assert isinstance(model, FakeModel)
            handed_closed += model.closed
            await asyncio.sleep(0)

    await asyncio.gather(*(call(m) for m in order), return_exceptions=True)
    assert handed_closed == 0
    assert cache.snapshot().used_bytes <= 100 * MB


@pytest.mark.anyio
async def test_reload_loads_beside_the_old_copy_and_swaps_once_loaded(
    cache: ModelCache, runtime: FakeRuntime
) -> None:
    model_id = size_id("a", 10)
    await cache.load(model_id, pin=True)
    old = runtime.loaded[0]
    runtime.gate = threading.Event()
    runtime.loading.clear()
    async with cache.lease(model_id) as in_flight:
        reload = asyncio.create_task(cache.load(model_id, reload=True))
        await asyncio.to_thread(runtime.loading.wait, 5)
        # Both copies are counted while the new one loads; requests still get the old one.
        assert cache.snapshot().used_bytes == 20 * MB
        async with cache.lease(model_id) as meanwhile:
            assert meanwhile is old
        runtime.gate.set()
        await reload
        new = runtime.loaded[1]
        async with cache.lease(model_id) as after:
            assert after is new
        assert in_flight is old
        assert not old.closed  # the request that holds it still runs on it
        assert cache.snapshot().used_bytes == 20 * MB
    assert old.closed
    assert not new.closed
    assert cache.snapshot().used_bytes == 10 * MB
    assert cache.snapshot().pinned_bytes == 10 * MB  # the pin moved to the new copy
    assert cache.snapshot().loaded_models == 1


@pytest.mark.anyio
async def test_a_failed_reload_raises_and_leaves_the_old_copy_serving(
    cache: ModelCache, store: FakeStore, runtime: FakeRuntime
) -> None:
    model_id = size_id("a", 10)
    await cache.load(model_id)
    store.corrupt.add(model_id.value)
    with pytest.raises(LoadFailed, match="not a loadable"):
        await cache.load(model_id, reload=True)
    async with cache.lease(model_id) as model:
        assert model is runtime.loaded[0]
        assert not runtime.loaded[0].closed
    assert len(runtime.loaded) == 1
    assert cache.snapshot().used_bytes == 10 * MB


@pytest.mark.anyio
async def test_a_reload_that_cannot_fit_beside_the_old_copy_fails_fast(
    cache: ModelCache, runtime: FakeRuntime
) -> None:
    model_id = size_id("a", 60)  # two copies need 120 MB of the 100 MB budget
    await cache.load(model_id)
    with pytest.raises(InsufficientMemory, match="beside its resident copy"):
        await asyncio.wait_for(cache.load(model_id, reload=True), 2)  # not load_wait_s
    assert cache.is_resident(model_id)
    assert not runtime.loaded[0].closed
    assert cache.snapshot().used_bytes == 60 * MB


@pytest.mark.anyio
async def test_a_reload_evicts_other_models_but_never_the_old_copy(cache: ModelCache) -> None:
    model_id = size_id("a", 40)
    await cache.load(model_id)
    await cache.load(size_id("b", 40))
    await cache.load(model_id, reload=True)  # 40 + 40 + 40 > 100: b makes room
    assert cache.is_resident(model_id)
    assert not cache.is_resident(size_id("b", 40))
    for _ in range(200):  # the replaced copy closes on a task of its own
        if cache.snapshot().used_bytes == 40 * MB:
            break
        await asyncio.sleep(0.01)
    assert cache.snapshot().used_bytes == 40 * MB


@pytest.mark.anyio
async def test_load_without_reload_leaves_a_resident_model_as_it_is(
    cache: ModelCache, store: FakeStore
) -> None:
    model_id = size_id("a", 10)
    await cache.load(model_id)
    await cache.load(model_id)
    assert store.fetches == {model_id.value: 1}
    with pytest.raises(ModelAlreadyLoaded):  # the SageMaker container API's 409
        await cache.load(model_id, exist_ok=False, reload=True)


@pytest.mark.anyio
async def test_requests_during_an_unload_are_told_to_retry_until_it_closes(
    cache: ModelCache, store: FakeStore, runtime: FakeRuntime
) -> None:
    model_id = size_id("a", 10)
    async with cache.lease(model_id):
        await cache.unload(model_id)
        with pytest.raises(ModelNotReady, match="being unloaded"):
            async with cache.lease(model_id):
                pass
        assert store.fetches == {model_id.value: 1}  # no second copy beside the closing one
    assert runtime.loaded[0].closed
    async with cache.lease(model_id) as model:  # once closed, a call loads it again
        assert model is runtime.loaded[1]
    assert store.fetches == {model_id.value: 2}


@pytest.mark.anyio
async def test_a_victim_is_closed_on_its_evictor_s_load_thread_just_before_that_load(
    cache: ModelCache, runtime: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with cache.lease(size_id("a", 60)):
        pass
    victim = runtime.loaded[0]
    closed_on: list[int] = []
    monkeypatch.setattr(victim, "close", lambda: closed_on.append(threading.get_ident()))
    seen: list[tuple[bool, int]] = []
    load = runtime.load

    def watched(path: Path, manifest: ModelManifest) -> LoadedModel:
        seen.append((bool(closed_on), threading.get_ident()))
        return load(path, manifest)

    monkeypatch.setattr(runtime, "load", watched)
    async with cache.lease(size_id("b", 60)):
        pass
    # One executor call: the victim closed first, on the thread that then loaded.
    assert seen == [(True, closed_on[0])]
    assert not cache.is_resident(size_id("a", 60))
    assert cache.snapshot().used_bytes == 60 * MB
