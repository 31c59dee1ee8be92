"""FairQueue (deficit round robin) and FairExecutor: turns, deadlines, callers that leave."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import CollectorRegistry

from tenantserve.errors import Overloaded
from tenantserve.metrics import Metrics
from tenantserve.scheduling.codel import CoDel
from tenantserve.scheduling.fair import FairExecutor
from tenantserve.scheduling.fair_queue import FairQueue


def _drain(queue: FairQueue[str]) -> list[str]:
    order = []
    while queue:
        _, item = queue.pop()
        order.append(item)
    return order


def test_flooding_tenant_waits_behind_itself() -> None:
    queue: FairQueue[str] = FairQueue()
    for i in range(6):
        queue.push("flood", f"f{i}")
    queue.push("b", "b0")
    queue.push("b", "b1")
    queue.push("c", "c0")
    assert _drain(queue) == ["f0", "b0", "c0", "f1", "b1", "f2", "f3", "f4", "f5"]


def test_a_tenant_arriving_late_gets_the_next_turn_not_the_last() -> None:
    queue: FairQueue[str] = FairQueue()
    for i in range(4):
        queue.push("flood", f"f{i}")
    assert queue.pop() == ("flood", "f0")
    queue.push("b", "b0")
    assert [queue.pop()[1] for _ in range(2)] == ["b0", "f1"]


def test_costs_are_charged_against_the_quantum() -> None:
    queue: FairQueue[str] = FairQueue(quantum=1.0)
    for i in range(3):
        queue.push("heavy", f"h{i}", cost=2.0)
        queue.push("light", f"l{i}", cost=1.0)
    # A heavy item takes two turns of credit: light is served twice per heavy item.
    assert _drain(queue) == ["l0", "h0", "l1", "l2", "h1", "h2"]


def test_remove_longest_and_pop_newest() -> None:
    queue: FairQueue[str] = FairQueue()
    items = [f"a{i}" for i in range(3)]
    for item in items:
        queue.push("a", item)
    queue.push("b", "b0")
    assert queue.longest() == ("a", 3)
    assert queue.remove("a", items[1])
    assert not queue.remove("a", items[1])
    assert queue.pop_newest("a") == "a2"
    assert queue.depths() == {"a": 1, "b": 1}
    assert len(queue) == 2
    assert queue.remove("b", "b0")
    assert queue.depths() == {"a": 1}
    assert _drain(queue) == ["a0"]
    with pytest.raises(IndexError):
        queue.pop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as executor:
        yield executor


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def _rejected(metrics: Metrics, reason: str, tenant: str) -> float:
    value = metrics.registry.get_sample_value(
        "tenantserve_rejected_requests_total", {"reason": reason, "tenant": tenant}
    )
    return value or 0.0


@pytest.mark.anyio
async def test_executor_serves_tenants_in_turns_when_saturated(
    pool: ThreadPoolExecutor, metrics: Metrics
) -> None:
    fair = FairExecutor(pool, workers=1, metrics=metrics)
    gate = threading.Event()
    ran: list[str] = []

    def job(name: str) -> str:
        if name == "first":
            gate.wait(10)
        ran.append(name)
        return name

    blocker = asyncio.ensure_future(fair.run("flood", job, "first"))
    await asyncio.sleep(0)
    flood = [asyncio.ensure_future(fair.run("flood", job, f"f{i}")) for i in range(5)]
    other = asyncio.ensure_future(fair.run("quiet", job, "q0"))
    await asyncio.sleep(0)
    assert fair.queued == 6
    assert fair.running == 1
    gate.set()
    assert await asyncio.gather(blocker, *flood, other)
    # A turn is up to TURN_REQUESTS (4) predictions: then the quiet tenant's one.
    assert ran == ["first", "f0", "f1", "f2", "f3", "q0", "f4"]


@pytest.mark.anyio
async def test_deadline_passed_while_queued_drops_and_counts(
    pool: ThreadPoolExecutor, metrics: Metrics
) -> None:
    fair = FairExecutor(pool, workers=1, metrics=metrics)
    metrics.tenants.observe("b")  # as the service does for every request
    gate = threading.Event()
    ran: list[str] = []
    blocker = asyncio.ensure_future(fair.run("a", gate.wait, 10))
    await asyncio.sleep(0)
    late = asyncio.ensure_future(
        fair.run_until(time.monotonic() - 1.0, "b", lambda: ran.append("late"))
    )
    with pytest.raises(Overloaded):
        await late  # answered by its own timer, while the thread is still busy
    assert not blocker.done()
    gate.set()
    assert await blocker
    assert ran == []
    assert _rejected(metrics, "timeout", "b") == 1


@pytest.mark.anyio
async def test_a_caller_that_leaves_takes_its_call_out_of_the_queue(
    pool: ThreadPoolExecutor, metrics: Metrics
) -> None:
    fair = FairExecutor(pool, workers=1, metrics=metrics)
    gate = threading.Event()
    ran: list[str] = []
    blocker = asyncio.ensure_future(fair.run("a", gate.wait, 10))
    await asyncio.sleep(0)
    leaving = asyncio.ensure_future(fair.run("b", ran.append, "left"))
    await asyncio.sleep(0)
    assert fair.queued == 1
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert fair.queued == 0
    gate.set()
    await blocker
    await fair.run("b", ran.append, "after")
    assert ran == ["after"]


@pytest.mark.anyio
async def test_errors_reach_the_caller(pool: ThreadPoolExecutor, metrics: Metrics) -> None:
    fair = FairExecutor(pool, workers=2, metrics=metrics)

    def boom() -> None:
        raise ValueError("model raised")

    with pytest.raises(ValueError, match="model raised"):
        await fair.run("a", boom)
    assert fair.running == 0


@pytest.mark.anyio
async def test_while_the_queue_stands_a_call_past_twice_the_target_is_refused_not_run(
    pool: ThreadPoolExecutor, metrics: Metrics
) -> None:
    now = [0.0]
    codel = CoDel(target_s=0.01, interval_s=0.5, clock=lambda: now[0])
    codel.observe(1.0)
    now[0] = 0.5  # a whole interval of long waits: the queue stands, CoDel's clock stops
    fair = FairExecutor(pool, workers=1, metrics=metrics, codel=codel)
    gate = threading.Event()
    blocker = asyncio.ensure_future(fair.run("a", gate.wait, 10))
    await asyncio.sleep(0)
    ran: list[str] = []
    fresh = asyncio.ensure_future(fair.run_until(math.inf, "b", lambda: ran.append("fresh")))
    # A request that spent 50 ms waiting for admission already: past 2 x 10 ms.
    stale = asyncio.ensure_future(
        fair.run_until(math.inf, "c", lambda: ran.append("stale"), waited_s=0.05)
    )
    await asyncio.sleep(0)
    gate.set()
    await blocker
    await fresh
    with pytest.raises(Overloaded):
        await stale
    assert ran == ["fresh"]


@pytest.mark.anyio
async def test_a_tenant_whose_own_queue_stands_is_refused_while_the_others_run_late(
    pool: ThreadPoolExecutor, metrics: Metrics
) -> None:
    now = [0.0]
    codel = CoDel(target_s=0.01, interval_s=0.5, clock=lambda: now[0])
    codel.observe(1.0, "hot")  # the hot tenant's requests waited long for a whole interval,
    codel.observe(0.0, "cold")  # the others' passed at once: the server does not stand
    now[0] = 0.5
    assert not codel.overloaded
    fair = FairExecutor(pool, workers=1, metrics=metrics, codel=codel)
    gate = threading.Event()
    blocker = asyncio.ensure_future(fair.run("a", gate.wait, 10))
    await asyncio.sleep(0)
    ran: list[str] = []
    hot = asyncio.ensure_future(
        fair.run_until(math.inf, "hot", lambda: ran.append("hot"), waited_s=0.05)
    )
    cold = asyncio.ensure_future(
        fair.run_until(math.inf, "cold", lambda: ran.append("cold"), waited_s=0.05)
    )
    await asyncio.sleep(0)
    gate.set()
    await blocker
    await cold  # as late as the hot one, but its tenant's queue does not stand: it runs
    with pytest.raises(Overloaded):
        await hot
    assert ran == ["cold"]
