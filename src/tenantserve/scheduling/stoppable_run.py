"""StoppableRun: one prediction (or one batch of them) handed to a compute thread, stoppable,
and known when it ends."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from prometheus_client import Histogram

from tenantserve.errors import PredictFailed
from tenantserve.runtimes.run_stop import RunStop

T = TypeVar("T")


class StoppableRun(Generic[T]):
    """``work()`` (a model's predict, or a batch's) as a call for the predict pool.

    The loop may :meth:`stop` it (the caller left, or it ran past its timeout): a run not yet
    started never starts, one running is told to stop (ONNX Runtime's terminate flag). Its
    thread may still hold the model a moment after; :meth:`stop` then returns a future that
    completes when it lets go, so the model is not closed under it. Only a stopped run wakes
    the loop when it ends: a finished run's answer already comes back through the pool's
    future, so the common path crosses threads once.
    """

    __slots__ = ("_done", "_lock", "_loop", "_released", "_started", "_stop", "_timer", "_work")

    def __init__(self, work: Callable[[], T], timer: Histogram) -> None:
        self._work = work
        self._timer = timer
        self._stop = RunStop()
        self._lock = threading.Lock()  # orders "started" and "done" against "stopped"
        self._started = False
        self._done = False
        self._released: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()

    def __call__(self) -> T:
        """On the compute thread."""
        with self._lock:
            if self._stop.stopped:  # its caller left before a thread took it
                raise PredictFailed("the run was stopped before it started")
            self._started = True
        started = time.perf_counter()
        try:
            with self._stop.running():
                return self._work()
        finally:
            self._timer.observe(time.perf_counter() - started)
            with self._lock:
                self._done = True
                released = self._released
            if released is not None:
                with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                    self._loop.call_soon_threadsafe(_settle, released)

    def stop(self) -> asyncio.Future[None] | None:
        """Tell the run to stop (on the loop). Returns a future that completes when its thread
        lets go of the model, or ``None`` when no thread holds it."""
        self._stop.stop()
        with self._lock:
            if not self._started or self._done:
                return None
            self._released = self._loop.create_future()
            return self._released


def _settle(released: asyncio.Future[None]) -> None:
    if not released.done():
        released.set_result(None)
