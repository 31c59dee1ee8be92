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
        self._cost: dict[K, float] = {}  # resident models: log(reload seconds per byte)
        self._most_models = 0
        self.tau = per_model  # requests over which uses fade by e: per_model x most models
        # Resident models' priorities as logs relative to request 0: log(uses) + at / tau +
        # log(cost). Every model fades by the same factor per request, so the order holds until
        # the model is used again or tau changes: ranking is a lookup, not an exp per model.
        self._rank: dict[K, float] = {}
        self._rank_tau = 0.0  # the tau ``_rank`` was computed with

    def uses(self, key: K) -> float:
        """Recent requests for ``key``, faded by age (at most ``most_uses``)."""
        entry = self._uses.get(key)
        if entry is None:
            return 0.0
        uses, at = entry
        return uses * math.exp((at - self._now) / self.tau)

    def faded(self, key: K) -> float:
        """``log(uses(key))`` plus ``now / tau``: orders models as their uses do, and stays
        put while others are used (``-inf`` for a model never used)."""
        entry = self._uses.get(key)
        if entry is None:
            return -math.inf
        uses, at = entry
        return math.log(uses) + at / self.tau

    def add(self, key: K, *, nbytes: int = 0, load_seconds: float = 0.0) -> None:
        cost = math.log((load_seconds + LOAD_OVERHEAD_S) / max(nbytes, 1))
        self._cost[key] = cost
        if len(self._cost) > self._most_models:
            self._most_models = len(self._cost)
            self.tau = self.per_model * self._most_models
        self._rank[key] = self.faded(key) + cost

    def touch(self, key: K) -> None:
        self._now += 1
        uses = min(self._most_uses, self.uses(key) + 1.0)
        self._uses[key] = (uses, self._now)
        self._uses.move_to_end(key)
        if len(self._uses) > _USES_KEPT:
            forgotten, _ = self._uses.popitem(last=False)
            if forgotten in self._rank:
                self._rank[forgotten] = -math.inf
        cost = self._cost.get(key)
        if cost is not None:
            self._rank[key] = math.log(uses) + self._now / self.tau + cost

    def remove(self, key: K, *, evicted: bool = False) -> None:
        self._cost.pop(key, None)
        self._rank.pop(key, None)

    def candidates(self) -> Iterator[K]:
        if self._rank_tau != self.tau:  # the cache grew: ages weigh differently now
            self._rank = {key: self.faded(key) + cost for key, cost in self._cost.items()}
            self._rank_tau = self.tau
        return least_first(self._rank)


def least_first(rank: dict[K, float]) -> Iterator[K]:
    """The keys of ``rank`` from the least value up (ties in the dict's order), read as they
    are taken: most callers take one victim, found without a sort; the rest are sorted only
    when more are asked for, without those taken out meanwhile."""
    if not rank:
        return
    first = min(rank, key=rank.__getitem__)
    yield first
    yield from sorted((key for key in rank if key != first), key=rank.__getitem__)
