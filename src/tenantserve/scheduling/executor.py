"""Fixed thread pools for predictions, loads and store I/O, whatever the number of models."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class BoundedExecutor:
    """Three pools with fixed sizes, so 2,000 resident models add no thread (DESIGN §4).

    ``compute`` runs ``model.predict`` (one thread per core); ``load`` turns artifacts into
    sessions and closes them; ``io`` waits on the store.
    """

    def __init__(self, *, compute_threads: int, load_threads: int, io_threads: int) -> None:
        self.compute = ThreadPoolExecutor(compute_threads, thread_name_prefix="ts-predict")
        self.load = ThreadPoolExecutor(load_threads, thread_name_prefix="ts-load")
        self.io = ThreadPoolExecutor(io_threads, thread_name_prefix="ts-io")

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` on the compute pool and await its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.compute, functools.partial(fn, *args, **kwargs))

    async def run_io(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking store call on the I/O pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.io, functools.partial(fn, *args, **kwargs))

    def shutdown(self) -> None:
        for pool in (self.compute, self.load, self.io):
            pool.shutdown(wait=True, cancel_futures=True)
