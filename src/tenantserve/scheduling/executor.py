"""Fixed thread pools for predictions, loads and store I/O, whatever the number of models."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from tenantserve import memory

P = ParamSpec("P")
T = TypeVar("T")


class BoundedExecutor:
    """Three pools with fixed sizes, so 2,000 resident models add no thread.

    ``compute`` runs ``model.predict`` (one thread per core, plus ``spare_compute_threads``
    that only start when a predict past its timeout holds a thread); ``load`` turns artifacts
    into sessions and closes them; ``io`` waits on the store. Load and I/O threads run
    ``background_nice`` lower in the OS's priority than predictions, so a storm of first calls
    takes the cores only when warm predictions leave them idle.
    """

    def __init__(
        self,
        *,
        compute_threads: int,
        load_threads: int,
        io_threads: int,
        spare_compute_threads: int = 0,
        background_nice: int = 0,
    ) -> None:
        # A pool starts a thread only when none is idle, and the fair executor hands it at
        # most ``compute_threads`` calls unless some are written off: spares stay unstarted.
        self.compute = ThreadPoolExecutor(
            compute_threads + spare_compute_threads, thread_name_prefix="ts-predict"
        )
        lower = functools.partial(memory.lower_thread_priority, background_nice)
        self.load = ThreadPoolExecutor(
            load_threads, thread_name_prefix="ts-load", initializer=lower
        )
        self.io = ThreadPoolExecutor(io_threads, thread_name_prefix="ts-io", initializer=lower)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` on the compute pool and await its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.compute, functools.partial(fn, *args, **kwargs))

    async def run_io(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking store call on the I/O pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.io, functools.partial(fn, *args, **kwargs))

    def shutdown(self, *, timeout_s: float | None = None) -> bool:
        """Drop queued work and wait up to ``timeout_s`` for running work (``None``: no limit).

        Returns:
            Whether every thread finished; one that did not (a load that cannot be stopped)
            is left behind, and a process exit takes it.
        """
        pools = (self.compute, self.load, self.io)
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)

        def join() -> None:
            for pool in pools:
                pool.shutdown(wait=True)

        waiter = threading.Thread(target=join, name="ts-shutdown", daemon=True)
        waiter.start()
        waiter.join(timeout_s)
        return not waiter.is_alive()
