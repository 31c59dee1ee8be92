"""HeapTrimmer: freed heap back to the OS in the background, once enough was freed."""

from __future__ import annotations

import logging
import threading
import time

from tenantserve import memory
from tenantserve.cache.sizes import MeasureLock

log = logging.getLogger(__name__)


class HeapTrimmer:
    """Trims the heap off the load path: once ``threshold_bytes`` of models were closed since
    the last trim, a thread of its own, at a lower OS priority, calls ``malloc_trim``.

    With glibc told to return freed blocks at once (``memory.return_freed_memory``) little is
    left for a trim: small blocks freed in the middle of the heap. A trim costs tens of ms on a
    big heap, which a load or close paid each time when it trimmed in line. It shares the
    measure lock, so no measurement of a load sees memory fall under it.
    """

    def __init__(self, lock: MeasureLock, *, threshold_bytes: int, nice: int = 10) -> None:
        self._lock = lock
        self._threshold_bytes = threshold_bytes
        self._nice = nice
        self._freed = 0
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.trims = 0
        self.trim_seconds = 0.0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ts-trim", daemon=True)
            self._thread.start()

    def freed(self, nbytes: int) -> None:
        """``nbytes`` of a model were released; trim once enough were (any thread)."""
        self._freed += nbytes  # a lost update under a race only delays a trim
        if self._freed >= self._threshold_bytes:
            self._wake.set()

    def close(self) -> None:
        self._stopped = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        memory.lower_thread_priority(self._nice)
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopped:
                return
            self._freed = 0
            started = time.perf_counter()
            with self._lock.shared():
                memory.trim()
            self.trims += 1
            self.trim_seconds += time.perf_counter() - started
            log.debug("trimmed the heap in %.1f ms", (time.perf_counter() - started) * 1e3)
