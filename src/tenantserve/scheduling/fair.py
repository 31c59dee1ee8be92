"""FairExecutor: a fixed pool of predict threads fed in fair turns between tenants."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from tenantserve.errors import Overloaded, PredictTimedOut, QueueTimedOut
from tenantserve.metrics import Metrics
from tenantserve.scheduling.codel import CoDel
from tenantserve.scheduling.fair_queue import FairQueue

T = TypeVar("T")
P = ParamSpec("P")

TURN_REQUESTS = 4.0
"""Predictions a backlogged tenant may start in one turn. One per turn made the busiest
tenant of a Zipf stream wait behind every other tenant for each of its requests, its p99 twice
a FIFO server's on the same load; four keep its queue moving while a tenant behind a flood
still waits for at most four of the flood's predictions (benchmarks/bench_warm.py)."""


@dataclass(eq=False, slots=True)
class _Job:
    call: Callable[[], Any]
    future: asyncio.Future[Any]
    deadline: float  # time.monotonic(); a job still queued past it is dropped, never run
    queued_since: float  # time.monotonic() its request began to queue (admission included)
    timeout_s: float = math.inf  # how long it may run once on a thread
    key: str | None = None  # what it runs (a model id): fenced while a run of it is stuck
    # On the loop, just before it takes a thread: the requests it then answers, by tenant
    # (a batch); each past the first is charged to its tenant's turns.
    prepare: Callable[[], dict[str, int]] | None = None
    counted: bool = True  # a drop counts as one rejection (a batch counts its own requests)
    judged: bool = True  # CoDel judges its wait here (a batch's ``prepare`` judges each's)
    timer: asyncio.TimerHandle | None = None
    abandoned: bool = False  # timed out; its thread is still busy with it


