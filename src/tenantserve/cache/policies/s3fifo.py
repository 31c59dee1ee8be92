"""S3-FIFO: a small probation FIFO, a main FIFO with reinsertion, and a ghost of recent misses."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

_MAX_FREQ = 3  # two-bit counters, as the paper's


class S3FIFO(Generic[K]):
    """S3-FIFO (Yang et al., SOSP '23), over models of any size.

    A newcomer enters the small FIFO (``small`` of the bytes). Leaving it, a model used again
    ``promote_after`` times since it came (libCacheSim's default, 2) moves to the main FIFO;
    the rest are evicted and remembered in the ghost queue (keys only, as many bytes as
    ``ghost`` of the cache), so one-hit wonders never reach main. A newcomer found in the ghost
    goes straight to main. Main is a CLOCK with two-bit counters: a model at its tail that was
    used is reinserted with its count less one, else evicted. Main gives up models only while
    it holds more than its share, or when small is empty.

    The budget is not passed in: the most bytes the cache has held stands for it, which is
    the budget once the cache has been full (evictions only happen then). Like libCacheSim's
    S3-FIFO, until the first eviction a newcomer finding small full goes to main.
    """

    def __init__(self, *, small: float = 0.1, ghost: float = 0.9, promote_after: int = 2) -> None:
        self._small_share = small
        self._ghost_share = ghost
        self._promote_after = promote_after
        self._small: OrderedDict[K, None] = OrderedDict()  # oldest first
        self._main: OrderedDict[K, None] = OrderedDict()
        self._ghost: OrderedDict[K, int] = OrderedDict()  # key: its size
        self._size: dict[K, int] = {}
        self._freq: dict[K, int] = {}
        self._small_bytes = self._main_bytes = self._ghost_bytes = 0
        self._most_bytes = 0
        self._evicted_any = False
        # Models whose next touch is the request that loaded them: not a second use.
        self._loading: set[K] = set()

    def add(self, key: K, *, nbytes: int = 0, load_seconds: float = 0.0) -> None:
        size = max(nbytes, 1)
        self._size[key] = size
        self._freq[key] = 0
        self._loading.add(key)
        if key in self._ghost:
            self._ghost_bytes -= self._ghost.pop(key)
            self._to_main(key)
        elif not self._evicted_any and self._small_bytes >= self._small_share * max(
            self._most_bytes, self._small_bytes + self._main_bytes + size
        ):
            self._to_main(key)
        else:
            self._small[key] = None
            self._small_bytes += size
        self._most_bytes = max(self._most_bytes, self._small_bytes + self._main_bytes)

    def touch(self, key: K) -> None:
        if key in self._loading:
            self._loading.discard(key)
        elif key in self._freq:
            self._freq[key] = min(self._freq[key] + 1, _MAX_FREQ)

    def remove(self, key: K, *, evicted: bool = False) -> None:
        size = self._size.pop(key, None)
        if size is None:
            return
        del self._freq[key]
        self._loading.discard(key)
        if key in self._small:
            del self._small[key]
            self._small_bytes -= size
            if evicted:
                self._remember(key, size)
        else:
            del self._main[key]
            self._main_bytes -= size
        self._evicted_any |= evicted

    def candidates(self) -> Iterator[K]:
        """Victims one at a time, moving models between the queues on the way as S3-FIFO does
        when it evicts; a victim the cache skips (busy, pinned) stays where it is."""
        passed: set[K] = set()
        while (victim := self._next_victim(passed)) is not None:
            yield victim
            passed.add(victim)

    def _next_victim(self, passed: set[K]) -> K | None:
        main_share = (1 - self._small_share) * self._most_bytes
        while True:
            small = next((k for k in self._small if k not in passed), None)
            main = next((k for k in self._main if k not in passed), None)
            if main is not None and (self._main_bytes > main_share or small is None):
                if self._freq[main] == 0:
                    return main
                self._freq[main] -= 1
                self._main.move_to_end(main)
            elif small is not None:
                if self._freq[small] < self._promote_after:
                    return small
                del self._small[small]
                self._small_bytes -= self._size[small]
                self._to_main(small)
            else:
                return None

    def _to_main(self, key: K) -> None:
        self._main[key] = None
        self._main_bytes += self._size[key]
        self._freq[key] = 0

    def _remember(self, key: K, size: int) -> None:
        self._ghost[key] = size
        self._ghost_bytes += size
        while self._ghost_bytes > self._ghost_share * self._most_bytes and self._ghost:
            _, gone = self._ghost.popitem(last=False)
            self._ghost_bytes -= gone
