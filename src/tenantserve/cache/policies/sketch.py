"""FrequencySketch: about how often each key was requested lately, in bounded memory (TinyLFU)."""

from __future__ import annotations

import hashlib
from collections.abc import Hashable

_ROWS = 4


class FrequencySketch:
    """A count-min sketch behind a doorkeeper, halved every ``sample`` recorded requests.

    The doorkeeper takes each key's first request of a period, so keys seen once never reach
    the counters; :meth:`estimate` adds it back. Halving (and clearing the doorkeeper) ages
    the counts: a model that was hot an hour ago is not hot now. Keys hash through ``str``
    with a fixed digest, not ``hash()``: Python salts that per process, and replays must give
    the same answer every run.
    """

    def __init__(self, *, width: int = 1024, sample: int = 1000, most: int = 15) -> None:
        if width < 1 or sample < 1 or not 1 <= most <= 255:
            raise ValueError("width and sample must be at least 1, most within 1-255")
        self._width = width
        self.sample = sample
        # TinyLFU's four-bit counters stop at 15: past that, more use says nothing new, and
        # a model that was hot loses its lead in a few halvings once it cools.
        self._most = most
        self._counts = bytearray(_ROWS * width)
        self._doorkeeper: set[Hashable] = set()
        self._recorded = 0
        self._slots: dict[Hashable, tuple[int, ...]] = {}

    def _slots_of(self, key: Hashable) -> tuple[int, ...]:
        slots = self._slots.get(key)
        if slots is None:
            digest = hashlib.blake2b(str(key).encode(), digest_size=4 * _ROWS).digest()
            slots = tuple(
                row * self._width + int.from_bytes(digest[4 * row : 4 * row + 4]) % self._width
                for row in range(_ROWS)
            )
            if len(self._slots) > 16 * self._width:  # bounded, like the sketch itself
                self._slots.clear()
            self._slots[key] = slots
        return slots

    def estimate(self, key: Hashable) -> int:
        """Requests for ``key`` this period (counts since halved), at least the true number."""
        counts = self._counts
        seen = min(counts[slot] for slot in self._slots_of(key))
        return seen + (key in self._doorkeeper)

    def record(self, key: Hashable) -> None:
        """One request for ``key``."""
        if key not in self._doorkeeper:
            self._doorkeeper.add(key)
        else:
            # Conservative update: only the counters at the minimum grow, so keys that share
            # a counter with a hot one are overestimated less.
            counts = self._counts
            slots = self._slots_of(key)
            low = min(counts[slot] for slot in slots)
            if low < self._most:
                for slot in slots:
                    if counts[slot] == low:
                        counts[slot] = low + 1
        self._recorded += 1
        if self._recorded >= self.sample:
            self._halve()

    def _halve(self) -> None:
        self._counts = bytearray(count >> 1 for count in self._counts)
        self._doorkeeper.clear()
        self._recorded = 0
