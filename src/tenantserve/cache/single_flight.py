"""One in-flight load per key; every waiter shares its result or its error."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable, Iterator
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """Starts ``factory()`` once per key while it runs; later callers join the same task."""

    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[V]] = {}

    def __contains__(self, key: K) -> bool:
        return key in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._tasks))

    async def do(
        self, key: K, factory: Callable[[], Coroutine[Any, Any, V]], *, timeout_s: float | None
    ) -> V:
        """Await the shared task. A waiter's timeout or cancellation never cancels the task.

        Raises:
            TimeoutError: the task did not finish within ``timeout_s`` (it goes on running).
        """
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(factory())
            self._tasks[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.wait_for(asyncio.shield(task), timeout_s)

    def _forget(self, key: K, task: asyncio.Task[V]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # mark retrieved: every waiter may have timed out

    async def drain(self) -> None:
        """Wait for every running task (shutdown)."""
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
