"""DecayedCost: the model with the fewest recent uses per byte of reload cost goes first."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

from tenantserve.cache.eviction import LOAD_OVERHEAD_S

K = TypeVar("K", bound=Hashable)

_USES_KEPT = 100_000  # models whose uses are remembered, most recently used kept


class DecayedCost(Generic[K]):
    """Greedy-Dual-Size with uses that fade: ``priority = uses * reload seconds / bytes``.

    Each request adds one use; uses fade by ``exp(-requests since / tau)``, with ``tau`` =
    ``per_model`` requests per model the cache has held at most, and stop at ``most_uses``.
    The clock counts requests, not seconds, so a replay and the server agree.

    Why fade: :class:`~tenantserve.cache.eviction.CostAware` counts only grow, so when
    popularity moves, the models that were hot keep their place (benchmarks/RESULTS.md: on a
    Zipf trace reshuffled every 5,000 requests it fell well behind SIEVE). Why a ceiling: a
    model that cooled loses its lead within about two ``tau``, while the models at the margin,
    which the choice is about, hold a few uses each and are still told apart. Why ``tau``
    grows with the cache: the margin of a larger cache is a less popular model, whose uses
    take longer to count. No inflation term (GDSF's): the fading already ages, and the
    replayed hit ratios were no better with one. Uses outlive eviction, so a model that comes
    back keeps its history; a newcomer with only the request that loaded it is usually the
    next victim, much as TinyLFU would refuse it. ``per_model`` and ``most_uses`` were chosen
    in those replays.
    """

    def __init__(self, *, per_model: float = 18.0, most_uses: float = 8.0) -> None:
        self.per_model = per_model
        self._most_uses = most_uses
        self._now = 0  # requests seen
        self._uses: OrderedDict[K, tuple[float, int]] = OrderedDict()  # (uses, at request)
        self._cost: dict[K, float] = {}  # resident models: reload seconds per byte
        self._most_models = 0

    def uses(self, key: K) -> float:
        """Recent requests for ``key``, faded by age (at most ``most_uses``)."""
        entry = self._uses.get(key)
        if entry is None:
            return 0.0
        uses, at = entry
        tau = self.per_model * max(1, self._most_models)
        return uses * math.exp((at - self._now) / tau)

    def add(self, key: K, *, nbytes: int = 0, load_seconds: float = 0.0) -> None:
        self._cost[key] = (load_seconds + LOAD_OVERHEAD_S) / max(nbytes, 1)
        self._most_models = max(self._most_models, len(self._cost))

    def touch(self, key: K) -> None:
        self._now += 1
        self._uses[key] = (min(self._most_uses, self.uses(key) + 1.0), self._now)
        self._uses.move_to_end(key)
        if len(self._uses) > _USES_KEPT:
            self._uses.popitem(last=False)

    def remove(self, key: K, *, evicted: bool = False) -> None:
        self._cost.pop(key, None)

    def candidates(self) -> Iterator[K]:
        return iter(sorted(self._cost, key=lambda key: self.uses(key) * self._cost[key]))
