"""CoDel: a standing queue is overload, and then requests may wait twice the target at most.

Controlled delay (Nichols and Jacobson, 2012), as large RPC servers use it for their request
queues: a queue that drains now and then is a burst, and may use the whole queue timeout; one
whose shortest wait over a whole interval stays above the target is standing — the server is
past its capacity — and then a request that has waited twice the target is refused (503 with
Retry-After) rather than served late. Admitted requests keep a latency near the target and
the server's time goes to answers that are still wanted: goodput holds under overload.

The queues are fair between tenants, so one tenant may stand while the server as a whole
does not: a tenant sending more than its share waits behind everyone else's turns while the
others' requests pass at once and keep the shortest wait low. Each tenant is judged on its
own waits too, so that tenant is the one refused early (512 closed-loop clients measured its
requests served 1.7 s late at the median, every other tenant's in 50 ms).
"""

from __future__ import annotations

import time
from collections.abc import Callable

DEFAULT_TARGET_S = 0.1
DEFAULT_INTERVAL_S = 0.5


class CoDel:
    """Fed each request's queue wait as it leaves a queue; says how long a wait may be now,
    for the server and for one tenant."""

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
        self._server = _Judge(clock() + interval_s)
        self._tenants: dict[str, _Judge] = {}  # only tenants with a recent departure
        self._pruned_at = clock()

    @property
    def overloaded(self) -> bool:
        """Whether the server's queue stands (any tenant's may stand on its own)."""
        return self._server.roll(self._clock(), self.target_s, self._interval_s)

    def tenant_overloaded(self, tenant: str) -> bool:
        judge = self._tenants.get(tenant)
        return judge is not None and judge.roll(self._clock(), self.target_s, self._interval_s)

    def observe(self, waited_s: float, tenant: str | None = None) -> None:
        """A request (of ``tenant``) left a queue after ``waited_s``."""
        now = self._clock()
        self._server.roll(now, self.target_s, self._interval_s)
        self._server.shortest = min(self._server.shortest, waited_s)
        if tenant is None:
            return
        judge = self._tenants.get(tenant)
        if judge is None:
            judge = self._tenants[tenant] = _Judge(now + self._interval_s)
        judge.roll(now, self.target_s, self._interval_s)
        judge.shortest = min(judge.shortest, waited_s)
        if now - self._pruned_at > 4 * self._interval_s:
            self._prune(now)

    def limit_s(self, default_s: float, tenant: str | None = None) -> float:
        """How long a request (of ``tenant``) may wait in a queue now: ``default_s``, or twice
        the target while the server's queue or the tenant's own stands."""
        standing = self.overloaded or (tenant is not None and self.tenant_overloaded(tenant))
        return min(default_s, 2 * self.target_s) if standing else default_s

    def _prune(self, now: float) -> None:
        # A tenant with no departure for two intervals has nothing standing: forget it, so
        # the map holds the tenants of the last second, not every tenant ever seen.
        self._pruned_at = now
        quiet = now - 2 * self._interval_s
        for tenant in [t for t, j in self._tenants.items() if j.interval_ends < quiet]:
            del self._tenants[tenant]


class _Judge:
    """One queue's CoDel state: the shortest wait of the current interval, and the verdict."""

    __slots__ = ("interval_ends", "overloaded", "shortest")

    def __init__(self, interval_ends: float) -> None:
        self.interval_ends = interval_ends
        self.shortest = float("inf")  # the shortest wait seen in the current interval
        self.overloaded = False

    def roll(self, now: float, target_s: float, interval_s: float) -> bool:
        """Close the interval if it has ended; the verdict as of ``now``."""
        if now >= self.interval_ends:
            # An interval with no departures at all (an empty or a stuck queue) judges
            # nothing.
            if self.shortest != float("inf"):
                self.overloaded = self.shortest > target_s
            elif now >= self.interval_ends + interval_s:
                self.overloaded = False  # a whole quiet interval: whatever stood has drained
            self.shortest = float("inf")
            self.interval_ends = now + interval_s
        return self.overloaded
