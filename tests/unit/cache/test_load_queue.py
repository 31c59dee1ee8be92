"""LoadQueue with a CoDel judge: while loads stand, a slot that comes too late starts nothing."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from tenantserve.cache.load_queue import LoadQueue
from tenantserve.errors import ModelNotReady
from tenantserve.metrics import Metrics
from tenantserve.scheduling.codel import CoDel
from tenantserve.types import ModelId


def _metrics() -> Metrics:
    return Metrics(CollectorRegistry())


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.anyio
async def test_a_load_whose_slot_came_past_the_limit_is_refused_and_not_remembered() -> None:
    clock = Clock()
    judge = CoDel(target_s=0.01, interval_s=0.5, clock=clock)
    judge.observe(1.0)
    clock.now = 0.5  # a whole interval of long slot waits: the load queue stands
    metrics = _metrics()
    queue: LoadQueue[str] = LoadQueue(metrics=metrics, max_concurrent_loads=1, judge=judge)
    first, late = ModelId.parse("acme/first"), ModelId.parse("acme/late")
    gate = asyncio.Event()
    started: list[str] = []

    async def load(model_id: ModelId) -> str:
        async with queue.slot(model_id):
            started.append(model_id.value)
            if model_id == first:
                await gate.wait()
            return model_id.value

    running = asyncio.ensure_future(queue.join(first, lambda: load(first), timeout_s=5,
                                               timeout_message="late"))  # fmt: skip
    await asyncio.sleep(0)
    waiting = asyncio.ensure_future(queue.join(late, lambda: load(late), timeout_s=5,
                                               timeout_message="late"))  # fmt: skip
    await asyncio.sleep(0.05)  # past twice the target in the queue
    gate.set()
    assert await running == "acme/first"
    with pytest.raises(ModelNotReady, match=r"waited .* for a load slot"):
        await waiting
    assert started == ["acme/first"]
    refused = [
        sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == "tenantserve_rejected_requests_total"
        and sample.labels["reason"] == "load_queue_full"
    ]
    assert sum(refused) == 1
    queue.refuse(late)  # nothing failed: the next call may load it


@pytest.mark.anyio
async def test_without_a_standing_queue_a_late_slot_still_loads() -> None:
    queue: LoadQueue[str] = LoadQueue(
        metrics=_metrics(), max_concurrent_loads=1, judge=CoDel(target_s=0.01, interval_s=10)
    )
    gate = asyncio.Event()
    a, b = ModelId.parse("acme/a"), ModelId.parse("acme/b")

    async def load(model_id: ModelId) -> str:
        async with queue.slot(model_id):
            if model_id == a:
                await gate.wait()
            return model_id.value

    first = asyncio.ensure_future(queue.join(a, lambda: load(a), timeout_s=5, timeout_message=""))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(queue.join(b, lambda: load(b), timeout_s=5, timeout_message=""))
    await asyncio.sleep(0.05)
    gate.set()
    assert (await first, await second) == ("acme/a", "acme/b")
