"""SpaceSaving: the approximately most frequent keys of a stream, in a fixed number of counters."""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class SpaceSaving(Generic[K]):
    """Counts at most ``capacity`` keys, however many distinct keys the stream holds.

    Metwally, Agrawal and El Abbadi (2005): a key seen while every counter is taken replaces
    the key with the smallest count and inherits that count as its possible over-estimate
    (:meth:`error`). So ``count - error <= true count <= count``, and any key seen more than
    ``total / capacity`` times is guaranteed to be held — the hot ones always are.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._counts: dict[K, int] = {}
        self._errors: dict[K, int] = {}

    def add(self, key: K, n: int = 1) -> K | None:
        """Count ``key`` ``n`` more times; returns the key it displaced, if any."""
        counts = self._counts
        if key in counts:
            counts[key] += n
            return None
        if len(counts) < self.capacity:
            counts[key] = n
            self._errors[key] = 0
            return None
        # A linear scan over a few dozen counters (C speed) beats keeping a heap in step.
        victim = min(counts, key=counts.__getitem__)
        floor = counts.pop(victim)
        del self._errors[victim]
        counts[key] = floor + n
        self._errors[key] = floor
        return victim

    def count(self, key: K) -> int:
        return self._counts.get(key, 0)

    def error(self, key: K) -> int:
        """How much of :meth:`count` may belong to keys this one displaced."""
        return self._errors.get(key, 0)

    def top(self, k: int) -> list[tuple[K, int]]:
        """The ``k`` keys with the highest counts, highest first (ties: first counted first)."""
        return sorted(self._counts.items(), key=lambda item: -item[1])[: max(k, 0)]

    def halve(self) -> None:
        """Age every count by half (and drop keys at zero), so old traffic fades."""
        for key in list(self._counts):
            halved = self._counts[key] // 2
            if halved:
                self._counts[key] = halved
                self._errors[key] //= 2
            else:
                del self._counts[key], self._errors[key]

    def __contains__(self, key: object) -> bool:
        return key in self._counts

    def __iter__(self) -> Iterator[K]:
        return iter(self._counts)

    def __len__(self) -> int:
        return len(self._counts)
