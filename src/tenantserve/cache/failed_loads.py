"""FailedLoads: loads that failed, remembered briefly and in bounded memory, answered from there.

A broken artifact is not fetched again on every request, and a caller that sends thousands of
ids that do not exist cannot grow the server: at most ``max_entries`` are kept (the oldest go
first), each as its error's class and message (no traceback, no frames), and the warning line
each failure logs is rate-limited.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from tenantserve.errors import StoreUnavailable, TenantServeError
from tenantserve.types import ModelId

DEFAULT_MAX_ENTRIES = 10_000
_MAX_MESSAGE = 300  # characters kept of a message: it is shown to callers again
_LOG_PER_S = 5.0  # warning lines per second, the rest counted and said in one line after


@dataclass(frozen=True, slots=True)
class _Failure:
    expires_at: float
    kind: type[TenantServeError]
    message: str


class FailedLoads:
    """The failure of each model's last load, until its time to live runs out."""

    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        log: logging.Logger | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._max_entries = max_entries
        self._log = log or logging.getLogger(__name__)
        self._clock = clock or (lambda: time.monotonic())  # looked up per call: tests move it
        self._entries: OrderedDict[ModelId, _Failure] = OrderedDict()
        self._log_tokens = _LOG_PER_S
        self._log_at = self._clock()
        self._suppressed = 0

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, model_id: ModelId, error: TenantServeError, ttl_s: float) -> None:
        """Remember ``error`` for ``ttl_s`` seconds (only its class and message)."""
        self._entries.pop(model_id, None)
        if ttl_s <= 0:
            return
        message = str(error)[:_MAX_MESSAGE]
        self._entries[model_id] = _Failure(self._clock() + ttl_s, type(error), message)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def raise_if_recent(self, model_id: ModelId) -> None:
        """Raise the remembered error again while it is remembered; forget it once expired.

        Raises:
            TenantServeError: of the class the load raised, with its message; a store outage
                says in Retry-After how long until the store is tried again.
        """
        failure = self._entries.get(model_id)
        if failure is None:
            return
        left_s = failure.expires_at - self._clock()
        if left_s <= 0:
            del self._entries[model_id]
            return
        again = failure.kind(failure.message)
        if isinstance(again, StoreUnavailable):
            again.retry_after_s = left_s
        raise again

    def forget(self, model_id: ModelId) -> None:
        self._entries.pop(model_id, None)

    def warn(self, message: str, *args: object) -> None:
        """Log a failure as a warning, at most a few lines a second; the rest are counted."""
        now = self._clock()
        self._log_tokens = min(_LOG_PER_S, self._log_tokens + (now - self._log_at) * _LOG_PER_S)
        self._log_at = now
        if self._log_tokens < 1:
            self._suppressed += 1
            return
        self._log_tokens -= 1
        if self._suppressed:
            self._log.warning("%d more load failures were not logged", self._suppressed)
            self._suppressed = 0
        self._log.warning(message, *args)
