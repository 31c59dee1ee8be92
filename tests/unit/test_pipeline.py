"""The pipeline with fakes for the cache and the model: what a Call takes, holds and gives back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, cast

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from tenantserve.activity import Activity
from tenantserve.cache.model_cache import ModelCache
from tenantserve.errors import InvalidInput, TenantLimitExceeded
from tenantserve.metrics import Metrics
from tenantserve.pipeline import Pipeline
from tenantserve.scheduling.admission import Admission
from tenantserve.scheduling.batcher import Batcher
from tenantserve.scheduling.executor import BoundedExecutor
from tenantserve.scheduling.fair import FairExecutor
from tenantserve.scheduling.tenant_limits import TenantLimit, TenantLimits, TenantQuotas
from tenantserve.types import ModelId, ModelRef, ResolvedModel, Tensors, TensorSpec

X = {"x": np.ones((1, 2), np.float32)}


class Doubler:
    """A model: ``y = 2 x``."""

    platform = "fake"
    inputs = (TensorSpec("x", "FP32", (-1, 2)),)
    outputs = (TensorSpec("y", "FP32", (-1, 2)),)

    def predict(self, tensors: Tensors) -> Tensors:
        return {"y": tensors["x"] * 2}


class FakeCache:
    """Resident models answer at once; others load when ``loaded`` is set."""

    def __init__(self, resident: set[str]) -> None:
        self.resident = set(resident)
        self.loaded = asyncio.Event()
        self.resolved: list[str] = []  # what went to the version table
        self.unread: set[str] = set()  # models whose versions were never read
        self.reading = 0  # first reads of the tenant's versions under way
        self.full = False  # the load queue takes no new load of the tenant
        self.refused_unread: list[tuple[str, int]] = []

    async def resolve(self, ref: ModelRef) -> ResolvedModel:
        """The version table: ``@<v>`` names the version's own folder."""
        self.resolved.append(str(ref))
        if ref.selector:
            key = ModelId.parse(f"{ref.model_id}/{ref.selector}")
            return ResolvedModel(ref.model_id, ref.selector, key)
        return ResolvedModel.unversioned(ref.model_id)

    def is_resident(self, model_id: ModelId) -> bool:
        return model_id.value in self.resident

    def knows(self, model_id: ModelId) -> bool:
        return model_id.value not in self.unread

    def first_reads(self, tenant: str) -> int:
        return self.reading

    def refuse_unread(self, model_id: ModelId, starting: int = 0) -> None:
        self.refused_unread.append((model_id.value, starting))
        if self.full:
            raise TenantLimitExceeded("tenant acme has 2 model loads pending", retry_after_s=1.0)

    def refuse_early(self, model_id: ModelId) -> None:
        return None

    def labels_of(self, model_id: ModelId) -> None:
        return None

    @asynccontextmanager
    async def lease(self, model_id: ModelId, *, counted: bool = True) -> AsyncIterator[Doubler]:
        if model_id.value not in self.resident:
            await self.loaded.wait()
            self.resident.add(model_id.value)
        yield Doubler()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as executor:
        yield executor


def _pipeline(cache: FakeCache, pool: ThreadPoolExecutor, limits: TenantLimits) -> Pipeline:
    metrics = Metrics(CollectorRegistry())
    return Pipeline(
        quotas=TenantQuotas(limits, metrics=metrics),
        admission=Admission(max_in_flight=1, max_queued=4, queue_timeout_s=10, metrics=metrics),
        cache=cast(ModelCache, cache),
        batcher=Batcher(FairExecutor(pool, workers=1, metrics=metrics), metrics=metrics),
        executor=cast(BoundedExecutor, None),  # nothing here runs off the loop
        activity=Activity(),
        metrics=metrics,
        versions=cache,
    )


def _in_flight(pipeline: Pipeline) -> Any:
    return pipeline.metrics.registry.get_sample_value("tenantserve_requests_in_flight")


