"""GracePeriod: the seconds a shutdown may take, counted from its first signal."""

from __future__ import annotations

import time

# Shutdown stops waiting this long before its grace period ends, so the process is gone
# before an orchestrator's kill arrives at the end of it.
EXIT_MARGIN_S = 0.5


class GracePeriod:
    """``grace_s`` from :meth:`begin` (the first SIGTERM), all of it until then."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._since: float | None = None

    @property
    def begun(self) -> bool:
        return self._since is not None

    def begin(self) -> None:
        """Start the period; later calls change nothing."""
        if self._since is None:
            self._since = time.monotonic()

    def left_s(self) -> float:
        """Seconds left of the period (all of it until it begins)."""
        if self._since is None:
            return self.grace_s
        return self._since + self.grace_s - time.monotonic()

    def close_left_s(self) -> float:
        """What is left for the last steps of a shutdown, keeping the exit margin."""
        return max(0.0, self.left_s() - EXIT_MARGIN_S)
