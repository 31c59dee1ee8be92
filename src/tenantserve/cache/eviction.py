"""Eviction policies: they only order candidates; the cache skips pinned and leased ones."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)


class EvictionPolicy(Protocol[K]):
    """Keeps an order over resident keys; ``candidates()`` yields the best victim first."""

    def add(self, key: K) -> None: ...

    def touch(self, key: K) -> None: ...

    def remove(self, key: K) -> None: ...

    def candidates(self) -> Iterator[K]: ...


class LRU(Generic[K]):
    """Least recently used first."""

    def __init__(self) -> None:
        self._order: OrderedDict[K, None] = OrderedDict()

    def add(self, key: K) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def touch(self, key: K) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def remove(self, key: K) -> None:
        self._order.pop(key, None)

    def candidates(self) -> Iterator[K]:
        # A snapshot: the cache evicts while iterating.
        return iter(list(self._order))
