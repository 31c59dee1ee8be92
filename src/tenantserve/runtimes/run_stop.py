"""RunStop: a prediction's stop signal, raised by the server when the run's caller gave up."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# The stop of the run on this thread. A context variable rather than a ``predict`` argument:
# wrappers (text input, top-k, shared bases) pass calls through unchanged, and only the
# runtime that can interrupt its own work (ONNX Runtime's terminate flag) needs to look.
_current: ContextVar[RunStop | None] = ContextVar("tenantserve_run_stop", default=None)


def current_run_stop() -> RunStop | None:
    """The stop signal of the run on the calling thread, if the server gave it one."""
    return _current.get()


class RunStop:
    """Set once, from any thread; runtimes that can stop a run register how with ``on_stop``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopped = False
        self._callbacks: list[Callable[[], None]] = []

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        """Ask the run to stop; callbacks run here, on the caller's thread, once."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_stop(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when the run is stopped (at once if it already was).

        Returns:
            A function that unregisters ``callback`` (call it when the work it stops is done).
        """
        with self._lock:
            if not self._stopped:
                self._callbacks.append(callback)
                return lambda: self._forget(callback)
        callback()
        return lambda: None

    def _forget(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

    @contextmanager
    def running(self) -> Iterator[None]:
        """Make this the calling thread's current run stop for the block."""
        token = _current.set(self)
        try:
            yield
        finally:
            _current.reset(token)
