"""Sizes without a lock: a mapped model's size is its file plus an overhead learned once per
shape; loads of known size run side by side; nothing trims on a load's or a close's way."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tenantserve import memory
from tenantserve.cache import Loader, LoadQueue, MemoryBudget, ModelCache
from tenantserve.cache.sizes import MeasureLock
from tenantserve.cache.trimmer import HeapTrimmer
from tenantserve.metrics import Metrics
from tenantserve.runtimes import LoadedModel, Prepared, Runtime, SharedUsage
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


class _Store:
    """``<tenant>/<name>-<megabytes>``: a model whose file takes that many MB (also said in its
    manifest's hint, where the fake runtime reads it)."""

    url = "fake://"

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    def fetch(self, model_id: ModelId) -> LocalArtifact:
        size = int(model_id.value.rsplit("-", 1)[1]) * MB
        return LocalArtifact(model_id, self.tmp, ModelManifest(memory_hint_bytes=size), size)

    def versions(self, model_id: ModelId) -> ModelVersions | None:
        return None  # no versioned models

    def list(self, prefix: str = "") -> list[str]:
        return []

    def check(self) -> None:
        return None


class _MappedRuntime:
    """Says each model maps its whole file; all models are of one shape."""

    name = "onnx"

    def __init__(self) -> None:
        self.active = 0
        self.most_at_once = 0
        self.hold_s = 0.0
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        return None

    def shared_usage(self) -> SharedUsage:
        return SharedUsage()

    def shared_estimate(self, manifest: ModelManifest, artifact_path: Path) -> int:
        return 0

    def prepare(self, path: Path, manifest: ModelManifest) -> Prepared:
        return Prepared(mapped_bytes=manifest.memory_hint_bytes, shape="s")

    def load(self, path: Path, manifest: ModelManifest) -> LoadedModel:
        with self._lock:
            self.active += 1
            self.most_at_once = max(self.most_at_once, self.active)
        time.sleep(self.hold_s)
        with self._lock:
            self.active -= 1
        return _Model()


class _HeldRuntime(_MappedRuntime):
    """Says what each model will hold (plain arrays): nothing to measure."""

    def prepare(self, path: Path, manifest: ModelManifest) -> Prepared:
        return Prepared(held_bytes=manifest.memory_hint_bytes)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(4)
    yield executor
    executor.shutdown(wait=True)


def _cache(tmp: Path, runtime: Runtime, pool: ThreadPoolExecutor) -> ModelCache:
    budget, metrics = MemoryBudget(1000 * MB), Metrics()
    loader = Loader(
        store=_Store(tmp), runtimes={"onnx": runtime}, budget=budget, metrics=metrics,
        io_executor=pool, load_executor=pool,
    )  # fmt: skip
    return ModelCache(
        loader=loader, queue=LoadQueue(metrics=metrics, max_concurrent_loads=4), budget=budget,
        metrics=metrics,
    )  # fmt: skip


def test_a_measurement_waits_for_shared_holders_and_goes_before_later_ones() -> None:
    lock = MeasureLock()
    order: list[str] = []
    with lock.shared(), lock.shared():  # two at once
        alone = threading.Thread(target=lambda: _hold(lock.alone, order, "alone"))
        alone.start()
        time.sleep(0.05)
        later = threading.Thread(target=lambda: _hold(lock.shared, order, "later"))
        later.start()
        time.sleep(0.05)
        assert order == []  # the measurement waits for both, the later load behind it
    alone.join(5)
    later.join(5)
    assert order == ["alone", "later"]


def _hold(take: object, order: list[str], name: str) -> None:
    with take():  # type: ignore[operator]
        order.append(name)


@pytest.mark.anyio
async def test_a_mapped_model_holds_its_file_and_an_overhead_learned_once_per_shape(
    tmp_path: Path, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    trims: list[float] = []
    monkeypatch.setattr(memory, "trim", lambda: trims.append(time.monotonic()))
    runtime = _MappedRuntime()
    cache = _cache(tmp_path, runtime, pool)
    await cache.start()
    for name in ("a/m-3", "b/m-5"):
        async with cache.lease(ModelId.parse(name)):
            pass
    sizes = {s.model_id: s.nbytes for s in cache.status()}
    overhead = sizes["a/m-3"] - 3 * MB
    assert overhead >= 0
    assert sizes["b/m-5"] == 5 * MB + overhead  # the same shape: the same overhead, unmeasured
    assert len(trims) == 3  # start-up, and both sides of the one measurement
    await cache.unload(ModelId.parse("a/m-3"))
    assert len(trims) == 3  # a close does not trim
    await cache.close()


@pytest.mark.anyio
async def test_loads_of_known_size_run_side_by_side(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    runtime = _MappedRuntime()
    cache = _cache(tmp_path, runtime, pool)
    await cache.start()
    async with cache.lease(ModelId.parse("a/first-1")):  # the shape's one measured load
        pass
    runtime.hold_s = 0.2

    async def call(name: str) -> None:
        async with cache.lease(ModelId.parse(name)):
            pass

    await asyncio.gather(*(call(f"t{i}/m-1") for i in range(4)))
    assert runtime.most_at_once >= 3  # four load slots, four threads
    await cache.close()


def test_the_heap_is_trimmed_in_the_background_once_enough_was_freed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trimmed = threading.Event()
    monkeypatch.setattr(memory, "trim", trimmed.set)
    trimmer = HeapTrimmer(MeasureLock(), threshold_bytes=10 * MB)
    trimmer.start()
    trimmer.freed(6 * MB)
    assert not trimmed.wait(0.1)
    trimmer.freed(6 * MB)
    assert trimmed.wait(5)
    trimmer.close()
    assert trimmer.trims == 1


@pytest.mark.anyio
async def test_a_model_whose_runtime_says_what_it_holds_is_charged_that_unmeasured(
    tmp_path: Path, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    trims: list[float] = []
    monkeypatch.setattr(memory, "trim", lambda: trims.append(time.monotonic()))
    cache = _cache(tmp_path, _HeldRuntime(), pool)
    await cache.start()
    for name in ("a/m-3", "b/m-5"):
        async with cache.lease(ModelId.parse(name)):
            pass
    assert {s.model_id: s.nbytes for s in cache.status()} == {"a/m-3": 3 * MB, "b/m-5": 5 * MB}
    assert len(trims) == 1  # start-up only: no load was measured
    await cache.close()