@pytest.mark.anyio
async def test_a_call_answers_with_its_outputs_and_whether_it_was_a_hit(
    pool: ThreadPoolExecutor,
) -> None:
    pipeline = _pipeline(FakeCache({"acme/m"}), pool, TenantLimits())
    async with pipeline.call(ModelRef.parse("acme/m")) as call:
        assert _in_flight(pipeline) == 1
        prediction = await call.predict(lambda inputs: X, outputs=["y"])
    assert prediction.hit
    np.testing.assert_array_equal(prediction.outputs["y"], X["x"] * 2)
    assert _in_flight(pipeline) == 0
    assert pipeline.in_flight == {}
    async with pipeline.call(ModelRef.parse("acme/m")) as call:
        with pytest.raises(InvalidInput, match="unknown output 'z'"):
            await call.predict(lambda inputs: X, outputs=["z"])


@pytest.mark.anyio
async def test_a_request_waiting_for_its_load_holds_no_slot_and_a_hit_goes_by(
    pool: ThreadPoolExecutor,
) -> None:
    cache = FakeCache({"acme/hot"})
    pipeline = _pipeline(cache, pool, TenantLimits())  # one admission slot in all

    async def one(model: str) -> bool:
        async with pipeline.call(ModelRef.parse(model)) as call:
            return (await call.predict(lambda inputs: X)).hit

    cold = asyncio.ensure_future(one("acme/cold"))
    await asyncio.sleep(0.01)
    assert pipeline.admission.in_flight == 0  # its slot given back while it waits
    assert await asyncio.wait_for(one("acme/hot"), 5)  # served meanwhile, with the one slot
    assert not cold.done()
    cache.loaded.set()
    assert not await cold  # a miss: loaded for it
    assert pipeline.admission.in_flight == 0
    assert _in_flight(pipeline) == 0


@pytest.mark.anyio
async def test_a_refused_call_holds_nothing(pool: ThreadPoolExecutor) -> None:
    limits = TenantLimits(TenantLimit(max_concurrent=1))
    pipeline = _pipeline(FakeCache({"acme/m"}), pool, limits)
    async with pipeline.call(ModelRef.parse("acme/m")):
        with pytest.raises(TenantLimitExceeded):
            async with pipeline.call(ModelRef.parse("acme/m")):
                pass
        assert pipeline.admission.in_flight == 1  # the first call's slot only
    assert pipeline.admission.in_flight == 0
    assert pipeline.in_flight == {}


@pytest.mark.anyio
async def test_a_warm_unversioned_call_skips_the_version_table_and_others_use_it(
    pool: ThreadPoolExecutor,
) -> None:
    cache = FakeCache({"acme/m", "acme/v/2"})
    pipeline = _pipeline(cache, pool, TenantLimits())
    async with pipeline.call(ModelRef.parse("acme/m")) as call:
        assert call.model == ResolvedModel.unversioned(ModelId.parse("acme/m"))
    assert cache.resolved == []  # resident: no version read
    async with pipeline.call(ModelRef.parse("acme/v@2")) as call:
        assert (call.model.version, call.model.key.value) == ("2", "acme/v/2")
        assert (await call.predict(X)).hit  # the version's own entry, resident
    assert cache.resolved == ["acme/v@2"]


@pytest.mark.anyio
async def test_a_first_call_the_load_queue_would_refuse_is_refused_before_its_versions_are_read(
    pool: ThreadPoolExecutor,
) -> None:
    cache = FakeCache(set())
    cache.unread = {"acme/new", "acme/other"}
    cache.reading, cache.full = 3, True
    pipeline = _pipeline(cache, pool, TenantLimits())
    with pytest.raises(TenantLimitExceeded):
        async with pipeline.call(ModelRef.parse("acme/new")):
            pass
    assert cache.resolved == []  # no store trip for a call refused anyway
    assert cache.refused_unread == [("acme/new", 3)]  # the tenant's first reads count
    assert pipeline.activity.snapshot().totals.rejected == 1  # counted like any refusal
    assert pipeline.in_flight == {}
    # With room, a first call reads its versions; a model read before is not asked again.
    cache.full = False
    cache.loaded.set()
    async with pipeline.call(ModelRef.parse("acme/other")) as call:
        assert not (await call.predict(X)).hit
    cache.unread.clear()
    async with pipeline.call(ModelRef.parse("acme/v@2")):
        pass
    assert cache.resolved == ["acme/other", "acme/v@2"]
    assert [m for m, _ in cache.refused_unread] == ["acme/new", "acme/other"]