class FairExecutor:
    """Runs blocking calls on a fixed pool, taking queued calls from tenants in fair turns.

    At most ``workers`` calls are handed to ``pool`` at once, so the pool never queues; what
    waits, waits here, per tenant. A call whose deadline passes while it waits is dropped
    before it runs (``rejected{reason="timeout"}``); a caller that goes away (task cancelled)
    takes its call out of the queue.

    A call that runs past its ``timeout_s`` is answered with ``PredictTimedOut`` at once; a
    thread cannot be killed, so the caller stops the work (ONNX Runtime's terminate flag) and
    its thread is written off until it returns. Up to ``spare_workers`` written-off threads are
    replaced (``pool`` must have ``workers + spare_workers`` threads), so a hung run does not
    take a worker from other models; and while a run of one ``key`` is written off, further
    calls of that key are refused at once rather than given another thread to hang.
    """

    def __init__(
        self,
        pool: concurrent.futures.Executor,
        *,
        workers: int,
        metrics: Metrics,
        spare_workers: int = 0,
        codel: CoDel | None = None,
    ) -> None:
        self._pool = pool
        self._codel = codel
        self._workers = workers
        self._spare_workers = spare_workers
        self._metrics = metrics
        self._queue: FairQueue[_Job] = FairQueue(quantum=TURN_REQUESTS)
        self._running = 0  # calls on threads, written-off ones included
        self._abandoned = 0  # calls past their timeout still on threads
        self._stuck: dict[str, int] = {}  # key → its calls past their timeout still on threads

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return self._running

    @property
    def has_free_thread(self) -> bool:
        """Whether a call handed in now would start at once (nothing queued, a thread free)."""
        return not self._queue and self._free()

    def _free(self) -> bool:
        # Written-off threads do not count against ``workers``, up to the spares.
        return self._running - min(self._abandoned, self._spare_workers) < self._workers

    @property
    def abandoned(self) -> int:
        """Calls answered with a timeout whose threads have not returned yet."""
        return self._abandoned

    async def run(
        self,
        tenant: str,
        fn: Callable[P, T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn(*args, **kwargs)`` on the pool in ``tenant``'s turn; no deadline."""
        return await self.run_until(math.inf, tenant, functools.partial(fn, *args, **kwargs))

    async def run_until(
        self,
        deadline: float,
        tenant: str,
        call: Callable[[], T],
        *,
        timeout_s: float = math.inf,
        key: str | None = None,
        waited_s: float = 0.0,
        prepare: Callable[[], dict[str, int]] | None = None,
        counted: bool = True,
        judged: bool = True,
    ) -> T:
        """Run ``call`` in ``tenant``'s turn unless ``deadline`` (monotonic) passes first.

        Args:
            timeout_s: how long the call may run once it has a thread.
            key: what the call runs (a model id), for fencing a key whose run is stuck.
            waited_s: queue time the request already spent (for admission): with ``codel``,
                a call whose queue time in all passes its limit while the queue stands is
                refused at once instead of run late.
            prepare: called on the loop the moment the call is given a thread (a batch closes
                then: requests that came while it waited are in it, later ones are not); it
                returns the requests the call answers by tenant, each charged to its tenant's
                fair turns as one prediction (the call itself counts as the first of its own
                tenant's), so a batch takes no more than its share.
            counted: whether a drop is counted here as one request's rejection (a batch of
                several counts each of its requests itself).
            judged: whether CoDel judges the call's queue time here; a batch's ``prepare``
                judges each of its requests' own with :meth:`too_late` instead.
        Raises:
            Overloaded: the deadline passed while the call waited for a thread, or a call of
                ``key`` is still running past its timeout.
            PredictTimedOut: the call ran longer than ``timeout_s`` (it goes on running until
                its thread returns; stopping it is the caller's part).
        """
        if key is not None and key in self._stuck:
            raise _fenced(key, timeout_s)
        loop = asyncio.get_running_loop()
        job = _Job(
            call, loop.create_future(), deadline, time.monotonic() - waited_s, timeout_s, key,
            prepare, counted, judged,
        )  # fmt: skip
        self._queue.push(tenant, job)
        self._dispatch(loop)
        timer = None
        if not job.future.done() and math.isfinite(deadline) and self._queue.len_of(tenant):
            # Still queued: answer at the deadline, not when a thread next frees up.
            delay_s = max(0.0, deadline - time.monotonic())
            timer = loop.call_later(delay_s, self._expire, tenant, job)
        try:
            result: T = await job.future
        except asyncio.CancelledError:
            self._queue.remove(tenant, job)  # a no-op when it already runs
            raise
        finally:
            if timer is not None:
                timer.cancel()
        return result

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._free():
            if not self._queue:
                return
            tenant, job = self._queue.pop()
            if job.future.done():  # its caller went away
                continue
            now = time.monotonic()
            if now > job.deadline or (job.judged and self.too_late(tenant, now - job.queued_since)):
                self._drop(tenant, job)
                continue
            if job.key is not None and job.key in self._stuck:
                job.future.set_exception(_fenced(job.key, job.timeout_s))
                continue
            if job.prepare is not None:
                for owner, requests in job.prepare().items():
                    self._queue.charge(owner, requests - (owner == tenant))
            self._running += 1
            if math.isfinite(job.timeout_s):
                job.timer = loop.call_later(job.timeout_s, self._time_out, loop, job)
            done = self._pool.submit(job.call)
            done.add_done_callback(functools.partial(self._on_done, loop, job))

    def too_late(self, tenant: str, waited_s: float) -> bool:
        """A request of ``tenant`` leaves the queue after ``waited_s`` in all: whether it is
        too late to run (its queue, or the server's, stands and it waited past the limit)."""
        if self._codel is None:
            return False
        self._codel.observe(waited_s, tenant)
        return waited_s > self._codel.limit_s(math.inf, tenant)

    def _time_out(self, loop: asyncio.AbstractEventLoop, job: _Job) -> None:
        if job.future.done():  # answered, or its caller went away
            return
        job.abandoned = True
        self._abandoned += 1
        if job.key is not None:
            self._stuck[job.key] = self._stuck.get(job.key, 0) + 1
        what = f"model {job.key}" if job.key is not None else "the call"
        job.future.set_exception(
            PredictTimedOut(f"{what} did not answer within {job.timeout_s:g} s")
        )
        self._dispatch(loop)  # a spare thread takes the next call

    def _expire(self, tenant: str, job: _Job) -> None:
        if not job.future.done() and self._queue.remove(tenant, job):
            self._drop(tenant, job)

    def _drop(self, tenant: str, job: _Job) -> None:
        if job.counted:
            self._metrics.reject("timeout", tenant)
        job.future.set_exception(
            QueueTimedOut("request waited too long for a predict thread; retry shortly")
        )

    def _on_done(
        self,
        loop: asyncio.AbstractEventLoop,
        job: _Job,
        done: concurrent.futures.Future[Any],
    ) -> None:
        # Runs in the worker thread: hand the outcome to the loop that owns the job. When the
        # loop has closed (shutdown) nobody awaits the result.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._settle, loop, job, done)

    def _settle(
        self,
        loop: asyncio.AbstractEventLoop,
        job: _Job,
        done: concurrent.futures.Future[Any],
    ) -> None:
        self._running -= 1
        if job.timer is not None:
            job.timer.cancel()
        if job.abandoned:
            self._abandoned -= 1
            if job.key is not None:
                left = self._stuck[job.key] - 1
                if left:
                    self._stuck[job.key] = left
                else:
                    del self._stuck[job.key]
        if not job.future.done():
            if done.cancelled():
                job.future.cancel()
            elif (error := done.exception()) is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(done.result())
        self._dispatch(loop)


def _fenced(key: str, timeout_s: float) -> Overloaded:
    return Overloaded(
        f"model {key} is still running an earlier request past its timeout; retry later",
        retry_after_s=timeout_s if math.isfinite(timeout_s) else 1.0,
    )
