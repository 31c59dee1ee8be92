"""FairExecutor past a call's timeout: caller answered, a spare serves others, the key fenced."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import CollectorRegistry

from tenantserve.errors import Overloaded, PredictTimedOut
from tenantserve.metrics import Metrics
from tenantserve.scheduling.executor import BoundedExecutor
from tenantserve.scheduling.fair import FairExecutor

# Long enough that a call is seen running first, short enough to keep the tests quick.
TIMEOUT_S = 0.2


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as executor:  # one worker and one spare
        yield executor


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # never leave a pool thread blocked behind a failed test


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


async def _until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.anyio
async def test_a_call_past_its_timeout_is_answered_while_a_spare_serves_others(
    pool: ThreadPoolExecutor, gate: threading.Event, metrics: Metrics
) -> None:
    fair = FairExecutor(pool, workers=1, spare_workers=1, metrics=metrics)
    with pytest.raises(PredictTimedOut, match=r"model t/hung did not answer within 0.2 s"):
        await fair.run_until(math.inf, "t", lambda: gate.wait(10), timeout_s=TIMEOUT_S,
                             key="t/hung")  # fmt: skip
    assert fair.abandoned == 1
    assert fair.running == 1  # its thread is still held
    # Another model is served on the spare while the hung call still holds the worker.
    assert await fair.run_until(math.inf, "u", lambda: "ok", key="u/fine") == "ok"
    gate.set()
    await _until(lambda: fair.running == 0)
    assert fair.abandoned == 0


@pytest.mark.anyio
async def test_a_key_with_a_run_past_its_timeout_is_fenced_until_that_run_returns(
    pool: ThreadPoolExecutor, gate: threading.Event, metrics: Metrics
) -> None:
    fair = FairExecutor(pool, workers=1, spare_workers=1, metrics=metrics)
    with pytest.raises(PredictTimedOut):
        await fair.run_until(math.inf, "t", lambda: gate.wait(10), timeout_s=TIMEOUT_S,
                             key="t/hung")  # fmt: skip
    ran: list[str] = []
    with pytest.raises(Overloaded, match="still running an earlier request") as fenced:
        await fair.run_until(math.inf, "t", lambda: ran.append("again"), timeout_s=TIMEOUT_S,
                             key="t/hung")  # fmt: skip
    assert fenced.value.retry_after_s == TIMEOUT_S
    assert ran == []  # refused without a thread
    gate.set()
    await _until(lambda: fair.abandoned == 0)
    await fair.run_until(math.inf, "t", lambda: ran.append("after"), key="t/hung")
    assert ran == ["after"]


@pytest.mark.anyio
async def test_without_spares_a_written_off_thread_still_counts(
    pool: ThreadPoolExecutor, gate: threading.Event, metrics: Metrics
) -> None:
    fair = FairExecutor(pool, workers=1, spare_workers=0, metrics=metrics)
    with pytest.raises(PredictTimedOut):
        await fair.run_until(math.inf, "t", lambda: gate.wait(10), timeout_s=TIMEOUT_S,
                             key="t/hung")  # fmt: skip
    waiting = asyncio.ensure_future(fair.run_until(math.inf, "u", lambda: "ok", key="u/m"))
    await asyncio.sleep(0)  # dispatch is synchronous: a thread would have been handed it
    assert fair.queued == 1  # the pool is never handed more than workers + spares
    assert not waiting.done()
    gate.set()
    assert await waiting == "ok"


@pytest.mark.anyio
async def test_the_timeout_counts_time_on_a_thread_not_time_queued(
    pool: ThreadPoolExecutor, metrics: Metrics
) -> None:
    fair = FairExecutor(pool, workers=1, metrics=metrics)
    first = asyncio.ensure_future(
        fair.run_until(math.inf, "a", lambda: time.sleep(3 * TIMEOUT_S), timeout_s=10)
    )
    await _until(lambda: fair.running == 1)
    # Queued behind ``first`` for longer than its own timeout, then quick on its thread.
    second = await fair.run_until(math.inf, "b", lambda: "done", timeout_s=TIMEOUT_S)
    assert second == "done"
    await first


def test_spare_compute_threads_start_only_when_needed() -> None:
    executor = BoundedExecutor(
        compute_threads=1, load_threads=1, io_threads=1, spare_compute_threads=3
    )
    try:
        for _ in range(20):
            executor.compute.submit(time.sleep, 0).result()
        names = [t.name for t in threading.enumerate() if t.name.startswith("ts-predict")]
        assert len(names) == 1  # one at a time never starts a second thread
    finally:
        assert executor.shutdown(timeout_s=5)


def test_shutdown_gives_up_on_a_thread_that_does_not_finish(gate: threading.Event) -> None:
    executor = BoundedExecutor(compute_threads=1, load_threads=1, io_threads=1)
    executor.load.submit(gate.wait, 10)
    queued = executor.load.submit(lambda: None)
    started = time.monotonic()
    assert not executor.shutdown(timeout_s=0.2)
    assert time.monotonic() - started < 5  # bounded by the timeout, not by the stuck thread
    assert queued.cancelled()  # queued work is dropped, never run
