"""Admission: in-flight cap, fair hand-over of freed slots, longest-queue drop, timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
from prometheus_client import CollectorRegistry

from tenantserve.errors import Overloaded
from tenantserve.metrics import Metrics
from tenantserve.scheduling.admission import Admission


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def metrics() -> Metrics:
    registry = Metrics(CollectorRegistry())
    for tenant in ("a", "b"):
        registry.tenants.observe(tenant)
    return registry


def _rejected(metrics: Metrics, reason: str, tenant: str) -> float:
    value = metrics.registry.get_sample_value(
        "tenantserve_rejected_requests_total", {"reason": reason, "tenant": tenant}
    )
    return value or 0.0


async def _hold(admission: Admission, tenant: str, release: asyncio.Event, log: list[str]) -> None:
    async with admission.admit(tenant):
        log.append(tenant)
        await release.wait()


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as exits:
        yield exits


@pytest.mark.anyio
async def test_freed_slots_go_to_tenants_in_fair_turns(metrics: Metrics) -> None:
    admission = Admission(max_in_flight=1, max_queued=100, queue_timeout_s=30, metrics=metrics)
    order: list[str] = []
    releases = [asyncio.Event() for _ in range(6)]
    tasks = [asyncio.ensure_future(_hold(admission, "a", releases[0], order))]
    await asyncio.sleep(0)
    tasks += [asyncio.ensure_future(_hold(admission, "a", releases[i], order)) for i in (1, 2, 3)]
    await asyncio.sleep(0)
    tasks += [asyncio.ensure_future(_hold(admission, "b", releases[i], order)) for i in (4, 5)]
    await asyncio.sleep(0)
    assert admission.queued == 5
    assert admission.slots_by_tenant() == {"a": 1}
    # Free one slot at a time, releasing whoever holds it.
    for _ in range(6):
        holder = len(order) - 1
        index = [0, 1, 4, 2, 5, 3][holder]
        releases[index].set()
        for _ in range(5):
            await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["a", "a", "b", "a", "b", "a"]
    assert admission.in_flight == 0
    assert admission.queued == 0


@pytest.mark.anyio
async def test_full_queue_sheds_the_longest_queue_not_the_newcomer(metrics: Metrics) -> None:
    admission = Admission(max_in_flight=1, max_queued=3, queue_timeout_s=30, metrics=metrics)
    release = asyncio.Event()
    log: list[str] = []
    holder = asyncio.ensure_future(_hold(admission, "a", release, log))
    await asyncio.sleep(0)
    flood = [asyncio.ensure_future(_hold(admission, "a", release, log)) for _ in range(3)]
    await asyncio.sleep(0)
    assert admission.queued == 3
    newcomer = asyncio.ensure_future(_hold(admission, "b", release, log))
    await asyncio.sleep(0)
    # The flood's newest waiter was shed for the quiet tenant.
    with pytest.raises(Overloaded):
        await flood[-1]
    assert admission.queued == 3
    # Another of the flood's requests is refused outright: its own queue is the longest.
    with pytest.raises(Overloaded):
        async with admission.admit("a"):
            pass
    assert _rejected(metrics, "queue_full", "a") == 2
    assert _rejected(metrics, "queue_full", "b") == 0
    release.set()
    await asyncio.gather(holder, *flood[:-1], newcomer)
    assert log.count("b") == 1


@pytest.mark.anyio
async def test_wait_past_the_timeout_is_refused_and_counted(metrics: Metrics) -> None:
    admission = Admission(max_in_flight=1, max_queued=4, queue_timeout_s=0.01, metrics=metrics)
    release = asyncio.Event()
    holder = asyncio.ensure_future(_hold(admission, "a", release, []))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded) as refused:
        async with admission.admit("b"):
            pass
    assert refused.value.retry_after_s >= 1
    assert _rejected(metrics, "timeout", "b") == 1
    assert admission.queued == 0
    release.set()
    await holder
    assert admission.in_flight == 0


@pytest.mark.anyio
async def test_a_waiter_that_leaves_frees_its_place_and_a_handed_slot(metrics: Metrics) -> None:
    admission = Admission(max_in_flight=1, max_queued=4, queue_timeout_s=30, metrics=metrics)
    release = asyncio.Event()
    holder = asyncio.ensure_future(_hold(admission, "a", release, []))
    await asyncio.sleep(0)
    leaving = asyncio.ensure_future(_hold(admission, "b", asyncio.Event(), []))
    await asyncio.sleep(0)
    assert admission.queued == 1
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert admission.queued == 0

    # A slot handed to a waiter cancelled in the same tick is passed on, not lost.
    second = asyncio.ensure_future(_hold(admission, "b", asyncio.Event(), []))
    log: list[str] = []
    third = asyncio.ensure_future(_hold(admission, "b", release, log))
    await asyncio.sleep(0)
    release.set()
    await asyncio.sleep(0)  # the holder exits and hands its slot to `second`
    second.cancel()
    await asyncio.gather(holder, third, second, return_exceptions=True)
    assert log == ["b"]
    assert admission.in_flight == 0


@pytest.mark.anyio
async def test_a_waiter_cancelled_in_the_same_tick_is_not_shed_again(metrics: Metrics) -> None:
    # A leaving client's waiter is cancelled at once, but its task unwinds a tick later; a
    # newcomer that finds the queue full in between takes its place instead of failing.
    admission = Admission(max_in_flight=1, max_queued=2, queue_timeout_s=30, metrics=metrics)
    release = asyncio.Event()
    holder = asyncio.ensure_future(_hold(admission, "a", release, []))
    await asyncio.sleep(0)
    waiters = [asyncio.ensure_future(_hold(admission, "a", release, [])) for _ in range(2)]
    await asyncio.sleep(0)
    assert admission.queued == 2
    waiters[-1].cancel()
    release.set()
    async with admission.admit("b"):  # the queue is full in this very tick
        pass
    await asyncio.gather(holder, *waiters, return_exceptions=True)
    assert waiters[-1].cancelled()
    assert _rejected(metrics, "queue_full", "a") == _rejected(metrics, "queue_full", "b") == 0
    assert (admission.in_flight, admission.queued) == (0, 0)


@pytest.mark.anyio
async def test_would_refuse_says_so_only_when_a_newcomer_would_be_refused_at_once(
    metrics: Metrics, stack: AsyncExitStack
) -> None:
    admission = Admission(max_in_flight=1, max_queued=2, queue_timeout_s=10, metrics=metrics)
    release, log = asyncio.Event(), list[str]()
    stack.push_async_callback(_set_and_settle, release)
    holder = asyncio.ensure_future(_hold(admission, "a", release, log))
    await asyncio.sleep(0)
    assert not admission.would_refuse("a")  # the queue has room
    waiting = [asyncio.ensure_future(_hold(admission, "a", release, log)) for _ in range(2)]
    await asyncio.sleep(0)
    assert admission.would_refuse("a")  # full, and a's own queue is the longest
    assert not admission.would_refuse("b")  # b would have a's newest waiter shed for it
    assert _rejected(metrics, "queue_full", "a") == 1
    release.set()
    await asyncio.gather(holder, *waiting)


@pytest.mark.anyio
async def test_a_standing_queue_refuses_waiters_past_twice_the_target(metrics: Metrics) -> None:
    from tenantserve.scheduling.codel import CoDel

    now = [0.0]
    codel = CoDel(target_s=0.01, interval_s=0.5, clock=lambda: now[0])
    codel.observe(1.0)  # the predictors report only long waits for a whole interval
    now[0] = 0.5
    assert codel.overloaded  # and CoDel's clock stands still from here
    admission = Admission(
        max_in_flight=1, max_queued=4, queue_timeout_s=10, metrics=metrics, codel=codel
    )
    release, log = asyncio.Event(), list[str]()
    holder = asyncio.ensure_future(_hold(admission, "a", release, log))
    await asyncio.sleep(0)
    late = asyncio.ensure_future(_hold(admission, "b", release, log))
    await asyncio.sleep(0.05)  # b waits past 2 x 10 ms while the queue stands
    release.set()
    await holder
    with pytest.raises(Overloaded, match="waited too long"):
        await late
    assert _rejected(metrics, "timeout", "b") == 1


async def _set_and_settle(event: asyncio.Event) -> None:
    event.set()
    await asyncio.sleep(0)
