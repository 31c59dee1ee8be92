"""W-TinyLFU: an admission window, a segmented-LRU main, and a frequency sketch at its door."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

from tenantserve.cache.policies.sketch import FrequencySketch

K = TypeVar("K", bound=Hashable)


class WTinyLFU(Generic[K]):
    """W-TinyLFU (Einziger et al., 2017; Caffeine's policy), over models of any size.

    Newcomers enter an LRU window (``window`` of the bytes); what overflows it enters main, a
    segmented LRU (probation, and ``protected`` of main for models used again), as a
    *candidate*. When room is needed, the oldest candidate duels the probation LRU victim, and
    the one the sketch says is used less is evicted (a tie refuses the candidate); with no
    candidate the victim goes, and with only candidates left the least used of them. The
    sketch counts every request and halves every ``sample_per_model`` requests per model the
    cache holds, so frequencies age.

    "Not admitted" here means "evicted first": the server must load a model to serve its
    request, and eviction makes room before the newcomer is added, so a refused newcomer
    serves its requests until the next load needs room and then leaves in place of the victim.
    Models are several times larger than 1% of a budget, so the window is usually empty and
    every newcomer is at once a candidate, as in Caffeine for entries larger than its window.
    Unlike Caffeine, a candidate duels even if it was added while the cache had room: the
    policy is not told the budget (and always duelling replayed slightly better).
    """

    def __init__(
        self, *, window: float = 0.01, protected: float = 0.8, sample_per_model: int = 10
    ) -> None:
        self._window_share = window
        self._protected_share = protected
        self._sample_per_model = sample_per_model
        self.sketch = FrequencySketch()
        # LRU first in each segment.
        self._window: OrderedDict[K, None] = OrderedDict()
        self._probation: OrderedDict[K, None] = OrderedDict()
        self._protected: OrderedDict[K, None] = OrderedDict()
        self._pending: OrderedDict[K, None] = OrderedDict()  # in probation, not yet admitted
        self._size: dict[K, int] = {}
        self._bytes = self._window_bytes = self._protected_bytes = 0
        self._most_bytes = self._most_models = 0
        # Models whose next touch is the request that loaded them: counted, not a second use.
        self._loading: set[K] = set()

    def add(self, key: K, *, nbytes: int = 0, load_seconds: float = 0.0) -> None:
        size = self._size[key] = max(nbytes, 1)
        self._window[key] = None
        self._loading.add(key)
        self._window_bytes += size
        self._bytes += size
        self._most_bytes = max(self._most_bytes, self._bytes)
        self._most_models = max(self._most_models, len(self._size))
        self.sketch.sample = max(100, self._sample_per_model * self._most_models)
        while self._window_bytes > self._window_share * self._most_bytes and self._window:
            moved, _ = self._window.popitem(last=False)
            self._window_bytes -= self._size[moved]
            self._probation[moved] = None
            self._pending[moved] = None

    def touch(self, key: K) -> None:
        self.sketch.record(key)
        if key in self._loading:
            self._loading.discard(key)
        elif key in self._window:
            self._window.move_to_end(key)
        elif key in self._protected:
            self._protected.move_to_end(key)
        elif key in self._probation:
            del self._probation[key]
            self._pending.pop(key, None)  # used again before any duel: admitted
            self._protected[key] = None
            self._protected_bytes += self._size[key]
            limit = self._protected_share * (1 - self._window_share) * self._most_bytes
            while self._protected_bytes > limit and len(self._protected) > 1:
                demoted, _ = self._protected.popitem(last=False)
                self._protected_bytes -= self._size[demoted]
                self._probation[demoted] = None

    def remove(self, key: K, *, evicted: bool = False) -> None:
        size = self._size.pop(key, None)
        if size is None:
            return
        self._bytes -= size
        self._loading.discard(key)
        self._pending.pop(key, None)
        self._probation.pop(key, None)
        if key in self._window:
            del self._window[key]
            self._window_bytes -= size
        elif key in self._protected:
            del self._protected[key]
            self._protected_bytes -= size

    def candidates(self) -> Iterator[K]:
        """The loser of each duel, one at a time; a loser the cache skips (busy, pinned) is
        passed over and stays where it is."""
        passed: set[K] = set()
        while True:
            candidate = next((k for k in self._pending if k not in passed), None)
            victim = next(
                (
                    k
                    for segment in (self._probation, self._protected, self._window)
                    for k in segment
                    if k not in passed and k not in self._pending
                ),
                None,
            )
            if victim is None:  # only candidates left (the cache filled up): the least used goes
                pending = [k for k in self._pending if k not in passed]
                if not pending:
                    return
                loser = min(pending, key=self.sketch.estimate)
            elif candidate is None:
                loser = victim
            else:
                admit = self.sketch.estimate(candidate) > self.sketch.estimate(victim)
                loser = victim if admit else candidate
            yield loser
            if loser in self._size:
                passed.add(loser)
            elif loser == victim and candidate is not None:
                del self._pending[candidate]  # won its place in probation
