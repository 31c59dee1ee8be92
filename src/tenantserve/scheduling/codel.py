"""CoDel: a standing queue is overload, and then requests may wait twice the target at most.

Controlled delay (Nichols and Jacobson, 2012), as large RPC servers use it for their request
queues: a queue that drains now and then is a burst, and may use the whole queue timeout; one
whose shortest wait over a whole interval stays above the target is standing — the server is
past its capacity — and then a request that has waited twice the target is refused (503 with
Retry-After) rather than served late. Admitted requests keep a latency near the target and
the server's time goes to answers that are still wanted: goodput holds under overload.
"""

from __future__ import annotations

import time
from collections.abc import Callable

DEFAULT_TARGET_S = 0.1
DEFAULT_INTERVAL_S = 0.5


class CoDel:
    """Fed each request's queue wait as it leaves a queue; says how long a wait may be now."""

    def __init__(
        self,
        *,
        target_s: float = DEFAULT_TARGET_S,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target_s = target_s
        self._interval_s = interval_s
        self._clock = clock
        self._interval_ends = clock() + interval_s
        self._shortest = float("inf")  # the shortest wait seen in the current interval
        self._overloaded = False

    @property
    def overloaded(self) -> bool:
        self._roll(self._clock())
        return self._overloaded

    def observe(self, waited_s: float) -> None:
        """A request left a queue after ``waited_s``."""
        self._roll(self._clock())
        self._shortest = min(self._shortest, waited_s)

    def limit_s(self, default_s: float) -> float:
        """How long a request may wait in a queue now: ``default_s``, or twice the target while
        the queue stands."""
        return min(default_s, 2 * self.target_s) if self.overloaded else default_s

    def _roll(self, now: float) -> None:
        if now < self._interval_ends:
            return
        # An interval with no departures at all (an empty or a stuck queue) judges nothing.
        if self._shortest != float("inf"):
            self._overloaded = self._shortest > self.target_s
        elif now >= self._interval_ends + self._interval_s:
            self._overloaded = False  # a whole quiet interval: whatever stood has drained
        self._shortest = float("inf")
        self._interval_ends = now + self._interval_s
