"""Eviction policies: they only order candidates; the cache skips pinned and leased ones."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)


class EvictionPolicy(Protocol[K]):
    """Keeps an order over resident keys; ``candidates()`` yields the best victim first."""

    def add(self, key: K, *, nbytes: int, load_seconds: float) -> None:
        """A model became resident; it took ``nbytes`` and ``load_seconds`` to load."""
        ...

    def touch(self, key: K) -> None:
        """A request used the model."""
        ...

    def remove(self, key: K, *, evicted: bool = False) -> None:
        """The model left (``evicted`` when the policy's own choice, else an unload)."""
        ...

    def candidates(self) -> Iterator[K]: ...


class LRU(Generic[K]):
    """Least recently used first."""

    def __init__(self) -> None:
        self._order: OrderedDict[K, None] = OrderedDict()

    def add(self, key: K, *, nbytes: int = 0, load_seconds: float = 0.0) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def touch(self, key: K) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def remove(self, key: K, *, evicted: bool = False) -> None:
        self._order.pop(key, None)

    def candidates(self) -> Iterator[K]:
        # A snapshot: the cache evicts while iterating.
        return iter(list(self._order))


@dataclass(slots=True)
class _Cost:
    nbytes: int
    load_seconds: float
    loaded_at: float
    priority: float


# Every load pays a fixed price beyond its measured seconds (a store round trip, a first
# request that waited); without it, a model that loaded in ~0 s would look free to reload.
LOAD_OVERHEAD_S = 0.005
_FREQUENCIES_MAX = 100_000


class CostAware(Generic[K]):
    """Greedy-Dual-Size-Frequency: evict what is cheap to reload per byte and seldom used.

    ``priority = inflation + frequency * reload cost / size``. The inflation value rises to
    ``aging *`` each victim's priority, so models that stopped being used age out. Classic GDSF
    uses ``aging = 1``; in our offline replay (benchmarks/RESULTS.md) that forgot frequencies
    too fast on a stationary Zipf trace, and ``0`` (no aging) never lets go of a hot set that
    has moved on, so the default sits between. Frequencies survive eviction (in a bounded
    table), so a popular model that was pushed out comes back with its history. Models younger
    than ``min_residency_s`` are offered last: churn below that age thrashes (ModelMesh's
    ``minChurnAgeMs``).
    """

    def __init__(
        self,
        *,
        min_residency_s: float = 0.0,
        aging: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._min_residency_s = min_residency_s
        self._aging = aging
        self._clock = clock
        self._inflation = 0.0
        self._resident: dict[K, _Cost] = {}
        self._frequency: OrderedDict[K, int] = OrderedDict()

    def _priority(self, key: K, cost: _Cost) -> float:
        frequency = self._frequency.get(key, 1)
        reload_s = cost.load_seconds + LOAD_OVERHEAD_S
        return self._inflation + frequency * reload_s / max(cost.nbytes, 1)

    def _count(self, key: K) -> None:
        self._frequency[key] = self._frequency.get(key, 0) + 1
        self._frequency.move_to_end(key)
        if len(self._frequency) > _FREQUENCIES_MAX:
            self._frequency.popitem(last=False)

    def add(self, key: K, *, nbytes: int = 0, load_seconds: float = 0.0) -> None:
        cost = _Cost(nbytes, load_seconds, self._clock(), 0.0)
        self._resident[key] = cost
        cost.priority = self._priority(key, cost)

    def touch(self, key: K) -> None:
        self._count(key)
        cost = self._resident.get(key)
        if cost is not None:
            cost.priority = self._priority(key, cost)

    def remove(self, key: K, *, evicted: bool = False) -> None:
        cost = self._resident.pop(key, None)
        if cost is not None and evicted:
            self._inflation = max(self._inflation, self._aging * cost.priority)

    def candidates(self) -> Iterator[K]:
        now = self._clock()
        ranked = sorted(self._resident.items(), key=lambda item: item[1].priority)
        settled = [k for k, c in ranked if now - c.loaded_at >= self._min_residency_s]
        young = [k for k, c in ranked if now - c.loaded_at < self._min_residency_s]
        return iter(settled + young)
