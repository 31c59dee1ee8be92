"""HotList: the busiest tenants or models of the last few minutes, in bounded memory."""

from __future__ import annotations

from dataclasses import dataclass

from tenantserve.activity.space_saving import SpaceSaving


@dataclass(frozen=True, slots=True)
class HotEntry:
    """A key's traffic over the current and previous window.

    ``requests`` may over-count by up to ``error_bound`` (requests of keys it displaced); the
    other counts are lower bounds, started when the key was last taken in.
    """

    key: str
    requests: int
    misses: int
    errors: int
    rejected: int
    error_bound: int


@dataclass(slots=True)
class _Window:
    started_s: float
    counts: SpaceSaving[str]
    # misses, errors, rejected — only for keys ``counts`` holds, so bounded by its capacity.
    extra: dict[str, list[int]]


class HotList:
    """Space-saving counts over two tumbling windows of ``window_s``.

    A report covers the current window and the one before it (between one and two windows of
    traffic), so a key that was hot a minute ago does not vanish at a window boundary, and a
    key that went quiet long ago does not linger.
    """

    def __init__(self, *, capacity: int = 64, window_s: float = 300.0) -> None:
        self.capacity = capacity
        self.window_s = window_s
        self._current: _Window | None = None
        self._previous: _Window | None = None

    def record(
        self, key: str, now_s: float, *, miss: bool = False, error: bool = False,
        rejected: bool = False,
    ) -> None:  # fmt: skip
        window = self._window(now_s)
        displaced = window.counts.add(key)
        if displaced is not None:
            window.extra.pop(displaced, None)
        extra = window.extra.setdefault(key, [0, 0, 0])
        extra[0] += miss
        extra[1] += error
        extra[2] += rejected

    def top(self, k: int, now_s: float) -> list[HotEntry]:
        """The ``k`` keys with the most requests, most first."""
        self._rotate(now_s)
        merged: dict[str, list[int]] = {}
        for window in (self._previous, self._current):
            if window is None:
                continue
            for key in window.counts:
                row = merged.setdefault(key, [0, 0, 0, 0, 0])
                row[0] += window.counts.count(key)
                row[4] += window.counts.error(key)
                for i, value in enumerate(window.extra.get(key, (0, 0, 0)), start=1):
                    row[i] += value
        ranked = sorted(merged.items(), key=lambda item: -item[1][0])[: max(k, 0)]
        return [HotEntry(key, *row) for key, row in ranked]

    def _window(self, now_s: float) -> _Window:
        self._rotate(now_s)
        if self._current is None:
            self._current = _Window(now_s, SpaceSaving(self.capacity), {})
        return self._current

    def _rotate(self, now_s: float) -> None:
        current = self._current
        if current is not None and now_s - current.started_s >= self.window_s:
            self._previous, self._current = current, None
        # A window that began two windows ago is too old to report (a quiet spell).
        previous = self._previous
        if previous is not None and now_s - previous.started_s >= 2 * self.window_s:
            self._previous = None
