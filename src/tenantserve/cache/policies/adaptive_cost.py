"""AdaptiveCost: DecayedCost with the memory length that recent requests would have rewarded."""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator, Sequence
from typing import Generic, TypeVar

from tenantserve.cache.eviction import LOAD_OVERHEAD_S
from tenantserve.cache.policies.decayed_cost import DecayedCost, least_first

K = TypeVar("K", bound=Hashable)

_SIZES_KEPT = 100_000  # models whose size is remembered for the shadows


class _Shadow(Generic[K]):
    """A cache that exists only on paper: the real one's budget, evicting by ``policy``."""

    def __init__(self, policy: DecayedCost[K]) -> None:
        self.policy = policy
        self.held: dict[K, int] = {}
        self.bytes = 0
        self.hits = 0.0  # recent hit ratio, a moving average

    def request(self, key: K, nbytes: int, load_seconds: float, budget: int) -> bool:
        """Serve ``key`` on paper; True for a hit."""
        hit = key in self.held
        if not hit and nbytes <= budget:
            # Ranked only when something must go: even a lookup of the least of every model
            # held, per shadow, on each new model would be 10,000 of them with that many held.
            if self.bytes + nbytes > budget:
                for victim in self.policy.candidates():
                    self.bytes -= self.held.pop(victim)
                    self.policy.remove(victim, evicted=True)
                    if self.bytes + nbytes <= budget:
                        break
            self.held[key] = nbytes
            self.bytes += nbytes
            self.policy.add(key, nbytes=nbytes, load_seconds=load_seconds)
        self.policy.touch(key)
        return hit


class AdaptiveCost(Generic[K]):
    """Ranks victims as :class:`DecayedCost` does, with the fading that suits the requests now.

    Stable popularity wants uses remembered long (more requests to tell the models at the
    margin apart); popularity that moves wants them forgotten fast (yesterday's hot models
    out). So each of ``per_model`` (short, middle, long memories) runs its own shadow cache of
    the same budget over the same requests, and the real cache evicts by the memory whose
    shadow hit most over about the last ``horizon`` requests; ties go to the middle one. An
    adaptive choice in the manner of ARC's or Caffeine's hill climber, but by direct trial.
    The shadows triple DecayedCost's work, on the event loop: replayed, a few µs a request
    (a shadow's miss looks up its least-ranked model, no sort), where a load costs ~1 ms.
    """

    def __init__(
        self, *, per_model: Sequence[float] = (9.0, 18.0, 36.0), horizon: float = 500.0
    ) -> None:
        self._shadows = [_Shadow[K](DecayedCost(per_model=p)) for p in per_model]
        self._horizon = horizon
        self._chosen = self._shadows[len(self._shadows) // 2]
        self._resident: dict[K, tuple[int, float]] = {}  # size, log(reload seconds per byte)
        self._known: dict[K, tuple[int, float]] = {}  # models loaded: size, load seconds
        self._bytes = self._most_bytes = 0  # resident; the most so far stands for the budget
        # Resident models' places in the chosen memory's order (DecayedCost.faded plus the
        # log of the cost): kept up as models are used; rebuilt when the choice or its tau
        # changes (``_ranked_by`` then differs), not on every eviction.
        self._rank: dict[K, float] = {}
        self._ranked_by: tuple[DecayedCost[K], float] | None = None

    @property
    def chosen_per_model(self) -> float:
        """The memory length ranking victims now (requests per model held)."""
        return self._chosen.policy.per_model

    def add(self, key: K, *, nbytes: int = 0, load_seconds: float = 0.0) -> None:
        size = max(nbytes, 1)
        log_cost = math.log((load_seconds + LOAD_OVERHEAD_S) / size)
        self._resident[key] = (size, log_cost)
        self._rank[key] = self._chosen.policy.faded(key) + log_cost
        self._known.pop(key, None)  # re-inserted: the oldest entry is the one let go
        self._known[key] = (size, load_seconds)
        if len(self._known) > _SIZES_KEPT:
            del self._known[next(iter(self._known))]
        self._bytes += size
        self._most_bytes = max(self._most_bytes, self._bytes)

    def touch(self, key: K) -> None:
        size, load_seconds = self._known.get(key, (1, 0.0))
        for shadow in self._shadows:
            hit = shadow.request(key, size, load_seconds, self._most_bytes)
            shadow.hits += (hit - shadow.hits) / self._horizon
        middle = self._shadows[len(self._shadows) // 2]
        best = max(self._shadows, key=lambda s: s.hits)
        chosen = middle if middle.hits >= best.hits else best
        if chosen is not self._chosen:
            self._chosen, self._ranked_by = chosen, None
        resident = self._resident.get(key)
        if resident is not None:
            self._rank[key] = chosen.policy.faded(key) + resident[1]

    def remove(self, key: K, *, evicted: bool = False) -> None:
        size, _ = self._resident.pop(key, (0, 0.0))
        self._rank.pop(key, None)
        self._bytes -= size

    def candidates(self) -> Iterator[K]:
        policy = self._chosen.policy
        if self._ranked_by != (policy, policy.tau):
            faded = policy.faded
            self._rank = {key: faded(key) + cost for key, (_, cost) in self._resident.items()}
            self._ranked_by = (policy, policy.tau)
        return least_first(self._rank)
