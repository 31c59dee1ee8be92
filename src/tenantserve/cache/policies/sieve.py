"""SIEVE: a FIFO queue with a visited bit per model and a hand that sweeps it for victims."""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Sieve(Generic[K]):
    """SIEVE (Zhang et al., NSDI '24), over models of any size.

    Models queue in load order and never move. A request sets the model's visited bit. The
    hand sweeps from the oldest model towards the newest, clearing visited bits as it passes,
    and stops at the first model not visited since the hand last passed it: that is the victim.
    The hand stays where it stopped, so one sweep serves many evictions; the cache takes
    victims one by one until the newcomer's bytes fit, which is all size-awareness needs.
    Newcomers are found first when they were never used again; visited models are kept.
    """

    def __init__(self) -> None:
        self._visited: dict[K, bool] = {}  # in load order, oldest first
        self._hand: K | None = None  # where the hand stands; None: the oldest
        # Models whose next touch is the request that loaded them: not a second use.
        self._loading: set[K] = set()

    def add(self, key: K, *, nbytes: int = 0, load_seconds: float = 0.0) -> None:
        self._visited[key] = False
        self._loading.add(key)

    def touch(self, key: K) -> None:
        if key in self._loading:
            self._loading.discard(key)
        elif key in self._visited:
            self._visited[key] = True

    def remove(self, key: K, *, evicted: bool = False) -> None:
        if key not in self._visited:
            return
        if self._hand == key:
            order = list(self._visited)
            at = order.index(key) + 1
            self._hand = order[at] if at < len(order) else None
        del self._visited[key]
        self._loading.discard(key)

    def candidates(self) -> Iterator[K]:
        """Sweep from the hand; a victim the cache skips (busy, pinned) is passed over."""
        order = list(self._visited)
        start = order.index(self._hand) if self._hand is not None else 0
        lap = order[start:] + order[:start]
        passed: set[K] = set()
        # Two laps: the first clears every visited bit it passes, the second finds the rest.
        for key in lap + lap:
            if key not in self._visited or key in passed:
                continue  # evicted, or skipped by the cache, earlier in this sweep
            if self._visited[key]:
                self._visited[key] = False
                continue
            self._hand = key
            yield key
            passed.add(key)
